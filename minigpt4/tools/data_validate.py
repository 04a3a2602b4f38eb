"""``facegpt-data validate`` and ``split``.

``validate`` runs every build-time check of the face builders over a data root (JSON syntax with line/column,
record shape with file/index/reason, duplicate section names after trimming, section values that are not lists)
and the train-time image check (missing, and with ``--decode`` undecodable). ``split`` writes a by-image
train/val split of one or more files, jointly, so an image never lands on both sides even across files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence, Set, Tuple

from minigpt4.datasets.json_stream import JsonStreamError, iter_sections
from minigpt4.datasets.records import RecordError, parse_record
from minigpt4.datasets.schemas import FieldMap
from minigpt4.datasets.splits import image_key, val_images
from minigpt4.processors.image_io import ImageOpenError, open_image
from minigpt4.tools.data_clean import open_sections_until, raw_section_keys, SectionWriter
from minigpt4.tools.data_common import AnnFile, is_prompt_section, iter_file, progress, sections_of


def _check_sections(ann: AnnFile, problems: List[str]) -> None:
    seen: Dict[str, int] = {}
    for key, items in iter_sections(ann.path):
        if key.strip() in seen:
            problems.append(f"{ann.path}: sections {key!r} and another have the same name after trimming")
        seen[key.strip()] = 1
        if not hasattr(items, "__next__"):
            problems.append(f"{ann.path}: section {key!r} is {type(items).__name__}, expected a list of records")


def validate_file(ann: AnnFile, decode: bool = False, require_image_token: bool = False) -> Dict[str, Any]:
    """Problems (strings) and notes of one file."""
    problems: List[str] = []
    notes: List[str] = []
    images: Set[str] = set()
    fmap, records, no_token = FieldMap(), 0, 0
    per_section: Dict[str, int] = {}
    try:
        if ann.kind == "object":
            _check_sections(ann, problems)
        for section, index, raw in progress(iter_file(ann), f"validate {ann.label}"):
            if is_prompt_section(section):
                continue
            records += 1
            per_section[section] = per_section.get(section, 0) + 1
            try:
                rec = parse_record(raw, fmap, ann.path, index, section, require_image_token)
            except RecordError as err:
                problems.append(str(err))
                continue
            no_token += not rec.has_image_token
            images.add(rec.image)
    except (JsonStreamError, ValueError) as err:
        problems.append(str(err))
    if ann.kind == "object" and not problems:
        empty = [s for s in sections_of(ann) if not is_prompt_section(s) and not per_section.get(s)]
        notes += [f"{ann.path}: empty section(s): {empty}"] if empty else []
    if no_token:
        notes.append(f"{ann.path}: {no_token} record(s) without an '<image>' token (the image goes first)")
    for rel in progress(sorted(images), f"images of {ann.label}"):
        path = os.path.join(ann.image_root, rel)
        if not os.path.isfile(path):
            problems.append(f"{ann.path}: image not found: {path}")
        elif decode:
            try:
                open_image(path, target_size=32)
            except ImageOpenError as err:
                problems.append(f"{ann.path}: {err}")
    return {"path": ann.path, "records": records, "images": len(images), "problems": problems, "notes": notes}


# --------------------------------------------------------------------------------------- split


def _pairs(ann: AnnFile) -> List[Tuple[str, str]]:
    return [(raw["image"], section) for section, _, raw in iter_file(ann)
            if isinstance(raw, dict) and isinstance(raw.get("image"), str)]


def split_files(anns: Sequence[AnnFile], out_dir: str, val_fraction: float, seed: int, stratify: bool = True
                ) -> Dict[str, Any]:
    """Write ``<stem>.train.json`` / ``<stem>.val.json`` for each file; the split is joint over all files."""
    os.makedirs(out_dir, exist_ok=True)
    pairs = [p for ann in anns for p in _pairs(ann)]
    chosen = val_images(pairs, val_fraction, seed, stratify)
    report: Dict[str, Any] = {"val_fraction": val_fraction, "seed": seed, "val_images": len(chosen), "files": {}}
    for ann in anns:
        stem = os.path.splitext(os.path.basename(ann.path))[0]
        outs = {side: os.path.join(out_dir, f"{stem}.{side}.json") for side in ("train", "val")}
        for path in outs.values():
            if os.path.abspath(path) == os.path.abspath(ann.path):
                raise SystemExit(f"split never overwrites its input: {ann.path}")
        writers = {side: SectionWriter(path, ann.kind) for side, path in outs.items()}
        counts = {"train": 0, "val": 0, "no_image": 0}
        names = dict.fromkeys(sections_of(ann))
        raw_keys = raw_section_keys(ann) if ann.kind == "object" else {}
        current = None
        try:
            for section, _, raw in progress(iter_file(ann), f"split {ann.label}"):
                if ann.kind == "object" and section != current:
                    for w in writers.values():
                        open_sections_until(w, names, raw_keys, current, section)
                    current = section
                image = raw.get("image") if isinstance(raw, dict) else None
                side = "val" if isinstance(image, str) and image_key(image) in chosen else "train"
                counts["no_image"] += not isinstance(image, str)
                counts[side] += 1
                writers[side].write(raw)
            if ann.kind == "object":
                for w in writers.values():
                    open_sections_until(w, names, raw_keys, current, None)
        finally:
            for w in writers.values():
                w.close()
        report["files"][ann.path] = {"outputs": outs, **counts}
    return report


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False)
