"""Deterministic, resumable training loaders and the ``sample_ratio`` mixing of several datasets.

Upstream mixed datasets with ``MultiIterLoader``: each iteration picks ONE loader with probability
proportional to its ``sample_ratio`` (global ``random``) and takes a whole batch from it; each loader restarts
itself (a new shuffle) when exhausted. The same semantics here, but every choice is a pure function of
``(seed, iteration)`` and every loader knows its position, so a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would:

* :class:`ShardedSampler` — DistributedSampler-style: one permutation per pass (seeded by seed, loader and pass,
  identical on every rank), padded to a multiple of the world size, rank ``r`` takes every ``world_size``-th
  index from ``r``. The union of the ranks' k-th batches is then the k-th batch of a single process with
  ``world_size`` times the batch size.
* :class:`ResumableLoader` — an endless iterator over one dataset that counts ``(pass, batches)``. A *positioned*
  stream (a dataset with ``configure`` and ``batches_per_pass``: the webdataset shards of
  :mod:`minigpt4.datasets.shards`) splits itself by rank and loader worker, knows its length, and starts a pass at
  a batch position without re-reading what came before; other iterable datasets are re-read up to the position.
* :class:`MixingLoader` — picks the loader of each iteration from a hash of ``(seed, iteration)``; the choice is
  the same on every rank (so all ranks draw from the same dataset at each step).

DataLoaders get an explicit ``generator``: creating iterators then never touches the global torch RNG.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _uniform(seed: int, step: int) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, step)``."""
    return mix_seed(seed, step, 0x5EED) / 2**63


