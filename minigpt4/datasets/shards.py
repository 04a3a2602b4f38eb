"""Webdataset tar shards of the face data: the layout, the manifest, and :class:`ShardDataset` (the reader).

``facegpt-data shards`` (:mod:`minigpt4.tools.data_shards`) writes ``OUT/shard-000000.tar ...`` and
``OUT/manifest.json``. One sample per record, under the key ``%010d`` (the record's position in the packed stream):

* ``<key>.<ext>`` — the image file's bytes as stored (``jpg``, ``png``, ...); absent when the image could not be
  used at packing time (missing, undecodable, outside the image root): the sample then carries ``image_error``
  and is skipped and counted at train time, exactly as the JSON path skips such a record;
* ``<key>.json`` — the parsed record: ``image`` (the path as written in the data), ``image_id``, ``questions``
  (``<image>`` removed), ``answers``, ``section``, ``source`` (the annotation file), ``index`` (the record's
  index in its file or section), ``has_image_token`` and, for a bad image, ``image_error``.

Reading never lists the records: start-up reads the manifest (one count per shard) and nothing else.

How one pass is divided (every rank and worker computes the same thing from the manifest):

1. the shards are put in a seeded order (``mix_seed(seed, pass)``; the file order without shuffling);
2. the samples of the shards in that order form one stream of ``N`` positions, cut into ``S = ranks x workers``
   contiguous slots of ``floor(N/S)`` or ``ceil(N/S)`` samples; slot ``rank * workers + worker`` is read by that
   worker (whole shards inside a slot are read by it alone; a shard on a slot border is read in two parts);
3. training pads each slot to ``ceil(N/S)`` with the next position of the stream (wrapping at the end), so every
   worker of every rank yields the same number of samples and batches; that is at most ``S - 1`` repeated
   samples per pass (as ``DistributedSampler`` pads). Validation does not pad;
4. inside each shard's part the samples go through a seeded buffer shuffle (``shuffle_buffer`` samples, seeded by
   seed, pass and shard) before anything is decoded.

A slot can start ``k`` samples in (a resumed run): parts that end before ``k`` are not opened; in the part where
``k`` falls the tar is read but only the samples from ``k`` on are decoded.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from braceexpand import braceexpand
from PIL import Image, ImageOps
from torch.utils.data import IterableDataset, get_worker_info

from minigpt4.common.logger import get_logger, log_once
from minigpt4.datasets.datasets.base_dataset import check_max_turns, conversation_item, prepare_record
from minigpt4.datasets.datasets.collate import SkippedSample, collate_samples
from minigpt4.datasets.records import Record, where
from minigpt4.processors.image_io import ImageOpenError, check_alpha, draft_size, to_rgb

logger = get_logger(__name__)

MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = 1
JSON_FIELD = "json"
META_FIELDS = ("__key__", "__url__", "__local_path__", JSON_FIELD)
DEFAULT_SHUFFLE_BUFFER = 64


class ShardError(ValueError):
    """Shards or their manifest cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------- manifest
