"""``facegpt-data shards``: pack the face annotation files and their images into webdataset tar shards.

Records are read and checked by the builders' own reader (:func:`~minigpt4.datasets.records.parse_record`):

* malformed records are left out and counted (the builders' ``on_error: skip``); a shard builder with
  ``on_error: error`` refuses a shard set that left some out, as the JSON builder refuses the file;
* a record whose image is missing, undecodable or outside the image root is packed WITHOUT image bytes, with the
  reason (``image_error``): at train time it is skipped and counted exactly as the JSON path skips it;
* prompt-template sections (``Pre-Prompt``) are not samples; ``--sections`` picks FaceGPT4Vision sections.

Each shard is written to ``shard-NNNNNN.tar.tmp`` and renamed when complete, then described in
``OUT/.parts/shard-NNNNNN.json`` (its records, the stream positions it covers, counts). A re-run with the same inputs
and options keeps the finished shards (their records are not read again from disk) and goes on from the first
unfinished one; ``OUT/manifest.json`` is written last. Layout of a sample: :mod:`minigpt4.datasets.shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.datasets.records import Record, RecordError, duplicate_key, normalise_section, parse_record, where
from minigpt4.datasets.schemas import FieldMap
from minigpt4.datasets.shards import FORMAT, MANIFEST, SHARD_NAME
from minigpt4.datasets.splits import image_key
from minigpt4.processors.image_io import ImageOpenError, image_path_in_root, open_image
from minigpt4.tools.data_common import AnnFile, is_prompt_section, iter_file, progress, sections_of

logger = get_logger(__name__)

PARTS = ".parts"
TAR_BLOCK = 512
SKIP_KINDS = ("malformed", "duplicate_image", "outside_root", "missing", "undecodable")
EXAMPLES = 5
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class PackError(ValueError):
    """Bad input or options of ``facegpt-data shards`` (one line)."""


def parse_size(text: str) -> int:
    """``"1GB"``, ``"500MB"``, ``"64KiB"``, ``"1048576"`` → bytes."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise PackError(f"--shard-size {text!r}: expected a size such as 1GB, 500MB or 1048576")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    scale = base ** "bkmgt".index(unit[0]) if unit and unit[0] != "b" else 1
    size = int(number * scale)
    if size < 1:
        raise PackError(f"--shard-size {text!r} is below one byte")
    return size


@dataclass
class PackOptions:
    """What ``facegpt-data shards`` packs and how."""

    out: Path
    shard_size: int = 10**9
    sections: Sequence[str] = ()
    require_image_token: bool = False
    one_per_image: bool = False
    prompt_sections: Sequence[str] = ("Pre-Prompt",)


@dataclass
class ShardStats:
    """Counts of one shard (or of the whole set)."""

    records: int = 0
    image_bytes: int = 0
    sections: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def note_skip(self, kind: str, origin: str) -> None:
        self.skipped[kind] += 1
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(origin)

    def as_dict(self) -> Dict[str, Any]:
        return {"records": self.records, "image_bytes": self.image_bytes, "sections": dict(self.sections),
                "sources": dict(self.sources), "skipped": {k: self.skipped.get(k, 0) for k in SKIP_KINDS},
                "examples": self.examples}

    def add(self, other: Dict[str, Any]) -> None:
        self.records += other["records"]
        self.image_bytes += other["image_bytes"]
        self.sections.update(other["sections"])
        self.sources.update(other["sources"])
        self.skipped.update(other["skipped"])
        for kind, found in other.get("examples", {}).items():
            mine = self.examples.setdefault(kind, [])
            mine.extend(found[: EXAMPLES - len(mine)])


def _fingerprint(anns: Sequence[AnnFile], opts: PackOptions) -> Dict[str, Any]:
    """What a re-run must share with the run that wrote the finished shards."""
    inputs = []
    for ann in anns:
        st = os.stat(ann.path)
        inputs.append([os.path.abspath(ann.path), st.st_size, st.st_mtime_ns, os.path.abspath(ann.image_root)])
    return {"format": FORMAT, "inputs": inputs, "shard_size": opts.shard_size,
            "sections": sorted(normalise_section(s) for s in opts.sections),
            "require_image_token": opts.require_image_token, "one_per_image": opts.one_per_image,
            "prompt_sections": list(opts.prompt_sections)}


