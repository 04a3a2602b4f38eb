"""Images/second through ``blip2_image_train``: reduced-size JPEG decoding vs upstream's full decode.

Generates SAM-sized (2250×1500) photo-like JPEGs (smooth gradients, shapes, blur, sensor noise; quality 90),
then times one DataLoader worker feeding paths through the processor at 224 and 448, ``fast_decode`` on versus
off (off = upstream: full decode + bicubic resize), in the same run, and reports the speed ratio and how far the
fast tensors are from the full-decode tensors. Not a test: run ``python benchmarks/bench_image_processor.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, Dataset

from minigpt4.processors.blip_processors import Blip2ImageTrainProcessor
from minigpt4.processors.image_io import DRAFT_FACTOR

TARGETS = {224: 2.0, 448: 1.6}
TOLERANCE = {"mean": 0.02, "max": 0.75}  # normalised units, stated in blip_processors' docstring


def photo_like(seed: int, w: int = 2250, h: int = 1500) -> Image.Image:
    """A deterministic photo-like RGB image: gradients, shapes, blur and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        arr[..., c] = 128 + 60 * np.sin(x / w * np.pi * a * 3 + d) + 50 * np.cos(y / h * np.pi * b * 3)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 400))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + s, y0 + int(s * rng.uniform(0.5, 1.5))], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + s, y0 + s], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


class _Paths(Dataset):
    def __init__(self, paths: List[str], proc: Blip2ImageTrainProcessor) -> None:
        self.paths, self.proc = paths, proc

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.proc(self.paths[i])


def run(paths: List[str], proc: Blip2ImageTrainProcessor) -> Tuple[float, torch.Tensor]:
    """(images/second, stacked outputs) through one DataLoader worker."""
    loader = DataLoader(_Paths(paths, proc), batch_size=1, num_workers=1)
    it = iter(loader)
    first = next(it)  # worker start-up is not timed
    start = time.perf_counter()
    rest = [b for b in it]
    elapsed = time.perf_counter() - start
    return (len(paths) - 1) / elapsed, torch.cat([first] + rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="distinct JPEGs")
    parser.add_argument("--repeat", type=int, default=2, help="passes over them")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            paths.append(os.path.join(tmp, f"img{i}.jpg"))
            photo_like(i).save(paths[-1], format="JPEG", quality=90)
        paths = paths * args.repeat
        print(f"{args.images} JPEGs 2250x1500 q90 x{args.repeat}; 1 DataLoader worker; draft factor {DRAFT_FACTOR}")
        print(f"{'size':>5} {'full img/s':>11} {'fast img/s':>11} {'speedup':>8} {'target':>7} "
              f"{'max|d|':>7} {'mean|d|':>8}")
        for size, target in TARGETS.items():
            full_ips, full_out = run(paths, Blip2ImageTrainProcessor(size, fast_decode=False))
            fast_ips, fast_out = run(paths, Blip2ImageTrainProcessor(size, fast_decode=True))
            diff = (fast_out - full_out).abs()
            print(f"{size:>5} {full_ips:>11.1f} {fast_ips:>11.1f} {fast_ips / full_ips:>7.2f}x {target:>6.1f}x "
                  f"{diff.max().item():>7.3f} {diff.mean().item():>8.4f}")
        print(f"tolerance vs full decode (normalised units): mean|d| < {TOLERANCE['mean']}, max|d| < "
              f"{TOLERANCE['max']} (one 8-bit grey level ~ 0.015)")


if __name__ == "__main__":
    main()
