"""``facegpt-data validate`` and ``split``.

``validate`` runs every build-time check of the face builders over a data root and reports, per file, with
counts and record locations (``file[section] record #index``):

* **file errors**: JSON syntax (line/column), a truncated file, a top level of the wrong shape, a section that is
  not a list of records, duplicate section names after trimming;
* **malformed records**: a record without ``image``, a conversation that starts with the assistant or does not
  alternate, empty or non-string turns, several ``<image>`` tokens, ... (the reasons the builders give);
* **image paths outside the image root**: absolute paths elsewhere and ``..`` climbing out (checked lexically, as
  the datasets do; such files are never opened);
* **missing images** (and, with ``--decode``, undecodable ones), with the first record that names each;
* **exact duplicates** (notes, not problems: ``duplicate_images: keep_all`` trains every copy): records with the
  same image and the same turns as an earlier record of the same file.

``split`` writes a by-image train/val split of one or more files, jointly, so an image never lands on both sides
even across files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from minigpt4.datasets.json_stream import JsonStreamError, iter_array, iter_sections
from minigpt4.datasets.records import (
    Record,
    RecordError,
    exact_duplicates,
    images_outside_root,
    normalise_section,
    parse_record,
    where,
)
from minigpt4.datasets.schemas import FieldMap
from minigpt4.datasets.splits import image_key, val_images
from minigpt4.processors.image_io import ImageOpenError, image_path_in_root, open_image
from minigpt4.tools.data_clean import open_sections_until, raw_section_keys, SectionWriter
from minigpt4.tools.data_common import AnnFile, is_prompt_section, iter_file, progress, sections_of

#: Locations listed per kind of finding; the counts are always complete.
MAX_LISTED = 20
COUNT_KEYS = ("file_errors", "malformed_records", "outside_root", "missing_images", "undecodable_images",
              "exact_duplicates")


def _entries(ann: AnnFile, problems: List[str]) -> Iterator[Tuple[str, int, Any]]:
    """``(section, index, raw)`` of every record; a section that is not a list, or a repeated name, is a problem
    and the walk goes on with the next section."""
    if ann.kind == "array":
        for index, raw in iter_array(ann.path):
            yield "", index, raw
        return
    seen: Dict[str, str] = {}
    for key, items in iter_sections(ann.path):
        name = normalise_section(key)
        if name in seen:
            problems.append(f"{ann.path}: sections {seen[name]!r} and {key!r} have the same name after trimming")
        seen[name] = key
        if not hasattr(items, "__next__"):
            problems.append(f"{ann.path}: section {key!r} is {type(items).__name__}, expected a list of records")
            continue
        for index, raw in items:
            yield name, index, raw


def _parse(ann: AnnFile, require_image_token: bool, report: Dict[str, Any]) -> List[Record]:
    """Well-formed records of one file; file errors and malformed records go into ``report``."""
    fmap, records = FieldMap(), []
    file_problems: List[str] = []
    try:
        for section, index, raw in progress(_entries(ann, file_problems), f"validate {ann.label}"):
            if is_prompt_section(section):
                continue
            report["records"] += 1
            report["per_section"][section] = report["per_section"].get(section, 0) + 1
            try:
                records.append(parse_record(raw, fmap, ann.path, index, section, require_image_token))
            except RecordError as err:
                report["malformed"].append(str(err))
    except (JsonStreamError, ValueError) as err:
        file_problems.append(str(err))
    report["file_errors"] = file_problems
    return records


def _check_images(ann: AnnFile, records: List[Record], decode: bool, report: Dict[str, Any]) -> None:
    """Outside-root paths (per record, never opened), then missing / undecodable files (per image)."""
    outside = images_outside_root(records, ann.image_root)
    report["outside"] = [f"{where(rec)}: {reason}" for rec, reason in outside]
    refused = {id(rec) for rec, _ in outside}
    first: Dict[str, Record] = {}
    uses: Dict[str, int] = {}
    for rec in records:
        if id(rec) not in refused:
            key = os.path.normpath(rec.image)
            first.setdefault(key, rec)
            uses[key] = uses.get(key, 0) + 1
    report["images"] = len(first)
    for key in progress(sorted(first), f"images of {ann.label}"):
        rec = first[key]
        path = image_path_in_root(ann.image_root, rec.image)
        used = f" ({uses[key]} records use it)" if uses[key] > 1 else ""
        if not os.path.isfile(path):
            report["missing"].append(f"{where(rec)}: image not found: {path}{used}")
        elif decode:
            try:
                open_image(path, target_size=32)
            except ImageOpenError as err:
                report["undecodable"].append(f"{where(rec)}: {err}{used}")


def _listed(lines: List[str]) -> List[str]:
    more = [f"... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else []
    return lines[:MAX_LISTED] + more


def validate_file(ann: AnnFile, decode: bool = False, require_image_token: bool = False) -> Dict[str, Any]:
    """Problems (strings), notes and per-kind ``counts`` of one file (see the module docstring)."""
    report: Dict[str, Any] = {"records": 0, "images": 0, "per_section": {}, "malformed": [], "outside": [],
                              "missing": [], "undecodable": []}
    records = _parse(ann, require_image_token, report)
    _check_images(ann, records, decode, report)
    duplicates = [f"{where(dup)} repeats {where(orig)} (same image and turns)"
                  for dup, orig in exact_duplicates(records)]
    counts = dict(zip(COUNT_KEYS, (len(report["file_errors"]), len(report["malformed"]), len(report["outside"]),
                                   len(report["missing"]), len(report["undecodable"]), len(duplicates))))
    problems = report["file_errors"] + [line for kind in ("malformed", "outside", "missing", "undecodable")
                                        for line in report[kind]]
    notes = [f"{ann.path}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())]
    if duplicates:
        notes.append(f"{ann.path}: {len(duplicates)} exact duplicate record(s) (duplicate_images: keep_all trains "
                     "every copy; facegpt-data clean drops them)")
        notes += _listed(duplicates)
    if ann.kind == "object" and not problems:
        empty = [s for s in sections_of(ann) if not is_prompt_section(s) and not report["per_section"].get(s)]
        notes += [f"{ann.path}: empty section(s): {empty}"] if empty else []
    no_token = sum(not r.has_image_token for r in records)
    if no_token:
        notes.append(f"{ann.path}: {no_token} record(s) without an '<image>' token (the image goes first)")
    return {"path": ann.path, "records": report["records"], "images": report["images"], "problems": problems,
            "notes": notes, "counts": counts, "duplicates": duplicates}


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
