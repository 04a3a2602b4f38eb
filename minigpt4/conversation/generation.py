"""Generation settings, stop rules and answer clean-up shared by the chat engine and the demos.

* :class:`GenerationSettings` — greedy decoding by default (reproducible answers; upstream's ``Chat`` always
  sampled), sampling with temperature / top-p, beams, repetition and length penalty, ``max_new_tokens`` and the
  ``max_length`` budget of prompt + answer. ``/set key=value`` in the demo goes through
  :meth:`GenerationSettings.with_assignments`.
* stop rules are the model's (``model.stop_sequences()``: the tokenizer's EOS and every tokenization of
  ``end_sym``; ``model.generate_from_embeds`` stops each sequence on them);
* :class:`AnswerCleaner` — turns generated ids into the answer text: cut at the first stop sequence / stop text,
  drop special tokens, drop a leading assistant role marker. :meth:`AnswerCleaner.partial` gives the part of an
  unfinished answer that is safe to show while streaming (it holds back what may still become a stop text).
* :func:`padded_generate_kwargs` — ``generate`` arguments for a left-padded batch (the batched API, the server).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: ``/set`` accepts these short names too
SETTING_ALIASES = {"sample": "do_sample", "beams": "num_beams", "temp": "temperature"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A generation setting with an unknown name or an invalid value."""


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated.

    ``max_length`` bounds prompt + answer (positions); the prompt may use ``max_length - max_new_tokens``
    positions, older turns are dropped beyond that. ``seed`` (sampling only) reseeds torch before every answer,
    so a sampled answer can be reproduced.
    """

    max_new_tokens: int = 300
    max_length: int = 2000
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.9
    num_beams: int = 1
    repetition_penalty: float = 1.05
    length_penalty: float = 1.0
    min_length: int = 1
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.max_length <= self.max_new_tokens:
            problems.append(f"max_length ({self.max_length}) must exceed max_new_tokens ({self.max_new_tokens}): "
                            "it bounds prompt + answer")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (got {self.temperature}); use do_sample=false for greedy")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.num_beams < 1:
            problems.append(f"num_beams must be >= 1 (got {self.num_beams})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.min_length < 0:
            problems.append(f"min_length must be >= 0 (got {self.min_length})")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def context_limit(self) -> int:
        """Positions the prompt may use (``max_length - max_new_tokens``)."""
        return self.max_length - self.max_new_tokens

    def replace(self, **changes: Any) -> "GenerationSettings":
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise SettingsError(f"unknown generation setting(s) {unknown}; known: {self.names()}")
        return dataclasses.replace(self, **changes)

    def with_assignments(self, items: Sequence[str]) -> "GenerationSettings":
        """A copy with ``key=value`` strings applied, e.g. ``["temperature=0.7", "do_sample=true"]``."""
        changes: Dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for item in items:
            key, sep, raw = item.partition("=")
            key = SETTING_ALIASES.get(key.strip(), key.strip())
            if not sep or not key:
                raise SettingsError(f"expected key=value, got {item!r}; keys: {self.names()}")
            if key not in types:
                raise SettingsError(f"unknown generation setting {key!r}; known: {self.names()}")
            changes[key] = _parse_value(key, str(types[key]), raw.strip())
        return self.replace(**changes)

    @classmethod
    def names(cls) -> List[str]:
        """Setting names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    def describe(self) -> str:
        """One line: ``key=value`` for every setting."""
        return " ".join(f"{k}={getattr(self, k)}" for k in self.names())

    def generate_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``generate`` (only the ones that apply, so transformers does not warn)."""
        kwargs: Dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "min_length": self.min_length,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=float(self.temperature), top_p=float(self.top_p))
        if self.num_beams > 1:
            kwargs["length_penalty"] = float(self.length_penalty)
        return kwargs


def _parse_value(key: str, type_name: str, raw: str) -> Any:
    """``raw`` converted to the type of setting ``key``."""
    try:
        if "bool" in type_name:
            low = raw.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(raw)
        if "Optional" in type_name and raw.lower() in ("none", "null", ""):
            return None
        if "int" in type_name:
            return int(raw)
        if "float" in type_name:
            return float(raw)
    except ValueError:
        kind = "true/false" if "bool" in type_name else "an integer" if "int" in type_name else "a number"
        raise SettingsError(f"{key} must be {kind}, got {raw!r}") from None
    return raw


def find_stop(ids: Sequence[int], stops: Sequence[Sequence[int]]) -> Optional[int]:
    """Index where the earliest stop sequence starts in ``ids``, or None."""
    best: Optional[int] = None
    for stop in stops:
        n = len(stop)
        for start in range(0, len(ids) - n + 1):
            if best is not None and start >= best:
                break
            if list(ids[start:start + n]) == list(stop):
                best = start
                break
    return best


class AnswerCleaner:
    """Generated ids → answer text, the same way for finished and streamed answers.

    The rule (upstream's ``Chat.answer`` post-processing, made exact for streaming): cut the ids at the first stop
    sequence; decode without special tokens; cut the text at the first stop text (the decoded stop sequences and
    the template separator, e.g. ``###``); drop a leading assistant role marker (``Assistant:``, ``[/INST]``);
    strip whitespace.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[Sequence[int]], extra_stop_texts: Sequence[str] = (),
                 role_marker: str = "") -> None:
        self.tokenizer = tokenizer
        self.stops = [list(s) for s in stops if len(s) > 0]
        texts = {tokenizer.decode(s, skip_special_tokens=False).strip() for s in self.stops}
        texts |= {t.strip() for t in extra_stop_texts}
        self.stop_texts = sorted((t for t in texts if t), key=len, reverse=True)
        self.role_marker = role_marker.strip()

    def ids_before_stop(self, ids: Sequence[int]) -> List[int]:
        """``ids`` up to (not including) the first stop sequence."""
        cut = find_stop(ids, self.stops)
        return list(ids if cut is None else ids[:cut])

    def text(self, ids: Sequence[int]) -> str:
        """The final answer text of ``ids``."""
        return self._clean(self.tokenizer.decode(self.ids_before_stop(ids), skip_special_tokens=True), final=True)

    def partial(self, ids: Sequence[int]) -> str:
        """The prefix of the answer that can be shown now (it will not change as more ids arrive)."""
        return self._clean(self.tokenizer.decode(self.ids_before_stop(ids), skip_special_tokens=True), final=False)

    def _clean(self, text: str, final: bool) -> str:
        for stop in self.stop_texts:
            pos = text.find(stop)
            if pos >= 0:
                text, final = text[:pos], True
        text = text.lstrip()
        if self.role_marker:
            if text.startswith(self.role_marker):
                text = text[len(self.role_marker):].lstrip()
            elif not final and self.role_marker.startswith(text):
                return ""  # could still become the role marker
        if final:
            return text.strip()
        # hold back: an incomplete UTF-8 character, trailing spaces, a possible start of a stop text
        text = text.rstrip("\ufffd").rstrip()
        for stop in self.stop_texts:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k].rstrip()
                    break
        return text


class _QuietPenaltyOverride(logging.Filter):
    """Drops transformers' note that our repetition-penalty processor replaces its own (that is the intent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("RepetitionPenaltyLogitsProcessor" in text and "take precedence" in text)


logging.getLogger("transformers.generation.utils").addFilter(_QuietPenaltyOverride())


def padded_generate_kwargs(settings: GenerationSettings, mask: torch.Tensor) -> Dict[str, Any]:
    """``generate`` arguments for a left-padded batch ``mask`` ``[B, L]``: the repetition penalty of every row
    covers all of its generated ids, as for a batch of one.

    transformers 5 builds its penalty with ``prompt_ignore_length`` = each row's padding length; with an
    embeddings-only prompt the penalised ids are the generated ones only, so a padded row would skip the penalty for
    its first (padding length) answer tokens. A processor of the same type given by the caller takes its place.
    """
    kwargs = settings.generate_kwargs()
    penalty = float(kwargs.get("repetition_penalty", 1.0))
    if penalty != 1.0 and bool((mask == 0).any()):
        kwargs["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
    return kwargs
