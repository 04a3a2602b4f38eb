"""Fixtures of the model tests: tiny weight files in the original formats, written once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from model_helpers import write_tiny_blip2, write_tiny_eva
from omegaconf import OmegaConf


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Dict[str, str]:
    """Paths of the tiny EVA file, the tiny BLIP-2 file and the tiny LLaMA folder."""
    root = tmp_path_factory.mktemp("tiny_weights")
    return {
        "vit_ckpt": str(write_tiny_eva(root / "eva_vit_g.pth")),
        "q_former_model": str(write_tiny_blip2(root / "blip2.pth")),
        "llama_model": str(tiny_llama_dir),
    }


@pytest.fixture(scope="session")
def tiny_config(tiny_weights: Dict[str, str]) -> Callable[..., Any]:
    """``tiny_config(arch, **overrides)`` → typed model config of the ``tiny`` preset with the tiny files filled in."""
    from minigpt4.common.registry import registry

    def make(arch: str, model_type: str = "tiny", **overrides: Any) -> Any:
        cls = registry.get_model_class(arch)
        paths: Dict[str, Optional[str]] = {
            "vit_ckpt": tiny_weights["vit_ckpt"], "llama_model": tiny_weights["llama_model"]
        }
        if arch == "minigpt4":
            paths["q_former_model"] = tiny_weights["q_former_model"]
        return cls.default_config(model_type, OmegaConf.merge(paths, overrides))

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_config: Callable[..., Any]) -> Callable[..., Any]:
    """``tiny_model(arch, **overrides)`` → a freshly built tiny model (eval mode)."""
    from minigpt4.common.registry import registry

    def make(arch: str, **overrides: Any) -> Any:
        torch.manual_seed(0)
        return registry.get_model_class(arch).from_config(tiny_config(arch, **overrides)).eval()

    return make
