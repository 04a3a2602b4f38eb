"""Features of a frozen vision tower, kept per image (``model.vit_feature_cache_mb``).

A frozen tower (``model.freeze_vit``, eval mode, no gradient) maps the same pixels to the same features, and face
fine-tunes show it the same pixels again and again: FaceGPT4Vision asks several questions about every image, small
sets run several epochs, and ShareGPT_Face and FaceGPT4Vision share images. :class:`FeatureCache` keeps the
features after ``ln_vision`` (what the connector reads) keyed by a digest of the processed image tensor, so a
repeated image costs a hash instead of a tower forward.

Keyed by content, not by file name or dataset index: an image that a processor changes (a random augmentation, a
different size) is simply a new key, so the cache can only skip work, never return another image's features. The
tower's weights are part of the key too (each parameter's storage and in-place version counter): loading new weights
into the tower empties the cache. So does a change of autocast dtype (features computed under bf16 autocast are not
reused in an fp32 pass). Memory is bounded (least recently used images are dropped first) and counted in
:meth:`FeatureCache.stats`, which the runner writes into the run summary.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable, Dict, Hashable, Iterable, List, Tuple

import torch

from minigpt4.common.logger import get_logger, log_once

logger = get_logger(__name__)

MB = 1024 * 1024


def image_digest(image: torch.Tensor) -> bytes:
    """A 16-byte digest of one image tensor's values, shape and dtype (``image`` on the CPU)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(image.shape)}|{image.dtype}".encode())
    h.update(image.contiguous().numpy().tobytes() if image.dtype != torch.bfloat16
             else image.contiguous().view(torch.int16).numpy().tobytes())
    return h.digest()


def weights_state(tensors: Iterable[torch.Tensor]) -> Tuple[Tuple[int, int], ...]:
    """Storage address and in-place version of each tensor: changes when weights are loaded, cast or replaced."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def autocast_state(device_type: str) -> Tuple[bool, str]:
    """Whether autocast is on for ``device_type`` and its dtype (features depend on both)."""
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, str(torch.get_autocast_dtype(device_type)) if enabled else ""


class FeatureCache:
    """LRU cache of per-image features, at most ``max_mb`` megabytes of tensors (see the module docstring)."""

    def __init__(self, max_mb: float) -> None:
        if max_mb <= 0:
            raise ValueError(f"a feature cache needs a positive size in MB, got {max_mb}")
        self.max_bytes = int(max_mb * MB)
        self._store: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()
        self._bytes = 0
        self._context: Hashable = None
        self.hits = self.misses = self.evicted = self.resets = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self._store.clear()
        self._bytes = 0

    def stats(self) -> Dict[str, int]:
        """Counters since construction: hits and misses (images), evicted (images dropped for room), resets (times
        the tower's weights or the autocast dtype changed), and what is held now."""
        return {"hits": self.hits, "misses": self.misses, "evicted": self.evicted, "resets": self.resets,
                "images_held": len(self._store), "mb_held": int(round(self._bytes / MB))}

    def features(self, images: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor],
                 context: Hashable) -> torch.Tensor:
        """``compute(images)`` (``[B, ...]`` -> ``[B, ...]``), computed only for the images not held.

        ``context`` is everything besides the pixels that the features depend on (the tower's weights state, the
        autocast state); when it differs from the last call's, the cache is emptied first.
        """
        if context != self._context:
            if self._store:
                self.resets += 1
                logger.info("vision feature cache: the tower's weights or precision changed; %d image(s) dropped",
                            len(self._store))
            self.clear()
            self._context = context
        keys = [image_digest(row) for row in images.detach().cpu()]  # (B,) digests
        missing: List[int] = []
        first_of: Dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key in self._store:
                self._store.move_to_end(key)
            elif key not in first_of:  # an image repeated within the batch is computed once
                first_of[key] = len(missing)
                missing.append(i)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute(images[missing]) if missing else None  # (M, ...)
        rows: List[torch.Tensor] = []
        for key in keys:
            held = self._store.get(key)
            rows.append(held if held is not None else fresh[first_of[key]])
        if fresh is not None:
            for key, j in first_of.items():
                self._put(key, fresh[j].detach().clone())
        return torch.stack(rows)  # (B, ...)

    def _put(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            log_once(logger, "feature-cache-too-small",
                     "vision feature cache: one image's features (%.1f MB) exceed model.vit_feature_cache_mb; "
                     "nothing is cached", size / MB)
            return
        while self._bytes + size > self.max_bytes and self._store:
            _, dropped = self._store.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()
            self.evicted += 1
            log_once(logger, "feature-cache-full",
                     "vision feature cache full at %d MB (model.vit_feature_cache_mb): least recently used images "
                     "are dropped; raise it to keep every image", self.max_bytes // MB)
        self._store[key] = value
        self._bytes += size
