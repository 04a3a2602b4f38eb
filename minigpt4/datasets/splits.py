"""Deterministic train/validation split by image, stratified by section, and per-section weights.

An image's records always land on one side. With stratification every section contributes
``round(val_fraction × its images)`` images to validation (an image in several sections counts for the rarest of
them: the one with the fewest images, ties broken by name). Which images go is decided by a seeded hash of the
image path, so the split does not depend on record order and is the same on every machine and every rank.

The split is by path within one data set; :mod:`minigpt4.datasets.identity` then removes, across every data set of
a run, the training records whose image has the bytes of a held-out image under any path.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections import Counter
from typing import Callable, Dict, Iterable, List, Sequence, Set, Tuple, TypeVar

T = TypeVar("T")


def image_key(path: str) -> str:
    """How image paths are compared (``normpath``)."""
    return os.path.normpath(path)


def _rank(seed: int, image: str) -> str:
    return hashlib.sha1(f"{seed}\0{image}".encode("utf-8")).hexdigest()


def val_images(pairs: Iterable[Tuple[str, str]], val_fraction: float, seed: int, stratify: bool = True) -> Set[str]:
    """Image keys (normalised paths) that go to validation, given ``(image, section)`` pairs."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split.val_fraction must be in [0, 1), got {val_fraction}")
    sections_of: Dict[str, Set[str]] = {}
    for image, section in pairs:
        sections_of.setdefault(image_key(image), set()).add(section.strip() if stratify else "")
    n_images = Counter(section for names in sections_of.values() for section in names)
    groups: Dict[str, List[str]] = {}
    for image, names in sections_of.items():  # the rarest section of an image is its stratum
        groups.setdefault(min(names, key=lambda name: (n_images[name], name)), []).append(image)
    chosen: Set[str] = set()
    for group in sorted(groups):
        images = sorted(groups[group], key=lambda im: _rank(seed, im))
        n_val = int(math.floor(val_fraction * len(images) + 0.5))
        chosen.update(images[:n_val])
    return chosen


def split_by_image(items: Sequence[T], val_fraction: float, seed: int, stratify: bool = True,
                   image_of: Callable[[T], str] = lambda r: r.image,  # type: ignore[attr-defined]
                   section_of: Callable[[T], str] = lambda r: r.section,  # type: ignore[attr-defined]
                   ) -> Tuple[List[T], List[T]]:
    """``(train, val)`` lists of ``items``; no image in both."""
    chosen = val_images(((image_of(r), section_of(r)) for r in items), val_fraction, seed, stratify)
    train = [r for r in items if image_key(image_of(r)) not in chosen]
    val = [r for r in items if image_key(image_of(r)) in chosen]
    return train, val


def apply_section_weights(items: Sequence[T], weights: Dict[str, float], seed: int,
                          section_of: Callable[[T], str] = lambda r: r.section,  # type: ignore[attr-defined]
                          ) -> List[T]:
    """Repeat each section's items ``weight`` times: the whole part repeats all, the fraction a seeded subset.

    ``{"Fitzpatrick": 3}`` triples that section, ``0.5`` keeps half of it, ``0`` drops it; unnamed sections
    keep weight 1.
    """
    by_section: Dict[str, List[T]] = {}
    for r in items:
        by_section.setdefault(section_of(r).strip(), []).append(r)
    out: List[T] = []
    for section, group in by_section.items():
        w = float(weights.get(section, 1.0))
        if w < 0:
            raise ValueError(f"section_weights[{section!r}] = {w}: weights must be >= 0")
        whole, frac = int(math.floor(w)), w - math.floor(w)
        out.extend(group * whole)
        n_extra = int(math.floor(frac * len(group) + 0.5))
        if n_extra:
            picks = sorted(random.Random(f"{seed}:{section}").sample(range(len(group)), n_extra))
            out.extend(group[i] for i in picks)
    return out