def expand_shard_spec(spec: Union[str, Sequence[str]]) -> List[str]:
    """``"OUT/shard-{000000..000003}.tar"`` (brace expansion; or a list of such) → the shard paths in order."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    paths = [p for s in specs for p in braceexpand(str(s))]
    if not paths:
        raise ShardError(f"build_info.shards {spec!r} names no file; expected e.g. 'OUT/shard-{{000000..000009}}.tar'")
    return paths


def read_manifest(folder: Union[str, Path]) -> Dict[str, Any]:
    """``folder/manifest.json`` as written by ``facegpt-data shards``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: no shard manifest (the shards are not finished, or were not written by "
                         "facegpt-data shards). Fix: run `facegpt-data shards --root DIR --out "
                         f"{Path(folder)}` (it resumes where it stopped)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable manifest ({err}). Fix: delete it and re-run facegpt-data shards"
                         ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "shards" not in manifest:
        raise ShardError(f"{path}: not a FaceGPT shard manifest of format {FORMAT}. Fix: re-pack with "
                         "facegpt-data shards")
    return manifest


@dataclass(frozen=True)
class ShardSet:
    """The shards named by a config (in the given order), their record counts and their manifest."""

    paths: Tuple[str, ...]
    counts: Tuple[int, ...]
    manifest: Dict[str, Any]

    @property
    def total(self) -> int:
        return sum(self.counts)


def open_shard_set(spec: Union[str, Sequence[str]], key: str = "build_info.shards") -> ShardSet:
    """Expand ``spec``, check every shard exists and is in its folder's manifest; reads nothing else."""
    paths = expand_shard_spec(spec)
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if len(folders) != 1:
        raise ShardError(f"{key}: the shards lie in {len(folders)} folders ({sorted(folders)[:3]}); one shard set "
                         "is one folder with its manifest.json")
    folder = folders.pop()
    manifest = read_manifest(folder)
    by_name = {s["name"]: s for s in manifest["shards"]}
    counts = []
    for path in paths:
        name = os.path.basename(path)
        if name not in by_name:
            raise ShardError(f"{key}: {path} is not in {os.path.join(folder, MANIFEST)} (it lists "
                             f"{len(by_name)} shards, {manifest['shards'][0]['name'] if by_name else 'none'} ...). "
                             f"Fix: set {key} to {os.path.join(folder, manifest.get('pattern', ''))!r}")
        if not os.path.isfile(path):
            raise ShardError(f"{key}: shard file not found: {path} (listed in the manifest). Fix: copy the whole "
                             "shard folder, or re-run facegpt-data shards")
        counts.append(int(by_name[name]["records"]))
    return ShardSet(tuple(paths), tuple(counts), manifest)


# ------------------------------------------------------------------------------------ dividing a pass
@dataclass(frozen=True)
class Part:
    """Samples ``[start, stop)`` of shard ``shard`` (index into the shard list)."""

    shard: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def stable_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same in every process (the loaders' ``mix_seed`` rule)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def shard_order(n_shards: int, seed: int, pass_index: int, shuffle: bool) -> List[int]:
    """The order of the shards in pass ``pass_index``: a seeded permutation (same on every rank), or file order."""
    if not shuffle:
        return list(range(n_shards))
    gen = torch.Generator()
    gen.manual_seed(stable_seed(seed, pass_index, 0x5A4D))
    return torch.randperm(n_shards, generator=gen).tolist()


def slot_bounds(total: int, slot: int, slots: int, pad: bool) -> Tuple[int, int]:
    """``[start, stop)`` stream positions of ``slot`` (``stop`` may pass ``total``: padding wraps around)."""
    start = slot * total // slots
    stop = start + math.ceil(total / slots) if pad else (slot + 1) * total // slots
    return start, stop


def slot_parts(counts: Sequence[int], order: Sequence[int], slot: int, slots: int, pad: bool) -> List[Part]:
    """The shard parts slot ``slot`` of ``slots`` reads, in stream order (see the module docstring)."""
    total = sum(counts)
    if total == 0:
        return []
    starts = [0]  # stream position where each shard of ``order`` begins
    for shard in order:
        starts.append(starts[-1] + counts[shard])
    start, stop = slot_bounds(total, slot, slots, pad)
    parts: List[Part] = []
    position = start
    while position < stop:
        offset = position % total  # a padded slot may wrap around to the stream's start
        k = bisect.bisect_right(starts, offset) - 1
        while counts[order[k]] == 0:  # empty shards hold no position
            k += 1
        shard, begin = order[k], offset - starts[k]
        take = min(counts[shard] - begin, stop - position)
        parts.append(Part(shard, begin, begin + take))
        position += take
    return parts


def samples_per_slot(total: int, slots: int) -> int:
    """Samples every (padded) training slot yields per pass."""
    return math.ceil(total / slots) if total else 0


def worker_batches_done(batches: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` had produced when the loader had handed out ``batches`` (round robin)."""
    return max(0, -(-(batches - worker) // workers))


def buffer_shuffle(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A streaming buffer shuffle of ``items`` (``size`` <= 1: unchanged order)."""
    if size <= 1:
        yield from items
        return
    buffer: List[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


# ------------------------------------------------------------------------------------------ decoding
def open_image_bytes(data: bytes, origin: str, target_size: Optional[int] = None, fast_decode: bool = True,
                     alpha: str = "white") -> Image.Image:
    """Decode stored image bytes as upright 8-bit RGB, exactly as ``image_io.open_image`` opens the file."""
    check_alpha(alpha)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if fast_decode and target_size and img.format == "JPEG":
                img.draft("RGB", draft_size(target_size))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return to_rgb(img, alpha)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageOpenError(f"cannot decode image {origin}: {type(err).__name__}: {err}") from err


def record_of(meta: Dict[str, Any]) -> Record:
    """The :class:`Record` a shard sample's JSON holds."""
    return Record(meta["image"], str(meta["image_id"]), tuple(meta["questions"]), tuple(meta["answers"]),
                  meta.get("section", ""), meta.get("source", ""), int(meta.get("index", 0)),
                  bool(meta.get("has_image_token", True)))


def _image_field(sample: Dict[str, Any]) -> Optional[str]:
    fields = [k for k in sample if k not in META_FIELDS]
    return fields[0] if fields else None


# ------------------------------------------------------------------------------------------ the dataset
class ShardDataset(IterableDataset):
    """Face samples streamed from tar shards; same items, processors, text pipeline and skips as the JSON path.

    The loader calls :meth:`configure` before each pass (rank, world size, workers, seed, pass, position);
    :meth:`batches_per_pass` tells it how long a pass is. Items: see
    :func:`~minigpt4.datasets.datasets.base_dataset.conversation_item`; a bad image gives a
    :class:`SkippedSample` (or raises with ``strict_images``).
    """

    def __init__(self, shards: ShardSet, vis_processor: Any, text_processor: Any = None, *, name: str = "shards",
                 max_turns: Optional[int] = None, strict_images: bool = False, shuffle: bool = True,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, pad: bool = True) -> None:
        super().__init__()
        check_max_turns(max_turns, name)
        self.shards, self.name = shards, name
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.max_turns, self.strict_images = max_turns, strict_images
        self.shuffle, self.shuffle_buffer, self.pad = shuffle, int(shuffle_buffer), pad
        self.sample_ratio = 1.0
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self.seed, self.pass_index, self.start_batches, self.batch_size = 0, 0, 0, 1

    # -- what the loader needs -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Records in the shard set (one unpadded pass over every rank)."""
        return self.shards.total

    def configure(self, *, rank: int, world_size: int, num_workers: int, seed: int, pass_index: int,
                  start_batches: int = 0, batch_size: int = 1, shuffle: Optional[bool] = None,
                  pad: Optional[bool] = None) -> None:
        """Position of the next ``iter()`` (set in the main process, before the loader starts its workers)."""
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.seed, self.pass_index = int(seed), int(pass_index)
        self.start_batches, self.batch_size = int(start_batches), int(batch_size)
        if shuffle is not None:
            self.shuffle = bool(shuffle)
        if pad is not None:
            self.pad = bool(pad)

    def batches_per_pass(self, batch_size: int, world_size: int, num_workers: int) -> int:
        """Batches each rank's loader yields in one padded pass (the last batch of each worker may be short)."""
        workers = max(1, num_workers)
        per_slot = samples_per_slot(self.shards.total, world_size * workers)
        return workers * math.ceil(per_slot / batch_size)

    def collater(self, samples: List[Any]) -> Any:
        """Batch items per the contract (:func:`collate_samples`)."""
        return collate_samples(samples)

    # -- iteration ----------------------------------------------------------------------------------------
    def _slot(self) -> Tuple[int, int, int, int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(1, self.num_workers):
            raise RuntimeError(f"{self.name}: configured for {self.num_workers} loader workers but runs in "
                               f"{workers}; call configure() with the DataLoader's num_workers")
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def parts(self, slot: int, slots: int) -> List[Part]:
        """The shard parts of ``slot`` in this pass."""
        order = shard_order(len(self.shards.counts), self.seed, self.pass_index, self.shuffle)
        return slot_parts(self.shards.counts, order, slot, slots, self.pad)

    def __iter__(self) -> Iterator[Any]:
        slot, slots, worker, workers = self._slot()
        skip = worker_batches_done(self.start_batches, worker, workers) * self.batch_size
        for part in self.parts(slot, slots):
            if skip >= part.size:  # finished before the resumed position: never opened
                skip -= part.size
                continue
            for n, sample in enumerate(self._read_part(part)):
                if n >= skip:
                    yield self._item(sample)
            skip = 0

    def _read_part(self, part: Part) -> Iterator[Dict[str, Any]]:
        """The raw (undecoded) samples of one part, streamed through a buffer shuffle seeded by (seed, pass, shard,
        start); at most ``shuffle_buffer`` samples are held."""
        samples = self._part_samples(part)
        if not self.shuffle:
            return samples
        rng = random.Random(stable_seed(self.seed, self.pass_index, part.shard, part.start))
        return buffer_shuffle(samples, self.shuffle_buffer, rng)

    def _part_samples(self, part: Part) -> Iterator[Dict[str, Any]]:
        import webdataset as wds

        url = self.shards.paths[part.shard]
        stream = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
        n = 0
        for n, sample in enumerate(stream, start=1):
            if n > part.start:
                yield sample
            if n >= part.stop:
                return
        raise ShardError(f"{url}: holds {n} samples, its manifest says {self.shards.counts[part.shard]}. Fix: re-pack "
                         "(the file was changed or truncated after packing)")

    def _item(self, sample: Dict[str, Any]) -> Union[Dict[str, Any], SkippedSample]:
        url = sample.get("__url__", "?")
        try:
            meta = json.loads(sample[JSON_FIELD])
            rec = record_of(meta)
        except (KeyError, TypeError, ValueError) as err:
            raise ShardError(f"{url} sample {sample.get('__key__')}: unreadable record JSON ({err}). Fix: re-pack "
                             "with facegpt-data shards") from None
        origin = f"{where(rec)} (shard {os.path.basename(url)})"
        try:
            image = self._image(sample, meta, origin)
        except ImageOpenError as err:
            if self.strict_images:
                raise type(err)(f"{origin}: {err} (strict_images is on; set strict_images: false to skip such "
                                "records)") from None
            log_once(logger, f"bad-image:{rec.image}", "%s: skipping %s: %s", self.name, origin, err)
            return SkippedSample(self.name, rec.index, rec.image, str(err))
        rec, _ = prepare_record(rec, self.max_turns, self.text_processor)
        item = conversation_item(rec, image)
        item["skipped"] = 0
        return item

    def _image(self, sample: Dict[str, Any], meta: Dict[str, Any], origin: str) -> torch.Tensor:
        if meta.get("image_error"):
            raise ImageOpenError(str(meta["image_error"]))
        field = _image_field(sample)
        if field is None:
            raise ImageOpenError(f"no image bytes in the shard for {origin}")
        if self.vis_processor is None:
            raise RuntimeError(f"{self.name}: no vis_processor set; name one under vis_processor.train in the config")
        proc = self.vis_processor
        image = open_image_bytes(sample[field], meta["image"], getattr(proc, "image_size", None),
                                 getattr(proc, "fast_decode", True), getattr(proc, "alpha", "white"))
        return proc(image)

    def section_counts(self) -> Dict[str, int]:
        """Records per section, from the manifest (over the whole shard set)."""
        return dict(self.shards.manifest.get("sections", {}))