def _check_sections(anns: Sequence[AnnFile], wanted: Sequence[str], prompt_sections: Sequence[str]) -> None:
    if not wanted:
        return
    present = {s for a in anns if a.kind == "object" for s in sections_of(a)
               if not is_prompt_section(s, prompt_sections)}
    unknown = [w for w in wanted if normalise_section(w) not in present]
    if unknown:
        raise PackError(f"--sections {unknown}: not a sample section of any FaceGPT4Vision file; available: "
                        f"{sorted(present)}")


# --------------------------------------------------------------------------------------- the record stream
@dataclass
class Candidate:
    """One record in pack order: its stream position, parsed record (or the reason it is malformed)."""

    cursor: int
    ann: AnnFile
    section: str
    index: int
    raw: Any


def candidates(anns: Sequence[AnnFile], opts: PackOptions) -> Iterator[Candidate]:
    """Every sample record of the inputs in pack order (files, sections, records), numbered by ``cursor``."""
    wanted = {normalise_section(s) for s in opts.sections}
    cursor = 0
    for ann in anns:
        for section, index, raw in progress(iter_file(ann), f"shards {ann.label}"):
            if is_prompt_section(section, opts.prompt_sections):
                continue
            if wanted and ann.kind == "object" and section not in wanted:
                continue
            yield Candidate(cursor, ann, section, index, raw)
            cursor += 1


def _tar_size(payload: Dict[str, bytes]) -> int:
    """Bytes the members take in a tar (a 512-byte header each, data padded to 512)."""
    return sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for data in payload.values())


def _image_payload(cand: Candidate, image: str, delta: ShardStats, origin: str, decoded: Dict[str, str]
                   ) -> Tuple[Optional[bytes], str, str]:
    """``(bytes or None, extension, reason)`` of the record's image; a bad image is counted under its kind.
    ``decoded``: path -> decode problem ("" = fine) of the images checked so far."""
    try:
        path = image_path_in_root(cand.ann.image_root, image)
    except ImageOpenError as err:
        delta.note_skip("outside_root", origin)
        return None, "", str(err)
    try:
        with open(path, "rb") as fp:
            data = fp.read()
    except OSError:
        delta.note_skip("missing", origin)
        return None, "", f"image file not found: {path}"
    if path not in decoded:  # each distinct image is decoded once per run (records share images)
        try:
            open_image(path, target_size=32)  # a large JPEG at reduced size: the builders' check
            decoded[path] = ""
        except ImageOpenError as err:
            decoded[path] = str(err)
    if decoded[path]:
        delta.note_skip("undecodable", origin)
        return None, "", decoded[path]
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "img"
    return data, ext, ""


def _image_identity(cand: Candidate, rec: Record) -> str:
    """Which image a record names, for ``--one-per-image``: its path (normalised) under its file's image root."""
    return os.path.join(os.path.abspath(cand.ann.image_root), image_key(rec.image))


def parse(cand: Candidate, opts: PackOptions) -> Record:
    """The builders' parse of one record (:class:`RecordError` when malformed)."""
    return parse_record(cand.raw, FieldMap(), cand.ann.path, cand.index, cand.section, opts.require_image_token)


