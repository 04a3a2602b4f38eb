"""A LLaMA-family ``.gguf`` file → a plain model folder (fp32 safetensors, config, tokenizer, chat template).

``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` gives the same tensors but parses the file several
times over; here the tensors are read once with ``gguf``'s reader and de-quantized with its kernels (about 8 s for
SmolLM2-135M on 2 cores), and only the config and the tokenizer come from transformers' GGUF support (whole
conversion, measured on a loaded machine: 36 s against 49 s). The tensors equal transformers' conversion bit for bit (``tests/models/test_gguf_folder.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

#: GGUF tensor names → Hugging Face LLaMA names (``{i}`` = the decoder layer)
GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


class GGUFConversionError(ValueError):
    """The file is not a LLaMA-family GGUF this converter knows; the message names the file and the tensor."""


def hf_name(gguf_name: str) -> str:
    """The Hugging Face parameter name of a GGUF tensor name."""
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2)
        pattern = GGUF_NAMES.get(f"blk.{{i}}.{rest}")
        if pattern is not None:
            return pattern.format(i=int(layer))
    elif gguf_name in GGUF_NAMES:
        return GGUF_NAMES[gguf_name]
    raise KeyError(gguf_name)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of the Q/K projection rows for its rotary layout: ``[heads·2·half, in]`` with
    the two halves of each head interleaved → Hugging Face's ``[heads·half·2 → heads, 2, half]`` order."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)  # rows regrouped


def gguf_state_dict(path: Path, config: Any) -> Dict[str, torch.Tensor]:
    """Every tensor of the LLaMA-family GGUF file ``path`` as fp32, under Hugging Face names (``config``: its
    ``LlamaConfig``, for the head counts)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    state: Dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        try:
            name = hf_name(tensor.name)
        except KeyError:
            raise GGUFConversionError(f"{path}: tensor {tensor.name!r} has no LLaMA counterpart; load this file with "
                                      "transformers (AutoModelForCausalLM.from_pretrained(..., gguf_file=...))")
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)  # (out, in) or (n,)
        if name.endswith("q_proj.weight"):
            array = unpermute_rotary(array, int(config.num_attention_heads))
        elif name.endswith("k_proj.weight"):
            array = unpermute_rotary(array, int(config.num_key_value_heads))
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # plain F32 tensors come as read-only views of the file
            array = array.copy()
        state[name] = torch.from_numpy(array)
    if "lm_head.weight" not in state and getattr(config, "tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def gguf_to_folder(gguf: Path, folder: Path) -> Path:
    """Write ``gguf`` as a plain fp32 model folder at ``folder`` (safetensors, config, tokenizer); returns it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):  # the de-quantized weights are plain fp32 tensors
        delattr(config, "quantization_config")
    if getattr(config, "model_type", "") != "llama":
        raise GGUFConversionError(f"{gguf}: model type {config.model_type!r}; this converter reads LLaMA-family files")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_state_dict(gguf, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GGUFConversionError(f"{gguf}: tensors missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder
