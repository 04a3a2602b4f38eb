"""A LLaMA-family ``.gguf`` file → a plain model folder (fp32 safetensors, config, tokenizer, chat template).

``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` gives the same tensors, and ``AutoConfig`` /
``AutoTokenizer`` the same config and tokenizer, but each of the three parses the whole file with ``gguf``'s
``GGUFReader`` (about 5 s apiece for SmolLM2-135M on 2 cores: a numpy view per string of its 49,152-token
vocabulary). Here the file is read once (:func:`read_gguf`: the metadata values and the tensor table, string arrays
skipped, in well under a second), the tensors are de-quantized with ``gguf``'s kernels, the config is mapped with
transformers' own GGUF key table, and the weights are written straight to safetensors (no model is initialised).
The tensors, the config and the tokenizer equal transformers' conversion (``tests/models/test_gguf_folder.py``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Dict, List, Tuple

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

#: GGUF metadata value types of a fixed width: type id → struct format
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
          10: np.uint64, 11: np.int64, 12: np.float64}


class GGUFConversionError(ValueError):
    """The file is not a LLaMA-family GGUF this converter knows; the message names the file and the tensor."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: its name, shape (torch order), GGML type id and byte range in the file."""

    name: str
    shape: Tuple[int, ...]
    ggml_type: int
    start: int
    nbytes: int


@dataclass
class GGUFFile:
    """A GGUF file's metadata and tensor table (:func:`read_gguf`). String arrays (the vocabulary, the merges)
    are not decoded: :attr:`array_lengths` holds their lengths; numeric arrays are numpy arrays."""

    path: Path
    metadata: Dict[str, Any]
    array_lengths: Dict[str, int]
    tensors: List[GGUFTensor] = field(default_factory=list)


