"""The demo's .gguf → model folder converter (minigpt4/models/gguf_folder.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt4.models.gguf_folder import hf_name, unpermute_rotary


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to the Q/K rows (its ``permute``), written out for the test."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


@pytest.mark.parametrize("heads", [1, 3, 9])
def test_unpermute_rotary_undoes_llama_cpps_permutation(heads: int) -> None:
    weight = np.arange(heads * 8 * 5, dtype=np.float32).reshape(heads * 8, 5)
    permuted = _llama_cpp_permute(weight, heads)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(unpermute_rotary(permuted, heads), weight)


def test_gguf_names_map_to_llama_names() -> None:
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(KeyError):
        hf_name("blk.0.attn_qkv.weight")  # a fused layout this converter does not read


@pytest.mark.slow
def test_smollm2_folder_equals_transformers_own_conversion(tmp_path: Path) -> None:
    """Every tensor and the config equal ``from_pretrained(..., gguf_file=...)`` on the shipped SmolLM2 file."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from minigpt4.models.gguf_folder import gguf_to_folder
    from minigpt4.models.llm import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    folder = gguf_to_folder(gguf, tmp_path / "fast")
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    got = load_file(str(folder / "model.safetensors"))
    want = ref.state_dict()
    assert set(got) <= set(want) and "model.embed_tokens.weight" in got
    assert all(torch.equal(got[k], want[k]) for k in got)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == ref.config.num_hidden_layers
    assert config["num_key_value_heads"] == ref.config.num_key_value_heads
