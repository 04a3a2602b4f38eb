"""Fixtures of the training tests: tiny weights (original formats) and the synthetic face data."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch

from train_support import write_tiny_blip2, write_tiny_eva


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Dict[str, str]:
    """``llama_model``, ``vit_ckpt`` and ``q_former_model`` paths of tiny weights."""
    root = tmp_path_factory.mktemp("train_weights")
    return {"llama_model": str(tiny_llama_dir), "vit_ckpt": str(write_tiny_eva(root / "eva_vit_g.pth")),
            "q_former_model": str(write_tiny_blip2(root / "blip2.pth"))}


@pytest.fixture(scope="session")
def train_data(synth_data_root: Path) -> Path:
    """The synthetic data root (what a user sets as FACEGPT_DATA)."""
    return synth_data_root


@pytest.fixture()
def facegpt_data_env(train_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FACEGPT_DATA pointed at the synthetic data for this test."""
    monkeypatch.setenv("FACEGPT_DATA", str(train_data))
    return train_data


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in the child processes (OMP_NUM_THREADS=1): tiny models gain nothing from more,
    busy 2-core machines lose a lot to spinning threads, and bit-exact comparisons need the same summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