class ShardedSampler(Sampler[int]):
    """This rank's share of one pass over ``n`` items, starting ``start`` items into the share."""

    def __init__(self, n: int, *, rank: int, world_size: int, seed: int, pass_index: int, shuffle: bool,
                 start: int = 0) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed, self.pass_index, self.shuffle, self.start = seed, pass_index, shuffle, start
        self.per_rank = -(-n // world_size)  # ceil: DistributedSampler pads to a multiple of world_size

    def order(self) -> List[int]:
        """The whole pass on every rank, padded (DistributedSampler-style) to ``per_rank * world_size``."""
        if self.shuffle:
            gen = torch.Generator()
            gen.manual_seed(mix_seed(self.seed, self.pass_index))
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order

    def __iter__(self) -> Iterator[int]:
        mine = self.order()[self.rank:: self.world_size]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class ResumableLoader:
    """Endless batches from one dataset; ``state()`` / ``load_state()`` record the exact position.

    A pass ends when the sampler is exhausted (the last incomplete batch is dropped, as upstream's
    ``drop_last=True``); the next pass reshuffles with a new seed.
    """

    def __init__(self, name: str, dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int,
                 world_size: int, collate_fn: Optional[Callable[[List[Any]], Any]] = None,
                 pin_memory: bool = False, shuffle: bool = True) -> None:
        self.name, self.dataset, self.batch_size = name, dataset, int(batch_size)
        self.num_workers, self.seed, self.rank, self.world_size = int(num_workers), seed, rank, world_size
        self.collate_fn, self.pin_memory, self.shuffle = collate_fn, pin_memory, shuffle
        self.positioned = is_positioned(dataset)
        # iterable: a stream with no length that the runner cannot split by rank (re-read up to a position)
        self.iterable = isinstance(dataset, IterableDataset) and not self.positioned
        self.pass_index = 0
        self.batches = 0  # batches handed out in the current pass
        self._it: Optional[Iterator[Any]] = None
        if self.positioned and len(self) == 0:
            raise ValueError(f"dataset {name!r} has no sample (its shard manifest counts 0 records)")
        if not self.iterable and len(self) == 0:
            raise ValueError(
                f"dataset {name!r} has {len(dataset)} samples: fewer than one batch per rank "  # type: ignore[arg-type]
                f"(batch_size {batch_size} x world size {world_size}). Lower datasets.{name}.batch_size or add data.")

    def __len__(self) -> int:
        """Batches per pass on this rank (map-style datasets and positioned streams)."""
        if self.positioned:
            return int(self.dataset.batches_per_pass(self.batch_size, self.world_size,  # type: ignore[attr-defined]
                                                     self.num_workers))
        per_rank = -(-len(self.dataset) // self.world_size)  # type: ignore[arg-type]
        return per_rank // self.batch_size

    def _make_iterator(self) -> Iterator[Any]:
        gen = torch.Generator()
        gen.manual_seed(mix_seed(self.seed, self.pass_index, self.rank, 17))
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate_fn,
                      pin_memory=self.pin_memory, generator=gen, drop_last=True)
        if self.positioned:  # every sample once per pass (short last batch per worker), resumed without re-reading
            self.dataset.configure(rank=self.rank, world_size=self.world_size,  # type: ignore[attr-defined]
                                   num_workers=self.num_workers, seed=self.seed, pass_index=self.pass_index,
                                   start_batches=self.batches, batch_size=self.batch_size, shuffle=self.shuffle,
                                   pad=True)
            return iter(DataLoader(self.dataset, **{**common, "drop_last": False}))
        if self.iterable:
            it = iter(DataLoader(self.dataset, **common))
            for _ in range(self.batches):  # no random access: re-read up to the recorded position
                next(it)
            return it
        size = len(self.dataset)  # type: ignore[arg-type]
        sampler = ShardedSampler(size, rank=self.rank, world_size=self.world_size,
                                 seed=self.seed, pass_index=self.pass_index, shuffle=self.shuffle,
                                 start=self.batches * self.batch_size)
        return iter(DataLoader(self.dataset, sampler=sampler, **common))

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> Any:
        for _attempt in range(2):
            if self._it is None:
                self._it = self._make_iterator()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.pass_index += 1
                self.batches = 0
                continue
            self.batches += 1
            return batch
        raise RuntimeError(f"dataset {self.name!r} produced no batch in a whole pass (empty iterable dataset?)")

    def _layout(self) -> Dict[str, int]:
        """What a positioned stream's batch position depends on."""
        return {"world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size}

    def state(self) -> Dict[str, Any]:
        return {"name": self.name, "pass": self.pass_index, "batches": self.batches, **self._layout()}

    def load_state(self, state: Dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"loader state is for dataset {state['name']!r}, not {self.name!r}")
        self.pass_index, self.batches = int(state["pass"]), int(state["batches"])
        self._it = None
        if self.positioned and self.batches:
            saved = {k: int(state.get(k, -1)) for k in self._layout()}
            if saved != self._layout():
                logger.warning("dataset %s: the checkpoint was written with %s, this run has %s; the shard position "
                               "cannot be carried over, so pass %d starts again from its beginning", self.name,
                               saved, self._layout(), self.pass_index)
                self.batches = 0


class MixingLoader:
    """Each ``next()`` returns a whole batch from ONE loader, chosen with probability ∝ its ratio."""

    def __init__(self, loaders: Sequence[ResumableLoader], ratios: Sequence[float], seed: int) -> None:
        if len(loaders) != len(ratios) or not loaders:
            raise ValueError("MixingLoader needs one ratio per loader and at least one loader")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            names = ", ".join(f"{ld.name}={r}" for ld, r in zip(loaders, ratios))
            raise ValueError(f"sample_ratio values must be >= 0 with a positive sum; got {names}. "
                             "Set datasets.<name>.sample_ratio > 0 for at least one dataset.")
        self.loaders = list(loaders)
        self.ratios = [float(r) for r in ratios]
        total = sum(self.ratios)
        self._cumulative = []
        acc = 0.0
        for r in self.ratios:
            acc += r / total
            self._cumulative.append(acc)
        self.seed = seed
        self.step = 0
        self.last_name = ""

    def choose(self, step: int) -> int:
        """Index of the loader used at iteration ``step`` (a pure function of seed and step)."""
        active = [i for i, r in enumerate(self.ratios) if r > 0]
        if len(active) == 1:
            return active[0]
        index = bisect.bisect_right(self._cumulative, _uniform(self.seed, step))
        return min(index, len(self.loaders) - 1)

    def __iter__(self) -> "MixingLoader":
        return self

    def __next__(self) -> Any:
        loader = self.loaders[self.choose(self.step)]
        batch = next(loader)
        self.step += 1
        self.last_name = loader.name
        return batch

    def batches_per_pass(self) -> int:
        """Sum of the batches per pass of the loaders with a positive ratio (default ``iters_per_epoch``)."""
        return sum(len(ld) for ld, r in zip(self.loaders, self.ratios) if r > 0 and not ld.iterable)

    def state(self) -> Dict[str, Any]:
        return {"step": self.step, "loaders": [ld.state() for ld in self.loaders]}

    def load_state(self, state: Dict[str, Any]) -> None:
        names = [s["name"] for s in state["loaders"]]
        if names != [ld.name for ld in self.loaders]:
            raise ValueError(f"checkpoint was written with train datasets {names}, this run has "
                             f"{[ld.name for ld in self.loaders]}: the data position cannot be restored")
        self.step = int(state["step"])
        for loader, sub in zip(self.loaders, state["loaders"]):
            loader.load_state(sub)


def is_positioned(dataset: Any) -> bool:
    """Whether ``dataset`` is a stream that splits itself by rank and worker and starts at a batch position."""
    return isinstance(dataset, IterableDataset) and callable(getattr(dataset, "configure", None)) \
        and callable(getattr(dataset, "batches_per_pass", None))


def validation_loader(dataset: Dataset, *, batch_size: int, num_workers: int, rank: int, world_size: int,
                      collate_fn: Optional[Callable[[List[Any]], Any]] = None, pin_memory: bool = False,
                      seed: int = 0) -> DataLoader:
    """Sequential loader over this rank's share of ``dataset`` (no padding, no dropped samples): strided indices,
    or a positioned stream's contiguous slots in file order."""
    if is_positioned(dataset):
        dataset.configure(rank=rank, world_size=world_size, num_workers=num_workers,  # type: ignore[attr-defined]
                          seed=seed, pass_index=0, start_batches=0, batch_size=batch_size, shuffle=False, pad=False)
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                          pin_memory=pin_memory, drop_last=False)
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    gen = torch.Generator()
    gen.manual_seed(mix_seed(seed, rank, 23))
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory, generator=gen,
                      drop_last=False)


def batch_collater(dataset: Any, model: Any) -> Optional[Callable[[List[Any]], Any]]:
    """The loader ``collate_fn`` of ``dataset`` for ``model``: the dataset's ``collater``, then the model's sample
    encoder (token ids, labels, image slots), both in the data-loader worker. Datasets without a collater, or models
    without an encoder (test doubles), keep the plain collater."""
    from minigpt4.prompting import EncodingCollater

    collate = getattr(dataset, "collater", None)
    encoder = getattr(model, "sample_encoder", None)
    if collate is None or encoder is None:
        return collate
    return EncodingCollater(collate, encoder)


def move_to_device(samples: Any, device: torch.device) -> Any:
    """Tensors (inside dicts/lists) onto ``device``; strings and numbers unchanged."""
    if isinstance(samples, torch.Tensor):
        return samples.to(device, non_blocking=True)
    if isinstance(samples, dict):
        return {k: move_to_device(v, device) for k, v in samples.items()}
    if isinstance(samples, list):
        return [move_to_device(v, device) for v in samples]
    return samples

