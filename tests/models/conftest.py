"""Fixtures of the model tests: tiny weight files in the original formats, written once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.schema import QFormerConfig, VitConfig

TINY_VIT = VitConfig(embed_dim=32, depth=2, num_heads=2)
TINY_QFORMER = QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY_QUERIES = 4


def write_tiny_eva(path: Path, img_size: int = 224, seed: int = 1) -> Path:
    """A tiny EVA state dict in LAVIS's eva_vit_g.pth layout (plain dict, original key names)."""
    from minigpt4.models.eva_vit import build_eva_vit

    torch.manual_seed(seed)
    vit = build_eva_vit(TINY_VIT, img_size)
    torch.save({k: v.clone() for k, v in vit.state_dict().items()}, path)
    return path


def write_tiny_blip2(path: Path, seed: int = 2) -> Path:
    """A tiny BLIP-2 checkpoint ``{'model': {Qformer.bert.*, query_tokens, ln_vision.*}}`` with LAVIS names."""
    from minigpt4.models.qformer import build_qformer, qformer_key_to_upstream

    torch.manual_seed(seed)
    qformer, query_tokens = build_qformer(TINY_QFORMER, TINY_QUERIES, TINY_VIT.embed_dim)
    state = {qformer_key_to_upstream("Qformer." + k): v.clone() for k, v in qformer.state_dict().items()}
    state["query_tokens"] = query_tokens.detach().clone()
    state["ln_vision.weight"] = 1 + 0.1 * torch.randn(TINY_VIT.embed_dim)
    state["ln_vision.bias"] = 0.1 * torch.randn(TINY_VIT.embed_dim)
    torch.save({"model": state}, path)
    return path


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
        paths: Dict[str, Optional[str]] = {"vit_ckpt": tiny_weights["vit_ckpt"], "llama_model": tiny_weights["llama_model"]}
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
