"""The one reader of conversation records that every face dataset shares.

A record is LLaVA / ShareGPT4V shaped — ``{"id", "image", "conversations": [{"from", "value"}, ...]}`` — or any
layout a :class:`~minigpt4.datasets.schemas.FieldMap` describes (e.g. flat ``image`` / ``question`` /
``answer``). :func:`parse_record` turns one into a compact :class:`Record` or raises :class:`RecordError` with
the reason; :func:`read_records` streams a whole file (JSON list, or section dict) and applies the
``on_error`` policy; :class:`DataFormatError` reports every problem with file, index and reason.

Build-time checks shared by the builders and ``facegpt-data validate``: :func:`images_outside_root` (image paths
that land outside the image root) and :func:`exact_duplicates` (a record with the same image and the same turns
as an earlier one).
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.processors.image_io import ImagePathError, image_path_in_root
from minigpt4.prompting.markers import LLAVA_IMAGE_TOKEN

logger = get_logger(__name__)

_TOKEN = re.escape(LLAVA_IMAGE_TOKEN)
_IMAGE_TOKEN_RE = re.compile(rf"{_TOKEN}\n|\n{_TOKEN}|{_TOKEN}")  # the marker and a newline on either side
MAX_LISTED = 20


class Record(NamedTuple):
    """One normalised sample: questions have ``<image>`` (and the newline beside it) removed."""

    image: str
    image_id: str
    questions: Tuple[str, ...]
    answers: Tuple[str, ...]
    section: str
    source: str
    index: int
    has_image_token: bool


class RecordError(ValueError):
    """One malformed record; ``str()`` = ``file[section] #index: reason``."""

    def __init__(self, source: str, index: int, reason: str, section: str = "") -> None:
        where = f"{source}[{section!r}]" if section else source
        super().__init__(f"{where} record #{index}: {reason}")
        self.source, self.index, self.reason, self.section = source, index, reason, section


class DataFormatError(ValueError):
    """Malformed records found at build time; lists up to ``MAX_LISTED`` of them and the fix."""

    def __init__(self, errors: List[RecordError], hint: str = "") -> None:
        lines = [str(e) for e in errors[:MAX_LISTED]]
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        fix = hint or "fix the records, or set on_error: skip in the dataset config to skip them (they are counted)"
        super().__init__(f"{len(errors)} malformed record(s):\n  " + "\n  ".join(lines) + more + f"\nFix: {fix}")
        self.errors = errors


def strip_image_token(text: str) -> Tuple[str, int]:
    """Remove every ``<image>`` with one newline beside it; returns ``(stripped text, tokens removed)``."""
    out, n = _IMAGE_TOKEN_RE.subn("", text)
    return out.strip(), n


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _flat_pairs(raw: Dict[str, Any], fmap: Any) -> List[Tuple[str, str]]:
    for key in (fmap.question, fmap.answer):
        if key not in raw:
            raise ValueError(f"missing key {key!r} (field_map.question/answer); keys present: {sorted(raw)}")
    return [(_text(raw[fmap.question], f"{fmap.question!r}"), _text(raw[fmap.answer], f"{fmap.answer!r}"))]


