"""Image identity across the datasets of a run: held-out images stay out of every training split.

Two records show the same image when the image files hold the same bytes (:func:`content_key`, a sha256 of the
file), whatever their paths. The checks are ordered from cheap to dear, so that start-up stays cheap for a
million records: equal normalised absolute paths match at once; otherwise only a file whose size equals the size
of a held-out image is read, first its head (:data:`HEAD_BYTES`), and it is hashed whole only when that head
equals the head of a held-out image of its size. So the cost is one ``stat`` per distinct training image plus a
small read per size collision; heads and hashes are cached per ``(path, size, mtime)``.

:func:`hold_out_across_datasets` runs after every builder of a run has built its splits: every split other than
``train`` is held out, and every training record whose image equals (by content) a held-out image of *any*
dataset of the run is removed from its training split. What was removed is returned as a :class:`HeldOutReport`
(and logged). Which records go depends only on the sets of images, never on record order, so the result is the
same on every rank and every run.

:func:`training_overlap` answers the evaluation's question the other way round: which of these image files were
seen in training under the config's datasets (after the cross-dataset step)?
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.processors.image_io import ImagePathError

logger = get_logger(__name__)

TRAIN_SPLIT = "train"
MAX_EXAMPLES = 5
HEAD_BYTES = 4096  # files of one size are first compared by their first bytes; only equal heads are hashed whole
_CHUNK = 1 << 20
_HASHES: Dict[Tuple[str, int, int], str] = {}
_HEADS: Dict[Tuple[str, int, int], bytes] = {}


def normalised_path(path: str) -> str:
    """How two image paths are compared before any bytes are read (absolute, ``normpath``, ``normcase``)."""
    return os.path.normcase(os.path.abspath(path))


def _cache_key(path: str) -> Tuple[str, int, int]:
    st = os.stat(path)
    return normalised_path(path), st.st_size, st.st_mtime_ns


def head_key(path: str) -> bytes:
    """A digest of the first :data:`HEAD_BYTES` bytes of the file (one small read), cached like
    :func:`content_key`. Files of equal size whose heads differ differ; equal heads say nothing yet."""
    key = _cache_key(path)
    cached = _HEADS.get(key)
    if cached is None:
        with open(path, "rb") as fp:
            cached = _HEADS[key] = hashlib.sha256(fp.read(HEAD_BYTES)).digest()
    return cached


def content_key(path: str) -> str:
    """Hex sha256 of the bytes of the file at ``path``, cached per ``(path, size, mtime)``.

    Raises ``OSError`` when the file cannot be read.
    """
    key = _cache_key(path)
    cached = _HASHES.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            for chunk in iter(lambda: fp.read(_CHUNK), b""):
                digest.update(chunk)
        cached = _HASHES[key] = digest.hexdigest()
    return cached


def hashed_paths() -> List[str]:
    """Paths hashed whole so far in this process (the cache of :func:`content_key`), for diagnostics and tests."""
    return sorted({key[0] for key in _HASHES})


def read_paths() -> List[str]:
    """Paths whose bytes were read so far in this process (head or whole), for diagnostics and tests."""
    return sorted({key[0] for key in _HEADS} | {key[0] for key in _HASHES})


def _split_by(paths: List[str], key_of: Any) -> List[List[str]]:
    """``paths`` grouped by ``key_of(path)``; unreadable files are left out."""
    groups: Dict[Any, List[str]] = {}
    for path in paths:
        try:
            groups.setdefault(key_of(path), []).append(path)
        except OSError:
            continue
    return list(groups.values())


def identity_keys(paths: Iterable[str]) -> Dict[str, str]:
    """``{normalised path: identity}`` for every readable file of ``paths``: two get equal identities exactly when
    their bytes are equal. Files are grouped by size, then by :func:`head_key`; only files that still share a
    group are hashed whole (``sha256:<hex>``); any other file is its own identity (``path:<normalised path>``).
    Unreadable files are left out."""
    keys: Dict[str, str] = {}
    for by_size in _split_by(sorted({normalised_path(p) for p in paths}), lambda p: os.stat(p).st_size):
        heads = _split_by(by_size, head_key) if len(by_size) > 1 else [by_size]
        for group in heads:
            if len(group) == 1:
                keys[group[0]] = f"path:{group[0]}"
                continue
            for path in group:
                try:
                    keys[path] = f"sha256:{content_key(path)}"
                except OSError:
                    continue
    return keys


def _size(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class ImageIndex:
    """A set of image files, each labelled with where it comes from, queried by path and then by content.

    Only the paths and sizes are read when the index is built. A queried file of an indexed size is compared by
    :func:`head_key` with the indexed files of that size (their heads read once), and hashed whole only when a
    head is equal.
    """

    def __init__(self, entries: Iterable[Tuple[str, str]]) -> None:
        """``entries``: ``(path, label)`` pairs; the first label of a path is kept."""
        self.by_path: Dict[str, Tuple[str, str]] = {}
        self.by_size: Dict[int, List[str]] = {}
        self.unreadable: List[str] = []
        self._by_head: Dict[int, Dict[bytes, List[str]]] = {}
        for path, label in entries:
            norm = normalised_path(path)
            if norm in self.by_path:
                continue
            self.by_path[norm] = (path, label)
            size = _size(path)
            if size is None:
                self.unreadable.append(path)
            else:
                self.by_size.setdefault(size, []).append(norm)

    def __len__(self) -> int:
        return len(self.by_path)

    def _heads(self, size: int) -> Dict[bytes, List[str]]:
        """Head digest → indexed files of ``size`` bytes (heads read once)."""
        if size not in self._by_head:
            bucket: Dict[bytes, List[str]] = {}
            for norm in sorted(self.by_size.get(size, ())):  # sorted: the first entry of a hash is order-free
                try:
                    bucket.setdefault(head_key(self.by_path[norm][0]), []).append(norm)
                except OSError:
                    self.unreadable.append(self.by_path[norm][0])
            self._by_head[size] = bucket
        return self._by_head[size]

    def _same_bytes(self, path: str) -> List[Tuple[str, str]]:
        """Indexed entries whose file holds the bytes of ``path`` (empty when it cannot be read)."""
        size = _size(path)
        if size is None or size not in self.by_size:
            return []
        try:
            candidates = self._heads(size).get(head_key(path), [])
            wanted = content_key(path) if candidates else None
        except OSError:
            return []
        out = []
        for norm in candidates:
            try:
                if content_key(self.by_path[norm][0]) == wanted:
                    out.append(self.by_path[norm])
            except OSError:
                continue
        return out

    def match(self, path: str) -> Optional[Tuple[str, str, str]]:
        """``(how, indexed path, its label)`` when ``path`` is an indexed image (``how`` = ``"path"`` or
        ``"content"``), else None. A file that cannot be read matches by path only."""
        hit = self.by_path.get(normalised_path(path))
        if hit is not None:
            return ("path",) + hit
        same = self._same_bytes(path)
        return ("content",) + same[0] if same else None

    def all_matches(self, path: str) -> List[str]:
        """Every indexed path equal to ``path``: by path, and every file with its bytes."""
        hit = self.by_path.get(normalised_path(path))
        out = [hit[0]] if hit is not None else []
        return out + [p for p, _ in self._same_bytes(path) if hit is None or p != hit[0]]


def record_image_paths(dataset: Any) -> Optional[List[Optional[str]]]:
    """Full image path of every record of a map-style dataset (None for a path outside its image root), or None
    when the dataset does not list its records (``annotation`` + ``image_path``, e.g. a stream of shards)."""
    if not isinstance(getattr(dataset, "annotation", None), list) or not hasattr(dataset, "image_path"):
        return None
    rel_of = getattr(dataset, "image_rel", None)
    resolved: Dict[str, Optional[str]] = {}  # path as written -> full path (records share images)
    paths: List[Optional[str]] = []
    for index in range(len(dataset.annotation)):
        rel = rel_of(index) if rel_of is not None else None
        if rel is None or rel not in resolved:
            try:
                full: Optional[str] = dataset.image_path(index)
            except ImagePathError:
                full = None  # never opened: the dataset skips it at train time
            if rel is None:
                paths.append(full)
                continue
            resolved[rel] = full
        paths.append(resolved[rel])
    return paths


@dataclass
class DatasetRemoval:
    """What the cross-dataset step removed from one training split."""

    records_before: int = 0
    records_removed: int = 0
    images_removed: int = 0
    by_path: int = 0  # images whose normalised path is a held-out image's path
    by_content: int = 0  # images with another path but the bytes of a held-out image
    held_out_by: Dict[str, int] = field(default_factory=dict)  # images removed per dataset holding them out
    examples: List[Dict[str, str]] = field(default_factory=list)


@dataclass
class HeldOutReport:
    """The result of :func:`hold_out_across_datasets` (``as_dict()`` is JSON-ready)."""

    held_out_images: Dict[str, int] = field(default_factory=dict)  # distinct held-out images per dataset
    unreadable_held_out: int = 0  # held-out images that could not be read (compared by path only)
    removed: Dict[str, DatasetRemoval] = field(default_factory=dict)
    unchecked: List[str] = field(default_factory=list)  # splits that do not list their records

    @property
    def records_removed(self) -> int:
        return sum(r.records_removed for r in self.removed.values())

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["records_removed"] = self.records_removed
        return out

    def summary_lines(self) -> List[str]:
        """One line per training split, for the log and the command-line tools."""
        lines = []
        for name, r in self.removed.items():
            sources = ", ".join(f"{k}: {v}" for k, v in sorted(r.held_out_by.items())) or "none"
            lines.append(f"{name}: removed {r.records_removed} of {r.records_before} training record(s) "
                         f"({r.images_removed} image(s): {r.by_path} by path, {r.by_content} by content; "
                         f"held out by {sources})")
        return lines


def _held_out_index(datasets: Dict[str, Dict[str, Any]], report: HeldOutReport) -> ImageIndex:
    entries: List[Tuple[str, str]] = []
    for name, splits in datasets.items():
        for split, ds in splits.items():
            if split == TRAIN_SPLIT:
                continue
            paths = record_image_paths(ds)
            if paths is None:
                report.unchecked.append(f"{name}.{split}")
                continue
            mine = {p for p in paths if p is not None}
            report.held_out_images[name] = report.held_out_images.get(name, 0) + len(mine)
            entries.extend((p, name) for p in sorted(mine))
    index = ImageIndex(entries)
    report.unreadable_held_out = len(index.unreadable)
    return index


def _remove_from_train(name: str, ds: Any, index: ImageIndex, report: HeldOutReport) -> None:
    paths = record_image_paths(ds)
    if paths is None:
        report.unchecked.append(f"{name}.{TRAIN_SPLIT}")
        return
    removal = DatasetRemoval(records_before=len(paths))
    verdict: Dict[str, Optional[Tuple[str, str, str]]] = {}
    for path in sorted({p for p in paths if p is not None}):
        verdict[path] = hit = index.match(path)
        if hit is None:
            continue
        how, held_path, held_by = hit
        removal.images_removed += 1
        removal.by_path += how == "path"
        removal.by_content += how == "content"
        removal.held_out_by[held_by] = removal.held_out_by.get(held_by, 0) + 1
        if len(removal.examples) < MAX_EXAMPLES:
            removal.examples.append({"train": path, "held_out": held_path, "held_out_by": held_by, "match": how})
    keep = [p is None or verdict[p] is None for p in paths]
    removal.records_removed = keep.count(False)
    if removal.records_removed:
        ds.annotation = [rec for rec, k in zip(ds.annotation, keep) if k]
    report.removed[name] = removal


def hold_out_across_datasets(datasets: Dict[str, Dict[str, Any]]) -> HeldOutReport:
    """Remove, from the ``train`` split of every dataset, the records whose image equals (by path, else by
    content) an image of any other split of any dataset; ``datasets`` is ``{name: {split: dataset}}`` and is
    changed in place. Returns (and logs) what was removed."""
    report = HeldOutReport()
    index = _held_out_index(datasets, report)
    for name, splits in datasets.items():
        if TRAIN_SPLIT in splits and len(index):
            _remove_from_train(name, splits[TRAIN_SPLIT], index, report)
    for line in report.summary_lines():
        logger.info("held out across datasets: %s", line)
    if report.unreadable_held_out:
        logger.warning("held out across datasets: %d held-out image(s) could not be read; they are compared by "
                       "path only", report.unreadable_held_out)
    if report.unchecked and (len(index) or any(not u.endswith(f".{TRAIN_SPLIT}") for u in report.unchecked)):
        logger.warning("held out across datasets: %s stream(s) records without listing them (shards), so images "
                       "there are not compared by content; pack train and val shard sets from files split by "
                       "image (facegpt-data split) and check cross-dataset copies with facegpt-data stats",
                       ", ".join(report.unchecked))
    return report


def build_run_datasets(cfg: Any) -> Tuple[Dict[str, Dict[str, Any]], HeldOutReport]:
    """Every dataset of ``cfg.datasets`` built by its registered builder, then :func:`hold_out_across_datasets`."""
    from minigpt4.common.registry import registry  # the builders register themselves on ``import minigpt4``

    datasets = {name: registry.get_builder_class(name)(dataset_cfg).build_datasets()
                for name, dataset_cfg in cfg.datasets.items()}
    return datasets, hold_out_across_datasets(datasets)


def training_images(datasets: Dict[str, Dict[str, Any]]) -> List[Tuple[str, str]]:
    """``(full image path, dataset name)`` of every record of every ``train`` split that lists its records."""
    out: List[Tuple[str, str]] = []
    for name, splits in datasets.items():
        if TRAIN_SPLIT not in splits:
            continue
        paths = record_image_paths(splits[TRAIN_SPLIT])
        if paths is None:
            logger.warning("%s.%s streams its records (shards): its images are not compared", name, TRAIN_SPLIT)
            continue
        out.extend((p, name) for p in sorted({p for p in paths if p is not None}))
    return out


def training_overlap(cfg: Any, image_paths: Sequence[str],
                     datasets: Optional[Dict[str, Dict[str, Any]]] = None) -> List[str]:
    """The paths among ``image_paths`` whose file equals (by path, else by content) an image of a training split
    of the config's datasets, after the cross-dataset held-out step; in the order given.

    ``datasets`` (``{name: {split: dataset}}`` from ``task.build_datasets``) saves building them again.
    """
    if datasets is None:
        datasets, _ = build_run_datasets(cfg)
    queries = ImageIndex((p, p) for p in image_paths)
    seen = set()
    for path, _name in training_images(datasets):
        seen.update(normalised_path(p) for p in queries.all_matches(path))
    return [p for p in image_paths if normalised_path(p) in seen]
