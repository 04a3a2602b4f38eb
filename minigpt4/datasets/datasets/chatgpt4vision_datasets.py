"""FaceGPT4Vision: one JSON object mapping section name → list of LLaVA-style records.

Sections are matched after trimming spaces (the team's file has ``"Facial Characteristics Short "``);
prompt-template sections (``Pre-Prompt``) are never samples; empty sections are allowed. Every item carries its
``section``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.datasets.datasets.base_dataset import ConversationDataset
from minigpt4.datasets.json_stream import iter_sections, top_level_kind
from minigpt4.datasets.records import (
    Record,
    RecordError,
    find_prompt_section,
    normalise_section,
    parse_all,
)

logger = get_logger(__name__)


class SectionError(ValueError):
    """A section name in the config does not match the file."""


def scan_sections(path: str) -> Dict[str, int]:
    """``{trimmed section name: number of entries}`` in file order (streamed)."""
    counts: Dict[str, int] = {}
    for key, items in iter_sections(path):
        counts[normalise_section(key)] = sum(1 for _ in items) if hasattr(items, "__next__") else 0
    return counts


def _describe(counts: Dict[str, int]) -> str:
    return ", ".join(f"{name!r} ({n})" for name, n in counts.items())


def resolve_sections(path: str, wanted: Sequence[str], prompt_sections: Sequence[str], counts: Dict[str, int]
                     ) -> List[str]:
    """The trimmed section names to read: ``wanted`` checked against the file, or every sample section."""
    if not wanted:
        return [s for s in counts if find_prompt_section(s, prompt_sections) is None]
    chosen: List[str] = []
    for name in wanted:
        key = normalise_section(name)
        if find_prompt_section(key, prompt_sections) is not None:
            raise SectionError(f"{path}: section {name!r} holds prompt templates, not samples "
                               f"(listed in prompt_sections); remove it from sections")
        if key not in counts:
            raise SectionError(f"{path}: unknown section {name!r}. Available sections (entries): "
                               f"{_describe(counts)}")
        if counts[key] == 0:
            logger.warning("%s: selected section %r is empty", path, key)
        if key not in chosen:
            chosen.append(key)
    return chosen


def read_section_file(path: str, sections: Iterable[str], fmap: Any, require_image_token: bool = False
                      ) -> Tuple[List[Record], List[RecordError], Dict[str, int]]:
    """Parse the records of ``sections`` (trimmed names); returns ``(records, malformed, counts per section)``."""
    path = os.fspath(path)
    if top_level_kind(path) != "object":
        raise ValueError(f"{path}: FaceGPT4Vision reads a JSON object (section name -> list of records); this file "
                         "is a JSON list (a plain list of records belongs to the sharegpt_face builder)")
    wanted = set(sections)
    records: List[Record] = []
    errors: List[RecordError] = []
    seen: Dict[str, str] = {}
    for key, items in iter_sections(path):
        name = normalise_section(key)
        if name in seen:
            raise SectionError(f"{path}: sections {seen[name]!r} and {key!r} have the same name after trimming")
        seen[name] = key
        if name not in wanted:
            continue
        if not hasattr(items, "__next__"):
            raise SectionError(f"{path}: section {key!r} must be a list of records, got {type(items).__name__}")
        records.extend(parse_all(items, fmap, path, name, "error", errors, require_image_token))
    counts: Dict[str, int] = {}
    for r in records:
        counts[r.section] = counts.get(r.section, 0) + 1
    return records, errors, counts


class FaceGPT4VisionDataset(ConversationDataset):
    """FaceGPT4Vision items; each carries its ``section``."""
