"""Helpers shared by the model tests: tiny weight files in the original formats, full-size LLM configs."""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig

from minigpt4.tools.tiny_weights import write_tiny_blip2, write_tiny_eva  # noqa: F401  (used by the conftest)

#: ../shared/parity beside the clone
PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"


def llama_config(hidden: int, layers: int, heads: int, intermediate: int) -> LlamaConfig:
    """LLaMA / Vicuna / LLaMA-2 architecture (vocab 32000, untied head)."""
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


LLAMA_7B = llama_config(4096, 32, 32, 11008)
LLAMA_13B = llama_config(5120, 40, 40, 13824)
