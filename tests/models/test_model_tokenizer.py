"""The LLM tokenizer wrapper: upstream's slow-tokenizer ids, pad choice, decoding, chat templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from model_helpers import PARITY

from minigpt4.models.tokenizer import HFTokenizer, SentencePieceTokenizer, TokenizerError, load_tokenizer


@pytest.mark.parametrize("variant", ["v1", "v1_llama2", "v2"])
def test_parity_probes_match_upstream_slow_tokenizer(variant: str) -> None:
    """Every probe upstream recorded (``<s>[INST]``, ``" [/INST]"``, ``$$``, ``###``...) encodes to its ids."""
    folder = PARITY / variant / "llama"
    tok = load_tokenizer(folder)
    assert isinstance(tok, SentencePieceTokenizer)
    probes = json.loads((PARITY / variant / "expected.json").read_text())["tokenizer_probe"]
    assert len(probes) >= 8
    for text, entry in probes.items():
        assert tok.encode(text) == entry["add_special_tokens_false"], text
        assert tok.encode(text, add_bos=True) == entry["add_special_tokens_true"], text
        assert [tok.id_to_piece(i) for i in tok.encode(text)] == entry["pieces"], text
    assert (tok.pad_token, tok.pad_id, tok.bos_id, tok.eos_id) == ("$$", 309, 1, 2)


def test_special_strings_split_before_sentencepiece(tokenizer_model_path: Path) -> None:
    tok = load_tokenizer(tokenizer_model_path.parent)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model_path))
    # text right after a special string gets its own leading "▁", as the slow tokenizer did
    assert tok.encode("<s>[INST] hi</s>") == [1] + sp.encode("[INST] hi") + [2]
    assert tok.encode("a</s>b") == sp.encode("a") + [2] + sp.encode("b")
    assert tok.encode(" [/INST]") == sp.encode(" [/INST]")
    assert tok.encode("") == [] and tok.encode("", add_bos=True) == [1]
    # "$$" is an ordinary piece in text; only padding uses its id
    assert tok.pad_id == sp.piece_to_id("$$") == 3
    assert tok.encode("$$") == sp.encode("$$")


def test_decode_skips_specials_and_joins_byte_fallback(tokenizer_model_path: Path) -> None:
    tok = load_tokenizer(tokenizer_model_path.parent)
    ids = tok.encode("Café ☺ smiling")
    assert any(tok.id_to_piece(i).startswith("<0x") for i in ids)  # byte-fallback pieces are in play
    assert tok.decode([1] + ids + [2, 3, 3]) == "Café ☺ smiling"
    assert tok.decode([1] + ids + [2], skip_special_tokens=False) == "<s>Café ☺ smiling</s>"
    import torch

    assert tok.decode(torch.tensor(ids)) == "Café ☺ smiling"  # what TextIteratorStreamer passes


def test_pad_token_from_config_and_fallbacks(tokenizer_model_path: Path, tmp_path: Path) -> None:
    folder = tokenizer_model_path.parent
    assert load_tokenizer(folder, pad_token="</s>").pad_id == 2
    with pytest.raises(TokenizerError, match=r"model.pad_token='not a token' is not a single token"):
        load_tokenizer(folder, pad_token="not a token")
    # a LLaMA-style vocabulary without a "$$" piece pads with EOS
    model = tmp_path / "nodollar"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the person is smiling", "a face with eyes and a mouth"] * 20),
        model_writer=(buf := __import__("io").BytesIO()), model_type="bpe", vocab_size=300, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    model.mkdir()
    (model / "tokenizer.model").write_bytes(buf.getvalue())
    tok = load_tokenizer(model)
    assert (tok.pad_token, tok.pad_id) == ("</s>", 2)


def test_chat_template_from_tokenizer_config(tokenizer_model_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(tokenizer_model_path, folder / "tokenizer.model")
    assert not load_tokenizer(folder).has_chat_template
    with pytest.raises(TokenizerError, match="has no chat template"):
        load_tokenizer(folder).apply_chat_template([{"role": "user", "content": "hi"}])
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    tok = load_tokenizer(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert text == "<s>[INST] q [/INST]a</s>"


def test_hf_tokenizer_wrapper_for_other_vocabularies(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A folder without tokenizer.model goes through transformers (here: the fast LLaMA tokenizer it converts to)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    folder = tmp_path / "fast"
    hf.save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_token, tok.pad_id) == ("</s>", 2)  # no pad token in the files: EOS ("$$" is SentencePiece-only)
    ids = tok.encode("The person is smiling.", add_bos=True)
    assert ids[0] == tok.bos_id == 1 and 1 not in ids[1:]
    assert tok.decode(ids + [tok.eos_id]) == "The person is smiling."


def test_added_tokens_json_is_honoured(tokenizer_model_path: Path, tmp_path: Path) -> None:
    """Folders of the slow-tokenizer era may add tokens (e.g. a Vicuna pad); text is split on them as 4.30 did."""
    folder = tmp_path / "added"
    folder.mkdir()
    shutil.copy(tokenizer_model_path, folder / "tokenizer.model")
    (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": 512}))
    tok = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model_path))
    assert tok.vocab_size == 513 and tok.pad_id == 3  # upstream's "$$" still pads
    assert tok.encode("a[PAD]b") == sp.encode("a") + [512] + sp.encode("b")
    assert tok.decode(tok.encode("a[PAD]b")) == "a[PAD]b"
