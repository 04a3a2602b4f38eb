"""Batch collation for FaceGPT dataset items (the contract in DESIGN.md).

``image`` tensors are stacked ``[B, 3, S, S]``; strings stay lists; ``conv_q``/``conv_a`` stay lists of lists;
``skipped`` is summed into one int. A batch that mixes single-turn and multi-turn items turns the single-turn
ones into one-turn conversations (``conv_q=[instruction_input]``, ``conv_a=[answer]``).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

SINGLE_KEYS = ("instruction_input", "answer")
CONV_KEYS = ("conv_q", "conv_a")


def _as_conversation(sample: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in sample.items() if k not in SINGLE_KEYS}
    out["conv_q"] = [sample["instruction_input"]]
    out["conv_a"] = [sample["answer"]]
    return out


def _collate_key(key: str, values: List[Any]) -> Any:
    if key == "skipped":
        return int(sum(int(v) for v in values))
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack(values)  # [B, ...]
    return list(values)


def collate_samples(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Collate dataset items into a batch dict (see the module docstring)."""
    if not samples:
        raise ValueError("collate_samples: empty batch")
    has_conv = any("conv_q" in s for s in samples)
    if has_conv and any("conv_q" not in s for s in samples):
        samples = [s if "conv_q" in s else _as_conversation(s) for s in samples]
    keys = list(samples[0])
    for i, s in enumerate(samples):
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise ValueError(f"collate_samples: item {i} has different keys from item 0 (differ: {diff}); "
                             "every item of a batch must come from the same item contract")
    return {k: _collate_key(k, [s[k] for s in samples]) for k in keys}
