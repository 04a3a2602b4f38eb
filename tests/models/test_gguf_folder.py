"""The demo's .gguf → model folder converter (minigpt4/models/gguf_folder.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt4.models.gguf_folder import GGUFConversionError, hf_name, read_gguf, unpermute_rotary


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


def _byte_level_alphabet() -> list:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary spells bytes with)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    extra = 0
    chars = {}
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_llama_gguf(path: Path, *, tied: bool, name: str = "Tiny Llama") -> Path:
    """A tiny LLaMA GGUF written with gguf's own writer: Q8_0 and Q4_1 matrices, F32 norms, a byte-level BPE
    vocabulary with merges, special tokens and a chat template, as llama.cpp's converter lays a file out."""
    import gguf

    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads, layers = 64, 96, 4, 2, 2
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["\u0120 t", "h e", "\u0120t he", "a c", "f ac"]
    tokens = special + _byte_level_alphabet() + ["\u0120t", "he", "\u0120the", "ac", "fac"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(special) + [1] * (len(tokens) - len(special)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}")

    def matrix(rows: int, cols: int, qtype) -> None:
        return rng.standard_normal((rows, cols)).astype(np.float32) * 0.05, qtype

    Q8, Q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
    tensors = {"token_embd.weight": matrix(len(tokens), hidden, Q8), "output_norm.weight": (
        1 + rng.standard_normal(hidden).astype(np.float32) * 0.1, None)}
    if not tied:
        tensors["output.weight"] = matrix(len(tokens), hidden, Q4)
    for i in range(layers):
        tensors.update({
            f"blk.{i}.attn_norm.weight": (1 + rng.standard_normal(hidden).astype(np.float32) * 0.1, None),
            f"blk.{i}.ffn_norm.weight": (1 + rng.standard_normal(hidden).astype(np.float32) * 0.1, None),
            f"blk.{i}.attn_q.weight": matrix(hidden, hidden, Q8),
            f"blk.{i}.attn_k.weight": matrix(hidden // heads * kv_heads, hidden, Q4),
            f"blk.{i}.attn_v.weight": matrix(hidden // heads * kv_heads, hidden, Q8),
            f"blk.{i}.attn_output.weight": matrix(hidden, hidden, Q4),
            f"blk.{i}.ffn_gate.weight": matrix(ffn, hidden, Q8),
            f"blk.{i}.ffn_up.weight": matrix(ffn, hidden, Q4),
            f"blk.{i}.ffn_down.weight": matrix(hidden, ffn, Q8),
        })
    for tensor_name, (values, qtype) in tensors.items():
        if qtype is None:
            writer.add_tensor(tensor_name, values)
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)  # (rows, bytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_folder_equals_transformers_own_conversion(tmp_path: Path, tied: bool) -> None:
    """Tensors, config and tokenizer of the folder equal what transformers builds from the same file."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from minigpt4.models.gguf_folder import gguf_to_folder

    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tied=tied)
    folder = gguf_to_folder(gguf_path, tmp_path / "folder")

    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_path.name, dtype=torch.float32)
    got = load_file(str(folder / "model.safetensors"))
    want = ref.state_dict()
    expected = set(want) - ({"lm_head.weight"} if tied else set())
    assert set(got) == expected
    assert all(torch.equal(got[k], want[k]) for k in got)

    want_config = AutoConfig.from_pretrained(str(tmp_path), gguf_file=gguf_path.name).to_dict()
    got_config = AutoConfig.from_pretrained(str(folder)).to_dict()
    for key in ("architectures", "dtype", "transformers_version", "_name_or_path"):  # where it was loaded from
        want_config.pop(key, None), got_config.pop(key, None)
    assert got_config == want_config
    assert got_config["tie_word_embeddings"] is tied and got_config["num_key_value_heads"] == 2

    want_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf_path.name)
    got_tok = AutoTokenizer.from_pretrained(str(folder))
    assert type(got_tok) is type(want_tok)
    assert got_tok.backend_tokenizer.to_str() == want_tok.backend_tokenizer.to_str()
    assert got_tok.special_tokens_map == want_tok.special_tokens_map
    assert got_tok.chat_template == want_tok.chat_template
    text = "the face<|im_end|>"
    assert got_tok(text)["input_ids"] == want_tok(text)["input_ids"]
    assert got_tok.convert_ids_to_tokens(got_tok(" the")["input_ids"]) == ["\u0120the"]  # the merges are used

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)  # loads with every key
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(model(ids).logits, ref(ids).logits)


def test_read_gguf_reads_the_header_and_tensor_table_without_the_strings(tmp_path: Path) -> None:
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tied=True)
    parsed = read_gguf(gguf_path)
    assert parsed.metadata["general.architecture"] == "llama"
    assert parsed.metadata["llama.block_count"] == 2
    assert parsed.metadata["tokenizer.ggml.tokens"] is None  # a string array: skipped, its length kept
    assert parsed.array_lengths["tokenizer.ggml.tokens"] == 3 + 256 + 5
    assert parsed.metadata["tokenizer.ggml.token_type"].tolist()[:4] == [3, 3, 3, 1]
    by_name = {t.name: t for t in parsed.tensors}
    assert by_name["blk.0.attn_k.weight"].shape == (32, 64)  # torch order: (out, in)
    assert by_name["blk.0.attn_k.weight"].nbytes == 32 * 64 // 32 * 20  # Q4_1: 20 bytes per 32 values
    assert by_name["output_norm.weight"].nbytes == 64 * 4
    ends = sorted((t.start, t.start + t.nbytes) for t in parsed.tensors)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:]))  # no two overlap
    assert ends[-1][1] <= gguf_path.stat().st_size


def test_a_file_that_is_not_gguf_or_not_llama_is_refused_in_one_line(tmp_path: Path) -> None:
    from minigpt4.models.gguf_folder import config_dict

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFConversionError, match="not a GGUF file"):
        read_gguf(bad)
    mistral = write_tiny_llama_gguf(tmp_path / "mistral.gguf", tied=True, name="mistral 7b tiny")
    with pytest.raises(GGUFConversionError, match="model type 'mistral'"):
        config_dict(read_gguf(mistral))


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