class _Cursor:
    """Little-endian reads from a byte buffer at a moving offset."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack_all(self, fmt: str) -> Tuple[Any, ...]:
        try:
            values = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise GGUFConversionError(f"{self.path}: the file ends inside its header (truncated download?)") from None
        self.pos += struct.calcsize(fmt)
        return values

    def unpack(self, fmt: str) -> Any:
        values = self.unpack_all(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        size = self.unpack("<Q")
        text = bytes(self.buf[self.pos:self.pos + size]).decode("utf-8", errors="replace")
        self.pos += size
        return text

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.pos += struct.unpack_from("<Q", self.buf, self.pos)[0] + 8

    def value(self, kind: int, key: str, lengths: Dict[str, int]) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise GGUFConversionError(f"{self.path}: metadata key {key!r} has unknown value type {kind}")
        item, count = self.unpack("<IQ")
        lengths[key] = count
        if item == _STRING:
            self.skip_strings(count)
            return None
        if item not in _NUMPY:
            raise GGUFConversionError(f"{self.path}: metadata key {key!r} is an array of unsupported type {item}")
        array = np.frombuffer(self.buf, dtype=_NUMPY[item], count=count, offset=self.pos).copy()  # (count,)
        self.pos += array.nbytes
        return array


def read_gguf(path: Path) -> GGUFFile:
    """The metadata and tensor table of the GGUF (v2/v3) file ``path``, read once from a memory map."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    buf = np.memmap(path, dtype=np.uint8, mode="r")  # (file bytes,)
    cur = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise GGUFConversionError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    cur.pos = 4
    version, n_tensors, n_keys = cur.unpack("<IQQ")
    if version not in (2, 3):
        raise GGUFConversionError(f"{path}: GGUF version {version}; this converter reads versions 2 and 3")
    metadata: Dict[str, Any] = {}
    lengths: Dict[str, int] = {}
    for _ in range(n_keys):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"), key, lengths)
    table = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = cur.unpack_all(f"<{cur.unpack('<I')}Q")
        ggml_type, offset = cur.unpack("<IQ")
        table.append((name, tuple(reversed(dims)), ggml_type, offset))  # GGUF lists the fastest dimension first
    alignment = int(metadata.get("general.alignment", 32))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    for name, shape, ggml_type, offset in table:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFConversionError(f"{path}: tensor {name!r} has GGML type {ggml_type}, which gguf "
                                      "cannot read; upgrade the gguf package") from None
        tensors.append(GGUFTensor(name, shape, ggml_type, data_start + offset, prod(shape) // block * size))
    return GGUFFile(path, metadata, lengths, tensors)


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


def config_dict(gguf: GGUFFile) -> Dict[str, Any]:
    """The transformers config of a LLaMA-family GGUF file, as ``AutoConfig.from_pretrained(..., gguf_file=...)``
    builds it: transformers' GGUF key table and defaults, tied embeddings when there is no ``output.weight``, the
    vocabulary size from the token list when the file does not state it."""
    from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch = gguf.metadata.get("general.architecture")
    name = str(gguf.metadata.get("general.name", ""))
    if arch != "llama" or "mistral" in name:  # transformers reads a llama file named "mistral" as Mistral
        kind = "mistral" if arch == "llama" else arch
        raise GGUFConversionError(f"{gguf.path}: model type {kind!r}; this converter reads LLaMA-family files")
    config: Dict[str, Any] = {"tie_word_embeddings": all(t.name != "output.weight" for t in gguf.tensors)}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(arch, {}).items():
        config.setdefault(key, value)
    for key, value in gguf.metadata.items():
        prefix, _, rest = key.partition(".")
        target = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if target is None or target == -1 or value is None:
            continue
        config[target] = value.tolist() if isinstance(value, np.ndarray) else value
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in gguf.array_lengths:
        config["vocab_size"] = gguf.array_lengths["tokenizer.ggml.tokens"]
    return config


def gguf_state_dict(gguf: GGUFFile, config: Any) -> Dict[str, torch.Tensor]:
    """Every tensor of the LLaMA-family file as fp32, under Hugging Face names (``config``: its ``LlamaConfig``,
    for the head counts); ``lm_head.weight`` is left out when the embeddings are tied."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    state: Dict[str, torch.Tensor] = {}
    data = np.memmap(gguf.path, dtype=np.uint8, mode="r")  # (file bytes,)
    for tensor in gguf.tensors:
        try:
            name = hf_name(tensor.name)
        except KeyError:
            raise GGUFConversionError(f"{gguf.path}: tensor {tensor.name!r} has no LLaMA counterpart; load this "
                                      "file with transformers (AutoModelForCausalLM.from_pretrained(..., "
                                      "gguf_file=...))") from None
        qtype = GGMLQuantizationType(tensor.ggml_type)
        block, size = GGML_QUANT_SIZES[qtype]
        row_bytes = tensor.shape[-1] // block * size
        raw = data[tensor.start:tensor.start + tensor.nbytes].reshape(*tensor.shape[:-1], row_bytes)  # (..., row bytes)
        array = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(tensor.shape)  # (out, in) or (n,)
        if name.endswith("q_proj.weight"):
            array = unpermute_rotary(array, int(config.num_attention_heads))
        elif name.endswith("k_proj.weight"):
            array = unpermute_rotary(array, int(config.num_key_value_heads))
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))  # owns its memory
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def gguf_tokenizer(gguf: Path, config: Any) -> Any:
    """The tokenizer of ``gguf``, of the class ``AutoTokenizer`` picks for ``config`` (built from the file by
    transformers' GGUF tokenizer conversion, without ``AutoTokenizer``'s own parse of the whole file)."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    cls = TOKENIZER_MAPPING.get(type(config), TokenizersBackend) or TokenizersBackend
    return cls.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def gguf_to_folder(gguf: Path, folder: Path) -> Path:
    """Write ``gguf`` as a plain fp32 model folder at ``folder`` (safetensors, config, generation config,
    tokenizer); returns it. Loads with ``AutoModelForCausalLM.from_pretrained(folder)``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, GenerationConfig

    parsed = read_gguf(gguf)
    settings = config_dict(parsed)
    config = AutoConfig.for_model(**settings)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    state = gguf_state_dict(parsed, config)
    expected = _llama_parameter_names(config)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise GGUFConversionError(f"{gguf}: tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    gguf_tokenizer(gguf, config).save_pretrained(folder)
    return folder


def _llama_parameter_names(config: Any) -> set:
    """The parameter names a ``LlamaForCausalLM`` of ``config`` saves (built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = set(model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        names.discard("lm_head.weight")
    return names
