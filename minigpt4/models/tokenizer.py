"""Tokenizers of the language model, behind one small interface.

Upstream MiniGPT-4 used transformers 4.30's slow ``LlamaTokenizer``. transformers 5 no longer has that class, and its
``LlamaTokenizer`` encodes some strings differently (after ``<s>``, and segments that start with a space), which
would change the token ids the released checkpoints were trained on. So:

* a folder with a SentencePiece ``tokenizer.model`` (LLaMA, LLaMA-2, Vicuna) is encoded with the ``sentencepiece``
  library directly, the way the slow tokenizer did: the text is split on the special-token strings (``<s>``,
  ``</s>``, ``<unk>``) first, each special string becomes its id, and every other chunk is encoded on its own (so
  it gets SentencePiece's leading ``▁``). The pad text ``$$`` stays an ordinary piece, as upstream's was;
* any other tokenizer (for example SmolLM2's GPT-2-style vocabulary read from a ``.gguf`` file) is the
  transformers tokenizer, wrapped.

Both offer :class:`LLMTokenizer`'s API: ``encode``, ``decode``, ids and strings of the special tokens, and
``apply_chat_template``. ``decode`` accepts the call ``TextIteratorStreamer`` makes, so a wrapper can be
handed to transformers' streamers.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: upstream's pad text for LLaMA vocabularies (``tokenizer.pad_token = "$$"``)
LLAMA_PAD_TEXT = "$$"
#: the file that marks a SentencePiece (LLaMA-style) tokenizer folder
SENTENCEPIECE_FILE = "tokenizer.model"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or configured as asked."""


