"""Shared helpers of the data tools: finding annotation files under a data root and walking their records."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from minigpt4.datasets.json_stream import JsonShapeError, iter_array, iter_sections, top_level_kind
from minigpt4.datasets.records import normalise_section

PROMPT_SECTIONS = ("Pre-Prompt",)


@dataclass
class AnnFile:
    """One annotation file, its layout (``array`` = ShareGPT list, ``object`` = section dict) and image root."""

    path: str
    kind: str
    image_root: str

    @property
    def label(self) -> str:
        return os.path.basename(self.path)


def discover(root: Optional[str], files: Sequence[str] = (), image_root: Optional[str] = None) -> List[AnnFile]:
    """Annotation files: ``<root>/*/Annotations/*.json`` (images in the sibling ``Images``), or ``files``."""
    found: List[AnnFile] = []
    if root:
        for ann_dir in sorted(Path(root).glob("*/Annotations")):
            for path in sorted(ann_dir.glob("*.json")):
                found.append(AnnFile(str(path), top_level_kind(path), str(ann_dir.parent / "Images")))
        if not found and not files:
            raise SystemExit(f"no annotation files under {root}/*/Annotations/*.json (see the data layout in the "
                             "README), or pass the files explicitly")
    for path in files:
        guess = Path(path).resolve().parent.parent / "Images"
        found.append(AnnFile(str(path), top_level_kind(path), image_root or str(guess)))
    return found


def iter_file(ann: AnnFile) -> Iterator[Tuple[str, int, Any]]:
    """``(section, index, raw record)`` for every entry (section ``""`` for JSON lists; names trimmed)."""
    if ann.kind == "array":
        for index, raw in iter_array(ann.path):
            yield "", index, raw
        return
    for key, items in iter_sections(ann.path):
        if not hasattr(items, "__next__"):
            raise JsonShapeError(str(ann.path), f"section {key!r} that is not a list", "a list of records",
                                 "make every section of a FaceGPT4Vision file a JSON list of records")
        for index, raw in items:
            yield normalise_section(key), index, raw


def sections_of(ann: AnnFile) -> List[str]:
    """Trimmed section names in file order, empty ones included (``[""]`` for JSON lists)."""
    if ann.kind == "array":
        return [""]
    return [normalise_section(key) for key, _ in iter_sections(ann.path)]


def is_prompt_section(name: str, prompt_sections: Sequence[str] = PROMPT_SECTIONS) -> bool:
    return any(name.strip().lower() == p.strip().lower() for p in prompt_sections)


def progress(iterable: Any, desc: str, total: Optional[int] = None) -> Any:
    """A tqdm bar on stderr when it is a terminal (long runs show progress), else the iterable itself."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="rec", file=sys.stderr, disable=None, leave=False)


def answer_texts(raw: Any) -> List[str]:
    """The assistant turns of a LLaVA record (empty for anything else)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list):
        return []
    return [t["value"] for t in raw["conversations"]
            if isinstance(t, dict) and t.get("from") in ("gpt", "assistant") and isinstance(t.get("value"), str)]


def format_table(rows: List[List[Any]], header: List[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and c.replace(".", "").replace("%", "").isdigit() else c.ljust(w)
                               for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