def _turn_pairs(raw: Dict[str, Any], fmap: Any) -> List[Tuple[str, str]]:
    key = fmap.conversations
    if key not in raw:
        raise ValueError(f"missing key {key!r} (field_map.conversations); keys present: {sorted(raw)}")
    turns = raw[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{key!r} must be a non-empty list of turns, got {type(turns).__name__}")
    humans, bots = set(fmap.human_roles), set(fmap.assistant_roles)
    pairs, question = [], None
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or fmap.role not in turn or fmap.content not in turn:
            raise ValueError(f"turn {t} must be an object with {fmap.role!r} and {fmap.content!r}")
        role, value = turn[fmap.role], _text(turn[fmap.content], f"turn {t} {fmap.content!r}")
        expected = humans if question is None else bots
        if role not in humans | bots:
            raise ValueError(f"turn {t} has unknown role {role!r} (expected one of {sorted(humans | bots)})")
        if role not in expected:
            raise ValueError(f"odd turn order: turn {t} is from {role!r}, expected one of {sorted(expected)} "
                             "(turns must alternate, starting with a question)")
        if question is None:
            question = value
        else:
            pairs.append((question, value))
            question = None
    if question is not None:
        raise ValueError(f"the last turn ({len(turns) - 1}) is a question without an answer")
    return pairs


def parse_record(raw: Any, fmap: Any, source: str = "", index: int = 0, section: str = "",
                 require_image_token: bool = False) -> Record:
    """Normalise one raw record; raises :class:`RecordError` naming file, index and reason."""
    try:
        if not isinstance(raw, dict):
            raise ValueError(f"a record must be a JSON object, got {type(raw).__name__}")
        if fmap.image not in raw:
            raise ValueError(f"missing key {fmap.image!r} (text-only records are not supported)")
        image = _text(raw[fmap.image], f"{fmap.image!r}")
        pairs = _flat_pairs(raw, fmap) if fmap.question else _turn_pairs(raw, fmap)
        questions, tokens = [], 0
        for q, _ in pairs:
            stripped, n = strip_image_token(q)
            tokens += n
            questions.append(_text(stripped, "a question without its <image> token"))
        if tokens > 1:
            raise ValueError(f"{tokens} '<image>' tokens but a record holds one image")
        if require_image_token and tokens == 0:
            raise ValueError("no '<image>' token in the questions (require_image_token is on)")
        rid = raw.get(fmap.id)
        if rid is not None and not isinstance(rid, (str, int)):
            raise ValueError(f"{fmap.id!r} is {type(rid).__name__}, expected a string or an integer")
        image_id = str(rid) if rid is not None else image
        return Record(image, image_id, tuple(questions), tuple(a for _, a in pairs), section, source, index,
                      tokens == 1)
    except ValueError as err:
        raise RecordError(source, index, str(err), section) from None


def parse_all(items: Iterable[Tuple[int, Any]], fmap: Any, source: str, section: str, on_error: str,
              errors: List[RecordError], require_image_token: bool = False) -> Iterator[Record]:
    """Parse ``(index, raw)`` pairs; malformed ones go to ``errors`` (the caller applies ``on_error``)."""
    for index, raw in items:
        try:
            yield parse_record(raw, fmap, source, index, section, require_image_token)
        except RecordError as err:
            errors.append(err)


def apply_error_policy(errors: List[RecordError], on_error: str, what: str) -> None:
    """``on_error: error`` → raise :class:`DataFormatError`; ``skip`` → log the count per reason."""
    if not errors:
        return
    if on_error == "error":
        raise DataFormatError(errors)
    reasons = Counter(re.sub(r"\d+", "N", e.reason) for e in errors)
    summary = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(5))
    logger.warning("%s: skipped %d malformed record(s) (on_error: skip): %s. First: %s",
                   what, len(errors), summary, errors[0])


def dedupe_by_image(records: List[Record]) -> Tuple[List[Record], int]:
    """Keep the first record of each image (paths compared after ``normpath``); returns (kept, dropped)."""
    seen, kept = set(), []
    for rec in records:
        key = os.path.normpath(rec.image)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return kept, len(records) - len(kept)


def group_by_image(records: List[Record], seed: int) -> List[Record]:
    """One multi-turn record per image (paths compared after ``normpath``), in order of first appearance.

    Its turns are every question/answer pair of that image's records, each record's turns kept together, the
    records in a seeded order per image (so no section always comes first). The grouped record keeps the first
    record's source, index and id; its section is the records' common section, or ``""`` when they differ."""
    by_image: Dict[str, List[Record]] = {}
    for rec in records:
        by_image.setdefault(os.path.normpath(rec.image), []).append(rec)
    grouped: List[Record] = []
    for key, recs in by_image.items():
        if len(recs) == 1:
            grouped.append(recs[0])
            continue
        order = list(recs)
        random.Random(f"{seed}:{key}").shuffle(order)
        sections = {r.section for r in recs}
        grouped.append(recs[0]._replace(
            questions=tuple(q for r in order for q in r.questions),
            answers=tuple(a for r in order for a in r.answers),
            section=sections.pop() if len(sections) == 1 else "",
            has_image_token=any(r.has_image_token for r in recs),
        ))
    return grouped


