"""Full-size presets built on the ``meta`` device (same construction code, no files): reference §7.7 counts."""

from __future__ import annotations

from typing import Any

import pytest
from model_helpers import LLAMA_7B, LLAMA_13B
from transformers import LlamaConfig

from minigpt4.models import MiniGPT4, MiniGPTv2

VIT_448 = 986_975_872  # EVA-ViT-g (39 blocks) with 448-pixel position embeddings: 987.0 M


def _counts(model: Any) -> dict:
    part = {name: sum(p.numel() for p in getattr(model, name).parameters())
            for name in ("visual_encoder", "ln_vision", "llama_proj", "llama_model")}
    part["lora"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    part["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    part["trainable_names"] = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    part["on_meta"] = all(p.device.type == "meta" for p in model.parameters())
    return part


def test_minigpt_v2_full_size() -> None:
    model = MiniGPTv2.build_on_meta(MiniGPTv2.default_config("pretrain"), LLAMA_7B)
    c = _counts(model)
    assert c["on_meta"]
    assert round(c["visual_encoder"] / 1e6, 1) == 987.0 and c["visual_encoder"] == VIT_448
    assert c["ln_vision"] == 2 * 1408
    assert c["llama_proj"] == 23_072_768  # Linear(5632 -> 4096)
    assert c["lora"] == 33_554_432  # r=64 on q_proj and v_proj of 32 layers
    assert c["llama_model"] == 6_771_970_048  # LLaMA-2-7B + LoRA (upstream's print_trainable_parameters)
    assert c["trainable"] == 23_072_768 + 33_554_432
    assert c["trainable_names"] == {"llama_proj", "llama_model"}
    assert tuple(model.visual_encoder.pos_embed.shape) == (1, 1025, 1408)  # 448 px: 32x32 patches + CLS


@pytest.mark.parametrize("llm,hidden,trainable", [(LLAMA_7B, 4096, 3_149_824), (LLAMA_13B, 5120, 3_937_280)])
def test_minigpt4_vicuna0_full_size(llm: LlamaConfig, hidden: int, trainable: int) -> None:
    model = MiniGPT4.build_on_meta(MiniGPT4.default_config("pretrain_vicuna0"), llm)
    c = _counts(model)
    assert c["on_meta"] and c["visual_encoder"] == VIT_448 - 768 * 1408  # 224 px: 256 + 1 positions instead of 1025
    assert tuple(model.query_tokens.shape) == (1, 32, 768)
    assert tuple(model.llama_proj.weight.shape) == (hidden, 768)
    assert c["trainable"] == trainable and c["trainable_names"] == {"llama_proj"}
    assert c["lora"] == 0


def test_minigpt4_llama2_full_size() -> None:
    model = MiniGPT4.build_on_meta(MiniGPT4.default_config("pretrain_llama2"), LLAMA_7B)
    c = _counts(model)
    assert model.Qformer is None and model.query_tokens is None
    assert tuple(model.llama_proj.weight.shape) == (4096, 5632)
    assert c["trainable"] == 23_072_768 and c["trainable_names"] == {"llama_proj"}
    assert c["llama_model"] == 6_738_415_616  # LLaMA-2-7B without LoRA
    assert tuple(model.visual_encoder.pos_embed.shape) == (1, 257, 1408)
