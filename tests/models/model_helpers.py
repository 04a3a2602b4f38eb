"""Helpers shared by the model tests: tiny weight files in the original formats, full-size LLM configs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig

from minigpt4.common.schema import QFormerConfig, VitConfig

#: ../shared/parity beside the clone
PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"

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


def llama_config(hidden: int, layers: int, heads: int, intermediate: int) -> LlamaConfig:
    """LLaMA / Vicuna / LLaMA-2 architecture (vocab 32000, untied head)."""
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


LLAMA_7B = llama_config(4096, 32, 32, 11008)
LLAMA_13B = llama_config(5120, 40, 40, 13824)
