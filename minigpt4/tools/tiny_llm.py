"""Write a tiny, randomly initialised ``LlamaForCausalLM`` folder with ``save_pretrained``.

Tests and tiny CPU configs use it so that the real ``from_pretrained`` path is exercised offline:

    python -m minigpt4.tools.tiny_llm OUT_DIR [--tokenizer tests/fixtures/tokenizer/tokenizer.model]

The folder holds ``config.json``, the weights, ``generation_config.json`` and the LLaMA-style tokenizer
files (``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json``) as a LLaMA-2 HF folder has.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = REPO_ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.model"

_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_tokenizer_files(folder: Path, tokenizer_model: Path) -> None:
    """Copy a SentencePiece model and write the HF tokenizer config beside it (LLaMA-2 layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_model, folder / "tokenizer.model")
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 4096,
        "pad_token": None,
        "tokenizer_class": "LlamaTokenizer",
        **{k: _token_entry(v) for k, v in _SPECIAL.items()},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: _token_entry(v) for k, v in _SPECIAL.items()}, indent=2) + "\n"
    )


def write_tiny_llama(
    folder: Path | str,
    tokenizer_model: Path | str = DEFAULT_TOKENIZER,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Create the folder (idempotent for the same arguments) and return its path."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer_model)).get_piece_size()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(folder)
    write_tokenizer_files(folder, Path(tokenizer_model))
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_tiny_llama(args.out, args.tokenizer, args.hidden_size, args.layers, args.heads, seed=args.seed)
    print(f"wrote {args.out}")  # command-line front end
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
