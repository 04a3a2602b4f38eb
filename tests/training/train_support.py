"""Helpers of the training tests: tiny weight files in their original formats, options and child-process env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import torch

from minigpt4.common.schema import QFormerConfig, VitConfig

REPO = Path(__file__).resolve().parents[2]
TINY_VIT = VitConfig(embed_dim=32, depth=2, num_heads=2)  # = minigpt4/configs/models/*_tiny.yaml
TINY_QFORMER = QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def write_tiny_eva(path: Path) -> Path:
    """A tiny EVA state dict in LAVIS's ``eva_vit_g.pth`` layout."""
    from minigpt4.models.eva_vit import build_eva_vit

    torch.manual_seed(1)
    torch.save({k: v.clone() for k, v in build_eva_vit(TINY_VIT, 224).state_dict().items()}, path)
    return path


def write_tiny_blip2(path: Path) -> Path:
    """A tiny BLIP-2 checkpoint ``{'model': {Qformer.bert.*, query_tokens, ln_vision.*}}`` with LAVIS names."""
    from minigpt4.models.qformer import build_qformer, qformer_key_to_upstream

    torch.manual_seed(2)
    qformer, query_tokens = build_qformer(TINY_QFORMER, 4, TINY_VIT.embed_dim)
    state = {qformer_key_to_upstream("Qformer." + k): v.clone() for k, v in qformer.state_dict().items()}
    state.update({"query_tokens": query_tokens.detach().clone(), "ln_vision.weight": torch.ones(TINY_VIT.embed_dim),
                  "ln_vision.bias": torch.zeros(TINY_VIT.embed_dim)})
    torch.save({"model": state}, path)
    return path


def tiny_options(arch: str, files: Dict[str, str], out: Path, *extra: str) -> List[str]:
    """``--options`` for ``train_configs/tiny_*.yaml``: weight paths, output folder, then ``extra``."""
    opts = [f"model.llama_model={files['llama_model']}", f"model.vit_ckpt={files['vit_ckpt']}",
            f"run.output_dir={out}"]
    if arch == "minigpt4":
        opts.append(f"model.q_former_model={files['q_former_model']}")
    return opts + list(extra)


def subprocess_env(data_root: Path) -> Dict[str, str]:
    """Environment of a child training process: offline, the synthetic data, this checkout importable."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "FACEGPT_DATA": str(data_root),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"})
    return env
