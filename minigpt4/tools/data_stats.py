"""``facegpt-data stats``: counts computed with sets, so every figure is consistent.

Per file: records, unique images (set of normalised paths), malformed records; per section: records, unique
images, refusal rate (:func:`minigpt4.tools.data_clean.is_refusal`), answer-length percentiles (words);
between the ShareGPT lists: images shared by each pair and by all, and the union; between every pair of files:
images with the same bytes (by content, whatever their paths; :mod:`minigpt4.datasets.identity`), with examples;
images missing or undecodable under each file's image root, and image paths that land outside it (refused, never
opened).
"""

from __future__ import annotations

import os
from itertools import combinations
from typing import Any, Dict, List, Sequence, Set

import numpy as np

from minigpt4.datasets.identity import identity_keys, normalised_path
from minigpt4.datasets.records import RecordError, parse_record
from minigpt4.datasets.schemas import FieldMap
from minigpt4.processors.image_io import ImageOpenError, ImagePathError, image_path_in_root, open_image
from minigpt4.tools.data_clean import is_refusal
from minigpt4.tools.data_common import (
    AnnFile,
    answer_texts,
    format_table,
    is_prompt_section,
    iter_file,
    progress,
    sections_of,
)

PERCENTILES = (50, 90, 99)
EXAMPLES = 3  # example path pairs kept per pair of files