def duplicate_key(rec: Record) -> Tuple[str, Tuple[str, ...], Tuple[str, ...]]:
    """What makes two records exact duplicates: the image (after ``normpath``) and every question and answer
    (questions with ``<image>`` removed, so its position does not matter). ``id`` and section are not compared."""
    return os.path.normpath(rec.image), rec.questions, rec.answers


def exact_duplicates(records: Iterable[Record]) -> List[Tuple[Record, Record]]:
    """``(duplicate, first copy)`` for every record equal (:func:`duplicate_key`) to an earlier one."""
    first: Dict[Tuple[str, Tuple[str, ...], Tuple[str, ...]], Record] = {}
    out: List[Tuple[Record, Record]] = []
    for rec in records:
        key = duplicate_key(rec)
        if key in first:
            out.append((rec, first[key]))
        else:
            first[key] = rec
    return out


def where(rec: Record) -> str:
    """``file[section] record #index`` of a record, for messages."""
    section = f"[{rec.section!r}]" if rec.section else ""
    return f"{rec.source}{section} record #{rec.index}"


def log_exact_duplicates(records: List[Record], what: str) -> Dict[str, int]:
    """Count exact duplicates per file and log each file's count with the first example; returns the counts."""
    per_file: Dict[str, List[Tuple[Record, Record]]] = {}
    for dup, orig in exact_duplicates(records):
        per_file.setdefault(dup.source, []).append((dup, orig))
    for source, pairs in per_file.items():
        dup, orig = pairs[0]
        logger.warning("%s: %s holds %d exact duplicate record(s) (same image and turns as an earlier record; "
                       "duplicate_images: keep_all trains every copy), first: %s repeats %s. Remove them with "
                       "facegpt-data clean, or set duplicate_images: one_per_image", what, source, len(pairs),
                       where(dup), where(orig))
    return {source: len(pairs) for source, pairs in per_file.items()}


def images_outside_root(records: Iterable[Record], root: str) -> List[Tuple[Record, str]]:
    """``(record, reason)`` for every record whose image path lands outside ``root`` (nothing is opened)."""
    out: List[Tuple[Record, str]] = []
    for rec in records:
        try:
            image_path_in_root(root, rec.image)
        except ImagePathError as err:
            out.append((rec, str(err)))
    return out


def check_image_paths(records: List[Record], root: str, strict: bool, what: str) -> int:
    """Log (or with ``strict`` raise :class:`ImagePathError` for) records whose image lands outside ``root``.

    They stay in the data set: at train time they are skipped and counted like a missing image, never opened.
    Returns how many there are.
    """
    bad = images_outside_root(records, root)
    if not bad:
        return 0
    examples = "; ".join(f"{where(rec)}: {rec.image!r}" for rec, _ in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    if strict:
        raise ImagePathError(f"{what}: {len(bad)} record(s) name an image outside the image root {root} "
                             f"(strict_images is on): {examples}{more}. Fix: make image paths relative to "
                             "build_info.image_path (symlink outside folders into it), or set strict_images: false "
                             "to skip these records")
    logger.warning("%s: %d record(s) name an image outside the image root %s; they are skipped and counted like "
                   "missing images, never opened: %s%s", what, len(bad), root, examples, more)
    return len(bad)


def normalise_section(name: str) -> str:
    """Section names are compared after trimming surrounding whitespace."""
    return name.strip()


def find_prompt_section(name: str, prompt_sections: Iterable[str]) -> Optional[str]:
    """The prompt-template section ``name`` matches (trimmed, case-insensitive), or None."""
    wanted = normalise_section(name).lower()
    return next((p for p in prompt_sections if normalise_section(p).lower() == wanted), None)
