"""Write tiny vision weights in their original file formats, sized like the ``tiny`` model presets.

Tests and tiny CPU configs use them so that the real loading paths run offline:

    python -m minigpt4.tools.tiny_weights OUT_DIR    # eva_vit_g.pth, blip2_qformer.pth and a tiny LLaMA folder

* ``eva_vit_g.pth``: a plain state dict in LAVIS's EVA-ViT-g key layout;
* ``blip2_qformer.pth``: ``{'model': {Qformer.bert.*, query_tokens, ln_vision.*}}`` in BLIP-2's (LAVIS) layout.

The dimensions are read from ``minigpt4/configs/models/minigpt4_tiny.yaml``, so files and preset cannot drift apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf

from minigpt4.common.config import LIBRARY_ROOT
from minigpt4.common.schema import QFormerConfig, VitConfig

TINY_PRESET = LIBRARY_ROOT / "configs" / "models" / "minigpt4_tiny.yaml"


def tiny_dims() -> Tuple[VitConfig, QFormerConfig, int]:
    """EVA and Q-Former sizes and the query count of the tiny preset."""
    model = OmegaConf.load(TINY_PRESET).model
    vit = VitConfig(**OmegaConf.to_container(model.vit_config))
    qformer = QFormerConfig(**OmegaConf.to_container(model.qformer_config))
    return vit, qformer, int(model.num_query_token)


def write_tiny_eva(path: Path | str, img_size: int = 224, seed: int = 1) -> Path:
    """A tiny EVA state dict in LAVIS's ``eva_vit_g.pth`` layout (plain dict, original key names)."""
    from minigpt4.models.eva_vit import build_eva_vit

    vit_cfg, _, _ = tiny_dims()
    torch.manual_seed(seed)
    vit = build_eva_vit(vit_cfg, img_size)
    torch.save({k: v.clone() for k, v in vit.state_dict().items()}, path)
    return Path(path)


def write_tiny_blip2(path: Path | str, seed: int = 2, random_ln_vision: bool = True) -> Path:
    """A tiny BLIP-2 checkpoint with LAVIS names; ``ln_vision`` random (default) or at its init (1, 0)."""
    from minigpt4.models.qformer import build_qformer, qformer_key_to_upstream

    vit_cfg, q_cfg, queries = tiny_dims()
    torch.manual_seed(seed)
    qformer, query_tokens = build_qformer(q_cfg, queries, vit_cfg.embed_dim)
    state = {qformer_key_to_upstream("Qformer." + k): v.clone() for k, v in qformer.state_dict().items()}
    state["query_tokens"] = query_tokens.detach().clone()
    width = vit_cfg.embed_dim
    if random_ln_vision:
        state["ln_vision.weight"] = 1 + 0.1 * torch.randn(width)
        state["ln_vision.bias"] = 0.1 * torch.randn(width)
    else:
        state["ln_vision.weight"], state["ln_vision.bias"] = torch.ones(width), torch.zeros(width)
    torch.save({"model": state}, path)
    return Path(path)


def write_all(out: Path) -> Dict[str, Path]:
    """EVA file, BLIP-2 file and tiny LLaMA folder under ``out`` (paths keyed by their config key)."""
    from minigpt4.tools.tiny_llm import write_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    return {
        "model.vit_ckpt": write_tiny_eva(out / "eva_vit_g.pth"),
        "model.q_former_model": write_tiny_blip2(out / "blip2_qformer.pth"),
        "model.llama_model": write_tiny_llama(out / "llama"),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    paths = write_all(args.out)
    print("--options " + " ".join(f"{k}={v}" for k, v in paths.items()))  # command-line front end
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
