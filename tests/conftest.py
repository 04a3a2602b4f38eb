"""Shared fixtures: the tiny tokenizer, a tiny LLaMA folder written with save_pretrained, parity data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
#: ../shared beside the clone (CI lays it there as for developers).
SHARED = REPO_ROOT.parent / "shared"
PARITY = SHARED / "parity"


@pytest.fixture(scope="session")
def tokenizer_model_path() -> Path:
    """The committed tiny LLaMA-style SentencePiece model."""
    return FIXTURES / "tokenizer" / "tokenizer.model"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_model_path: Path) -> Path:
    """A tiny random LlamaForCausalLM folder written by ``save_pretrained`` (hidden 64, 2 layers)."""
    from minigpt4.tools.tiny_llm import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "llama", tokenizer_model_path)


@pytest.fixture(scope="session")
def parity_root() -> Path:
    """../shared/parity (upstream's outputs on tiny weights)."""
    if not PARITY.is_dir():
        pytest.fail(f"parity fixtures not found at {PARITY}; the project expects ../shared beside the clone")
    return PARITY


@pytest.fixture(scope="session")
def synth_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic face data set in the real layout, written by the data tool (as FACEGPT_DATA)."""
    from minigpt4.tools import data

    root = tmp_path_factory.mktemp("facegpt_data")
    assert data.main(["synth", "--out", str(root), "--n", "24", "--seed", "0"]) == 0
    return root


@pytest.fixture(autouse=True)
def restore_package_logging():
    """Each test starts with the package logger as the session had it: an entry point's ``setup_logging`` (console
    handler, level, propagation) in one test must not add log lines to the stderr another test checks."""
    import logging

    from minigpt4.common.logger import ROOT

    package = logging.getLogger(ROOT)
    state = (list(package.handlers), package.level, package.propagate)
    yield
    package.handlers[:] = state[0]
    package.setLevel(state[1])
    package.propagate = state[2]