def percentiles(values: Sequence[int]) -> Dict[str, float]:
    """``{p50, p90, p99, max}`` of ``values`` (zeros when empty)."""
    if not values:
        return {**{f"p{p}": 0.0 for p in PERCENTILES}, "max": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    out["max"] = float(arr.max())
    return out


class _Section:
    def __init__(self) -> None:
        self.records, self.refusals, self.answers = 0, 0, 0
        self.images: Set[str] = set()
        self.words: List[int] = []

    def add(self, raw: Any, prompt: bool) -> None:
        self.records += 1
        if isinstance(raw, dict) and isinstance(raw.get("image"), str):
            self.images.add(os.path.normpath(raw["image"]))
        if prompt:
            return
        for text in answer_texts(raw):
            self.answers += 1
            self.words.append(len(text.split()))
            self.refusals += is_refusal(text)

    def summary(self) -> Dict[str, Any]:
        return {"records": self.records, "unique_images": len(self.images), "answers": self.answers,
                "refusals": self.refusals, "refusal_rate": self.refusals / self.answers if self.answers else 0.0,
                "answer_words": percentiles(self.words)}


def _check_images(images: Set[str], root: str, mode: str) -> Dict[str, List[str]]:
    """Image paths outside ``root`` (refused, never opened), missing, and with ``decode`` undecodable."""
    missing, bad, outside = [], [], []
    if mode == "none":
        return {"missing": missing, "undecodable": bad, "outside_root": outside}
    for rel in progress(sorted(images), f"images under {root}"):
        try:
            path = image_path_in_root(root, rel)
        except ImagePathError:
            outside.append(rel)
            continue
        if not os.path.isfile(path):
            missing.append(rel)
        elif mode == "decode":
            try:
                open_image(path, target_size=32)
            except ImageOpenError:
                bad.append(rel)
    return {"missing": missing, "undecodable": bad, "outside_root": outside}


def file_stats(ann: AnnFile, check_images: str = "exists", prompt_sections: Sequence[str] = ("Pre-Prompt",)
               ) -> Dict[str, Any]:
    """Statistics of one annotation file (see the module docstring)."""
    sections: Dict[str, _Section] = {name: _Section() for name in sections_of(ann)}
    fmap, malformed = FieldMap(), 0
    for section, index, raw in progress(iter_file(ann), f"stats {ann.label}"):
        prompt = is_prompt_section(section, prompt_sections)
        sections[section].add(raw, prompt)
        if not prompt:
            try:
                parse_record(raw, fmap, ann.path, index, section)
            except RecordError:
                malformed += 1
    images: Set[str] = set().union(*(s.images for s in sections.values())) if sections else set()
    words = [w for s in sections.values() for w in s.words]
    answers = sum(s.answers for s in sections.values())
    refusals = sum(s.refusals for s in sections.values())
    return {
        "path": ann.path, "kind": ann.kind, "image_root": ann.image_root,
        "records": sum(s.records for s in sections.values()), "unique_images": len(images), "malformed": malformed,
        "refusal_rate": refusals / answers if answers else 0.0, "answer_words": percentiles(words),
        "sections": {name: s.summary() for name, s in sections.items()} if ann.kind == "object" else {},
        "image_check": {"mode": check_images, **_check_images(images, ann.image_root, check_images)},
        "_images": images,
    }


def _readable_images(images: Set[str], root: str) -> Dict[str, str]:
    """``{full path: path as written}`` for the images of one file that lie inside ``root`` and exist."""
    out = {}
    for rel in images:
        try:
            path = image_path_in_root(root, rel)
        except ImagePathError:
            continue
        if os.path.isfile(path):
            out[path] = rel
    return out


def content_duplicates(images: Dict[str, Dict[str, str]], examples: int = EXAMPLES) -> Dict[str, Any]:
    """Images with the same bytes in two files (any paths), per pair of files, and repeated inside one file.

    ``images``: ``{file label: {full path: path as written}}``. A pair's ``shared_images`` counts distinct
    contents found in both files; ``other_path`` those of them that the two files name by different paths only
    (what a comparison of paths misses). ``within`` counts, per file, extra paths that repeat an image's bytes.
    """
    keys = identity_keys(path for paths in images.values() for path in paths)
    by_file: Dict[str, Dict[str, List[str]]] = {}  # label -> identity -> paths as written
    for label, paths in images.items():
        ids: Dict[str, List[str]] = {}
        for path, rel in sorted(paths.items()):
            key = keys.get(normalised_path(path))
            if key is not None:
                ids.setdefault(key, []).append(rel)
        by_file[label] = ids
    pairs = []
    for a, b in combinations(sorted(by_file), 2):
        shared = sorted(set(by_file[a]) & set(by_file[b]))
        other = sorted((k for k in shared if not set(by_file[a][k]) & set(by_file[b][k])),
                       key=lambda k: by_file[a][k][0])
        pairs.append({"a": a, "b": b, "shared_images": len(shared), "other_path": len(other),
                      "examples": [[by_file[a][k][0], by_file[b][k][0]] for k in other[:examples]]})
    within = {label: sum(len(rels) - 1 for rels in ids.values()) for label, ids in by_file.items()}
    return {"pairs": pairs, "within": within}


def compute_stats(anns: Sequence[AnnFile], check_images: str = "exists") -> Dict[str, Any]:
    """Statistics of every file, the image overlap between the ShareGPT lists (by path) and, unless
    ``check_images`` is ``none``, the images every pair of files shares by content."""
    per_file = {ann.label: file_stats(ann, check_images) for ann in anns}
    lists = [label for label, s in per_file.items() if s["kind"] == "array"]
    sets = {label: per_file[label].pop("_images") for label in per_file}
    overlap = {
        "files": lists,
        "pairs": [{"a": a, "b": b, "shared_images": len(sets[a] & sets[b])} for a, b in combinations(lists, 2)],
        "shared_by_all": len(set.intersection(*(sets[x] for x in lists))) if lists else 0,
        "union_images": len(set().union(*(sets[x] for x in lists))) if lists else 0,
    }
    out = {"files": per_file, "overlap": overlap}
    if check_images != "none":
        out["content_duplicates"] = content_duplicates(
            {label: _readable_images(sets[label], per_file[label]["image_root"]) for label in per_file})
    return out


def render(stats: Dict[str, Any]) -> str:
    """Terminal tables of :func:`compute_stats` output."""
    rows = [[label, s["kind"], s["records"], s["unique_images"], s["malformed"], f"{100 * s['refusal_rate']:.1f}%",
             len(s["image_check"]["missing"]), len(s["image_check"]["undecodable"]),
             "/".join(f"{s['answer_words'][k]:.0f}" for k in ("p50", "p90", "p99", "max"))]
            for label, s in stats["files"].items()]
    out = [format_table(rows, ["file", "layout", "records", "images", "malformed", "refusals", "missing img",
                               "bad img", "answer words p50/p90/p99/max"])]
    for label, s in stats["files"].items():
        if s["sections"]:
            srows = [[name or "(unnamed)", v["records"], v["unique_images"], f"{100 * v['refusal_rate']:.1f}%",
                      "/".join(f"{v['answer_words'][k]:.0f}" for k in ("p50", "p90", "p99", "max"))]
                     for name, v in s["sections"].items()]
            out += ["", f"Sections of {label}:",
                    format_table(srows, ["section", "records", "images", "refusals", "answer words p50/p90/p99/max"])]
    ov = stats["overlap"]
    if len(ov["files"]) > 1:
        out += ["", "Image overlap between the ShareGPT lists (unique paths):"]
        out += [f"  {p['a']} & {p['b']}: {p['shared_images']}" for p in ov["pairs"]]
        out += [f"  shared by all: {ov['shared_by_all']}   union: {ov['union_images']}"]
    out += _render_content_duplicates(stats.get("content_duplicates"))
    for label, s in stats["files"].items():
        for kind in ("missing", "undecodable", "outside_root"):
            paths = s["image_check"][kind]
            if paths:
                what = "image path(s) outside the image root" if kind == "outside_root" else f"{kind} image(s)"
                out.append(f"{label}: {len(paths)} {what}, e.g. {', '.join(paths[:3])}")
    return "\n".join(out)


def _render_content_duplicates(dup: Any) -> List[str]:
    if not dup or not (any(p["shared_images"] for p in dup["pairs"]) or any(dup["within"].values())):
        return []
    rows = [[p["a"], p["b"], p["shared_images"], p["other_path"],
             "; ".join(f"{x} = {y}" for x, y in p["examples"][:1]) or "-"]
            for p in dup["pairs"] if p["shared_images"]]
    out = ["", "Images with the same bytes in two files (compared by content, whatever their paths):"]
    if rows:
        out.append(format_table(rows, ["file a", "file b", "shared images", "under another path", "e.g."]))
    out += [f"  {label}: {n} image path(s) repeat the bytes of another path in the same file"
            for label, n in dup["within"].items() if n]
    return out


def section_chart(stats: Dict[str, Any], path: str) -> str:
    """A horizontal bar chart (PNG) of records per section of every section file; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{name or '(unnamed)'}" + (f" [{label}]" if len(stats["files"]) > 2 else ""), v["records"])
            for label, s in stats["files"].items() for name, v in s["sections"].items()]
    bars += [(label, s["records"]) for label, s in stats["files"].items() if not s["sections"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.2))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="#4477aa")
    ax.set_xlabel("records")
    ax.set_title("Records per section / file")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