def _as_id_list(ids: Any) -> List[int]:
    """A flat list of ints from a list, tuple or 1-D tensor/array."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], (list, tuple)):
        raise TypeError("decode() takes one sequence of ids; decode a batch row by row")
    return [int(i) for i in ids]


class LLMTokenizer(ABC):
    """The interface every FaceGPT tokenizer offers.

    Attributes: ``name_or_path``, ``bos_token``/``eos_token``/``pad_token`` (strings or None) and their ids
    ``bos_id``/``eos_id``/``pad_id``, ``vocab_size``, ``chat_template`` (Jinja text or None).
    """

    name_or_path: str
    bos_token: Optional[str]
    eos_token: Optional[str]
    pad_token: Optional[str]
    bos_id: Optional[int]
    eos_id: Optional[int]
    pad_id: int
    chat_template: Optional[str]

    @abstractmethod
    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        """Token ids of ``text``; with ``add_bos`` the BOS id is prepended (upstream's ``add_special_tokens``)."""

    @abstractmethod
    def decode(self, ids: Any, skip_special_tokens: bool = True, **_: Any) -> str:
        """Text of a sequence of ids (list, tuple or 1-D tensor)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids."""

    # ------------------------------------------------------------------ shared helpers
    def __call__(self, texts: Sequence[str], add_bos: bool = False) -> List[List[int]]:
        """Encode a batch of texts (one id list per text, no padding)."""
        return [self.encode(t, add_bos=add_bos) for t in texts]

    def __len__(self) -> int:
        return self.vocab_size

    @property
    @abstractmethod
    def special_ids(self) -> List[int]:
        """Ids that ``decode(skip_special_tokens=True)`` drops."""

    @property
    def has_chat_template(self) -> bool:
        """Whether :meth:`apply_chat_template` can be used."""
        return bool(self.chat_template)

    def apply_chat_template(self, messages: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (``[{"role": "user", "content": ...}, ...]``) with the tokenizer's chat template."""
        if not self.chat_template:
            raise TokenizerError(
                f"the tokenizer of {self.name_or_path} has no chat template; use model.prompt_format: upstream "
                "(prompt_template) with this LLM, or point model.llama_model at a model that ships a chat template"
            )
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            [messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
        )
        return rendered[0]

    def _resolve_pad(self, requested: Optional[str], default_candidates: Iterable[Optional[str]]) -> None:
        """Set ``pad_token``/``pad_id`` from the config value or the first usable default."""
        if requested is not None:
            pad_id = self.token_to_id(requested)
            if pad_id is None:
                raise TokenizerError(
                    f"model.pad_token={requested!r} is not a single token of the tokenizer in {self.name_or_path}; "
                    "set it to a token of this vocabulary or to null (automatic choice)"
                )
            self.pad_token, self.pad_id = requested, pad_id
            return
        for candidate in default_candidates:
            if candidate is not None and self.token_to_id(candidate) is not None:
                self.pad_token, self.pad_id = candidate, int(self.token_to_id(candidate))  # type: ignore[arg-type]
                return
        raise TokenizerError(
            f"no pad token could be chosen for the tokenizer in {self.name_or_path} (no '$$' piece, no pad, no eos); "
            "set model.pad_token to a token of its vocabulary"
        )

    @abstractmethod
    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a single token string, or None when the string is not one token."""


class SentencePieceTokenizer(LLMTokenizer):
    """LLaMA-style tokenizer encoded exactly like transformers 4.30's slow ``LlamaTokenizer``.

    ``encode("<s>[INST] x")`` → ``[bos, ▁[, INST, ], ▁x]``: special strings are split out first and every
    remaining chunk gets its own leading ``▁``; ``" [/INST]"`` keeps its extra ``▁`` piece.
    """

    def __init__(self, folder: Path | str, pad_token: Optional[str] = None) -> None:
        import sentencepiece as spm

        folder = Path(folder)
        model_file = folder / SENTENCEPIECE_FILE if folder.is_dir() else folder
        self.name_or_path = str(folder)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self._specials: Dict[str, int] = {}
        for getter in (self.sp.unk_id, self.sp.bos_id, self.sp.eos_id):
            idx = getter()
            if idx >= 0:
                self._specials[self.sp.id_to_piece(idx)] = idx
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.unk_id = self.sp.unk_id() if self.sp.unk_id() >= 0 else None
        self.bos_token = self.sp.id_to_piece(self.bos_id) if self.bos_id is not None else None
        self.eos_token = self.sp.id_to_piece(self.eos_id) if self.eos_id is not None else None
        # tokens added on top of the SentencePiece model (added_tokens.json, e.g. a pad token some Vicuna folders
        # carry): like the slow tokenizer, text is split on them and they keep their ids
        self._added = _read_added_tokens(folder) if folder.is_dir() else {}
        self._split_tokens = {**self._added, **self._specials}
        self._verbatim = {idx: tok for tok, idx in self._split_tokens.items()}
        ordered = sorted(self._split_tokens, key=len, reverse=True)  # longest first: no prefix clashes
        self._split_re = re.compile("(" + "|".join(re.escape(s) for s in ordered) + ")") if ordered else None
        self.chat_template = _read_chat_template(folder) if folder.is_dir() else None
        sp_pad = self.sp.id_to_piece(self.sp.pad_id()) if self.sp.pad_id() >= 0 else None
        self._resolve_pad(pad_token, (LLAMA_PAD_TEXT, sp_pad, self.eos_token))

    @property
    def vocab_size(self) -> int:
        return max([int(self.sp.get_piece_size())] + [idx + 1 for idx in self._added.values()])

    @property
    def special_ids(self) -> List[int]:
        ids = set(self._specials.values())
        ids.add(self.pad_id)
        return sorted(ids)

    def token_to_id(self, token: str) -> Optional[int]:
        if token in self._added:
            return self._added[token]
        idx = int(self.sp.piece_to_id(token))
        if idx == self.unk_id and token != self.sp.id_to_piece(idx):
            return None
        return idx

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids: List[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        chunks = self._split_re.split(text) if self._split_re is not None else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self._split_tokens:
                ids.append(self._split_tokens[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids: Any, skip_special_tokens: bool = True, **_: Any) -> str:
        """SentencePiece decoding (byte-fallback pieces are joined into UTF-8 characters)."""
        id_list = _as_id_list(ids)
        if skip_special_tokens:
            drop = set(self.special_ids)
            id_list = [i for i in id_list if i not in drop]
        # special and added tokens verbatim, between decoded runs of ordinary pieces
        out: List[str] = []
        run: List[int] = []
        for i in id_list:
            if i in self._verbatim:
                out.append(self.sp.decode(run))
                out.append(self._verbatim[i])
                run = []
            else:
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_piece(self, idx: int) -> str:
        """The SentencePiece piece of ``idx`` (for messages and tests)."""
        return self.sp.id_to_piece(int(idx))


class HFTokenizer(LLMTokenizer):
    """A transformers tokenizer (e.g. SmolLM2's, from a ``.gguf`` file) behind the FaceGPT interface."""

    def __init__(self, tokenizer: Any, name_or_path: str, pad_token: Optional[str] = None) -> None:
        self.tok = tokenizer
        self.name_or_path = name_or_path
        self.bos_token = tokenizer.bos_token
        self.eos_token = tokenizer.eos_token
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self._resolve_pad(pad_token, (tokenizer.pad_token, tokenizer.eos_token))

    @property
    def vocab_size(self) -> int:
        return int(len(self.tok))

    @property
    def special_ids(self) -> List[int]:
        return sorted(set(self.tok.all_special_ids) | {self.pad_id})

    def token_to_id(self, token: str) -> Optional[int]:
        ids = self.tok.encode(token, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 else None

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids = [int(i) for i in self.tok.encode(text, add_special_tokens=False)]
        if add_bos and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, ids: Any, skip_special_tokens: bool = True, **_: Any) -> str:
        id_list = _as_id_list(ids)
        if skip_special_tokens:
            drop = set(self.special_ids)
            id_list = [i for i in id_list if i not in drop]
        return self.tok.decode(id_list, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _read_added_tokens(folder: Path) -> Dict[str, int]:
    """``added_tokens.json`` of a slow-tokenizer folder (token → id), empty when absent."""
    path = folder / "added_tokens.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path} is not valid JSON ({err}); fix or remove the file") from err
    return {str(tok): int(idx) for tok, idx in data.items()}


def _read_chat_template(folder: Path) -> Optional[str]:
    """``chat_template`` of an HF tokenizer folder (``tokenizer_config.json`` or ``chat_template.jinja``)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("chat_template")
        except json.JSONDecodeError as err:
            raise TokenizerError(f"{config} is not valid JSON ({err}); fix or remove the file") from err
        return value if isinstance(value, str) else None
    return None


def load_tokenizer(path: Path | str, pad_token: Optional[str] = None) -> LLMTokenizer:
    """The tokenizer of an LLM folder or ``.gguf`` file.

    A folder holding ``tokenizer.model`` is read with SentencePiece (upstream-exact ids); anything else with
    ``transformers.AutoTokenizer`` (``gguf_file=`` for a ``.gguf`` path). ``pad_token`` None picks ``$$`` when the
    vocabulary has it (upstream), else the tokenizer's pad token, else its EOS.
    """
    path = Path(path)
    if path.is_dir() and (path / SENTENCEPIECE_FILE).is_file():
        tokenizer: LLMTokenizer = SentencePieceTokenizer(path, pad_token=pad_token)
    else:
        from transformers import AutoTokenizer

        if path.suffix == ".gguf":
            hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            hf_tok = AutoTokenizer.from_pretrained(str(path))
        tokenizer = HFTokenizer(hf_tok, str(path), pad_token=pad_token)
    logger.info(
        "tokenizer %s: %d ids, bos=%r eos=%r pad=%r (id %d)",
        path,
        tokenizer.vocab_size,
        tokenizer.bos_token,
        tokenizer.eos_token,
        tokenizer.pad_token,
        tokenizer.pad_id,
    )
    return tokenizer