def sample_of(cand: Candidate, opts: PackOptions, seen: Optional[set], decoded: Dict[str, str]
              ) -> Tuple[Optional[Dict[str, bytes]], ShardStats, Optional[Record]]:
    """The tar members of one record (``None`` when it is left out), its counts (what is wrong with it) and the
    parsed record (``None`` when malformed)."""
    delta = ShardStats()
    try:
        rec = parse(cand, opts)
    except RecordError as err:
        delta.note_skip("malformed", str(err))
        return None, delta, None
    if seen is not None:
        key = _image_identity(cand, rec)
        if key in seen:
            delta.note_skip("duplicate_image", where(rec))
            return None, delta, rec
        seen.add(key)
    data, ext, reason = _image_payload(cand, rec.image, delta, where(rec), decoded)
    meta = {"image": rec.image, "image_id": rec.image_id, "questions": list(rec.questions),
            "answers": list(rec.answers), "section": rec.section, "source": rec.source, "index": rec.index,
            "has_image_token": rec.has_image_token}
    if reason:
        meta["image_error"] = reason
    payload = {"json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
    if data is not None:
        payload[ext] = data
        delta.image_bytes = len(data)
    delta.records = 1
    delta.sections[rec.section] += 1
    delta.sources[os.path.basename(rec.source)] += 1
    return payload, delta, rec


class DuplicateNotes:
    """Exact duplicate records per file (same image and turns as an earlier record): notes for the manifest, as
    the JSON builders log them. Holds one 8-byte hash and one position per distinct record."""

    def __init__(self) -> None:
        self.first: Dict[int, int] = {}
        self.counts: Counter = Counter()
        self.example = ""

    def add(self, rec: Record, cursor: int) -> None:
        digest = hashlib.blake2b(json.dumps(duplicate_key(rec)).encode("utf-8"), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        if key not in self.first:
            self.first[key] = cursor
            return
        self.counts[rec.source] += 1
        if not self.example:
            self.example = f"{where(rec)} repeats the record at pack position {self.first[key]}"


# ------------------------------------------------------------------------------------------- the writer
def _desc_name(k: int) -> str:
    return SHARD_NAME.format(k).replace(".tar", ".json")


class ShardPacker:
    """Writes shards one at a time (temporary name, renamed when complete) and describes each in ``.parts``."""

    def __init__(self, opts: PackOptions, fingerprint: Dict[str, Any]) -> None:
        self.opts, self.fingerprint = opts, fingerprint
        self.parts_dir = opts.out / PARTS
        if not self.parts_dir.is_dir() and any(opts.out.glob("shard-*.tar")):
            raise PackError(f"{opts.out} holds shard-*.tar files that facegpt-data shards did not write (no {PARTS}/ "
                            "folder beside them); they are left alone: use an empty or new --out folder")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.done: List[Dict[str, Any]] = self._finished_parts()
        self.index = len(self.done)
        self.resume_cursor = self.done[-1]["end_cursor"] if self.done else 0
        self.stats = ShardStats()  # of the shard being written (or of left-out records after the last one)
        self.start_cursor = self.resume_cursor
        self.size = 0
        self._file: Any = None
        self._writer: Any = None
        self._tmp: Optional[Path] = None

    def _finished_parts(self) -> List[Dict[str, Any]]:
        """The finished shards of an earlier run (a prefix 0..k-1); everything after it is removed."""
        (self.opts.out / MANIFEST).unlink(missing_ok=True)
        for tmp in self.opts.out.glob("*.tar.tmp"):
            tmp.unlink()
        done: List[Dict[str, Any]] = []
        while True:
            k = len(done)
            desc_path, shard = self.parts_dir / _desc_name(k), self.opts.out / SHARD_NAME.format(k)
            try:
                desc = json.loads(desc_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                break
            if desc.get("fingerprint") != self.fingerprint:
                raise PackError(f"{self.opts.out} holds shards packed from other inputs or options ({desc_path}); "
                                "use another --out, or delete the folder to re-pack")
            if not shard.is_file() or shard.stat().st_size != desc["bytes"]:
                break
            done.append(desc)
        for path in list(self.opts.out.glob("shard-*.tar")) + list(self.parts_dir.glob("shard-*.json")):
            if int(re.sub(r"\D", "", path.name.split(".")[0]) or 0) >= len(done):
                path.unlink()
        if done:
            logger.info("%s: %d finished shard(s) kept from an earlier run", self.opts.out, len(done))
        return done

    def add(self, cursor: int, payload: Optional[Dict[str, bytes]], delta: ShardStats) -> None:
        """Count one record; write its sample (closing the current shard first when it would pass the size)."""
        if payload is not None:
            nbytes = _tar_size(payload)
            if self._writer is not None and self.size + nbytes > self.opts.shard_size:
                self._close(end_cursor=cursor)
            if self._writer is None:
                self._open()
            self._writer.write({"__key__": f"{cursor:010d}", **payload})
            self.size += nbytes
        self.stats.add(delta.as_dict())

    def _open(self) -> None:
        import webdataset as wds

        self._tmp = self.opts.out / (SHARD_NAME.format(self.index) + ".tmp")
        self._file = open(self._tmp, "wb")
        self._writer = wds.TarWriter(self._file, mtime=0)  # an int: a float mtime adds a PAX header per member
        self.size = 2 * TAR_BLOCK  # the end-of-archive blocks

    def _close(self, end_cursor: int) -> None:
        """Finish the current shard: fsync, rename, then its description (records ``[start, end)`` of the stream)."""
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = SHARD_NAME.format(self.index)
        final = self.opts.out / name
        os.replace(self._tmp, final)  # type: ignore[arg-type]
        desc = {"name": name, "bytes": final.stat().st_size, "start_cursor": self.start_cursor,
                "end_cursor": end_cursor, "fingerprint": self.fingerprint, **self.stats.as_dict()}
        tmp = self.parts_dir / (_desc_name(self.index) + ".tmp")
        tmp.write_text(json.dumps(desc, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.parts_dir / _desc_name(self.index))
        self.done.append(desc)
        self.index += 1
        self.start_cursor = end_cursor
        self._writer = self._file = None
        self.stats = ShardStats()

    def finish(self, end_cursor: int) -> None:
        """Close the last shard; left-out records after it stay in :attr:`stats` (counted in the manifest)."""
        if self._writer is not None:
            self._close(end_cursor)


def pack(anns: Sequence[AnnFile], opts: PackOptions) -> Dict[str, Any]:
    """Write (or finish) the shard set of ``anns`` under ``opts.out``; returns the manifest."""
    if not anns:
        raise PackError("no annotation files to pack")
    opts.out.mkdir(parents=True, exist_ok=True)
    _check_sections(anns, opts.sections, opts.prompt_sections)
    fingerprint = _fingerprint(anns, opts)
    packer = ShardPacker(opts, fingerprint)
    seen: Optional[set] = set() if opts.one_per_image else None
    duplicates = DuplicateNotes()
    decoded: Dict[str, str] = {}
    end = 0
    for cand in candidates(anns, opts):
        end = cand.cursor + 1
        if cand.cursor < packer.resume_cursor:  # inside a finished shard: parsed again, no image is read
            try:
                rec: Optional[Record] = parse(cand, opts)
            except RecordError:
                rec = None
            if rec is not None and seen is not None:
                seen.add(_image_identity(cand, rec))
        else:
            payload, delta, rec = sample_of(cand, opts, seen, decoded)
            packer.add(cand.cursor, payload, delta)
        if rec is not None and seen is None:
            duplicates.add(rec, cand.cursor)
    packer.finish(end)
    return write_manifest(opts, packer.done, packer.stats, fingerprint, duplicates)


def write_manifest(opts: PackOptions, parts: List[Dict[str, Any]], rest: ShardStats, fingerprint: Dict[str, Any],
                   duplicates: DuplicateNotes) -> Dict[str, Any]:
    """``OUT/manifest.json``: totals, per-section and per-shard counts, left-out records, exact duplicates (kept,
    noted) (written atomically). ``rest``: left-out records after the last shard."""
    total = ShardStats()
    for part in parts + [rest.as_dict()]:
        total.add(part)
    shards = [{k: p[k] for k in ("name", "records", "bytes", "image_bytes", "sections", "sources")} for p in parts]
    last = len(parts) - 1
    manifest = {
        "format": FORMAT, "pattern": f"shard-{{000000..{last:06d}}}.tar" if parts else "",
        "shards": shards, "bytes": sum(p["bytes"] for p in parts), **total.as_dict(),
        "options": {k: v for k, v in fingerprint.items() if k != "inputs"},
        "inputs": [{"path": p, "image_root": r} for p, _, _, r in fingerprint["inputs"]],
        "exact_duplicates": dict(duplicates.counts), "exact_duplicate_example": duplicates.example,
    }
    manifest["sections"] = {k: v for k, v in manifest["sections"].items() if v}
    tmp = opts.out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, opts.out / MANIFEST)
    return manifest


def render(manifest: Dict[str, Any], out: Path) -> str:
    """The summary printed by the command."""
    lines = [f"{len(manifest['shards'])} shard(s), {manifest['records']} record(s), "
             f"{manifest['image_bytes'] / 1e6:.1f} MB of images, {manifest['bytes'] / 1e6:.1f} MB in tar files"]
    for section, n in sorted(manifest["sections"].items()):
        lines.append(f"  {section or '(ShareGPT list)'}: {n}")
    left_out = {k: v for k, v in manifest["skipped"].items() if v and k in ("malformed", "duplicate_image")}
    bad_images = {k: v for k, v in manifest["skipped"].items() if v and k not in left_out}
    if left_out:
        lines.append("left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left_out.items()))
    if bad_images:
        lines.append("packed without an image (skipped and counted at train time, as the JSON path does): "
                     + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad_images.items()))
    for kind, examples in manifest["examples"].items():
        if examples:
            lines.append(f"  first {kind.replace('_', ' ')}: {examples[0]}")
    duplicates = sum(manifest.get("exact_duplicates", {}).values())
    if duplicates:
        lines.append(f"kept {duplicates} exact duplicate record(s) (first: {manifest['exact_duplicate_example']}); "
                     "--one-per-image or facegpt-data clean removes them")
    lines.append(f"manifest: {out / MANIFEST}")
    if manifest["pattern"]:
        lines.append(f"config: build_info.shards: {out / manifest['pattern']}")
    return "\n".join(lines)
