"""Batch collation for FaceGPT dataset items (the contract in DESIGN.md).

``image`` tensors are stacked ``[B, 3, S, S]``; strings stay lists; ``conv_q``/``conv_a`` stay lists of lists;
``skipped`` is summed into one int. A batch that mixes single-turn and multi-turn items turns the single-turn
ones into one-turn conversations (``conv_q=[instruction_input]``, ``conv_a=[answer]``).

Skipped records: a dataset returns a :class:`SkippedSample` (or ``None``) for a record whose image is missing,
undecodable or outside the image root. The collater drops it, so the batch shrinks by one, and counts it in
``skipped``. When every item of a batch was skipped the result is an :class:`EmptyBatch` (not a dict, so
encoders pass it through untouched; :func:`is_empty_batch`), which the training loop passes over and counts.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Union

import torch

SINGLE_KEYS = ("instruction_input", "answer")
CONV_KEYS = ("conv_q", "conv_a")


class SkippedSample(NamedTuple):
    """What a dataset returns instead of an item whose image cannot be used (picklable for worker processes)."""

    dataset: str
    index: int
    image: str
    reason: str


class EmptyBatch(NamedTuple):
    """What collation returns when every item of a batch was skipped: nothing to train on, ``skipped`` items."""

    skipped: int


def is_skipped(sample: Any) -> bool:
    """Whether a dataset item is a skip marker (:class:`SkippedSample` or ``None``)."""
    return sample is None or isinstance(sample, SkippedSample)


def is_empty_batch(batch: Any) -> bool:
    """Whether a collated batch holds no sample (every item was skipped)."""
    return batch is None or isinstance(batch, EmptyBatch)


def _as_conversation(sample: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in sample.items() if k not in SINGLE_KEYS}
    out["conv_q"] = [sample["instruction_input"]]
    out["conv_a"] = [sample["answer"]]
    return out


def _collate_key(key: str, values: List[Any]) -> Any:
    if key == "skipped":
        return int(sum(int(v) for v in values))
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack(values)  # B x [...] -> [B, ...]
    return list(values)


def collate_samples(samples: List[Any]) -> Union[Dict[str, Any], EmptyBatch]:
    """Collate dataset items into a batch dict (see the module docstring); skip markers are dropped and counted."""
    if not samples:
        raise ValueError("collate_samples: empty batch")
    kept = [s for s in samples if not is_skipped(s)]
    dropped = len(samples) - len(kept)
    if not kept:
        return EmptyBatch(dropped)
    has_conv = any("conv_q" in s for s in kept)
    if has_conv and any("conv_q" not in s for s in kept):
        kept = [s if "conv_q" in s else _as_conversation(s) for s in kept]
    keys = list(kept[0])
    for i, s in enumerate(kept):
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise ValueError(f"collate_samples: item {i} has different keys from item 0 (differ: {diff}); "
                             "every item of a batch must come from the same item contract")
    batch = {k: _collate_key(k, [s[k] for s in kept]) for k in keys}
    batch["skipped"] = int(batch.get("skipped", 0)) + dropped
    return batch
