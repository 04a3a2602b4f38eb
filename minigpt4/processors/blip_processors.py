"""Upstream's processors: ``blip2_image_train``, ``blip2_image_eval`` and ``blip_caption``.

Image processors: ``Resize((S, S), BICUBIC)`` → ``ToTensor`` → ``Normalize(CLIP mean, std)``, as upstream does
today (no augmentation; ``min_scale``/``max_scale`` are accepted for upstream configs but unused, as upstream).
Output: a float tensor ``[3, S, S]``. Given a PIL image they reproduce upstream bit for bit. Given a *path*
they open it with :func:`minigpt4.processors.image_io.open_image` (EXIF, alpha, 16-bit handling) and, with
``fast_decode: True`` (the default), decode large JPEGs at a reduced size first.

Fast-decode tolerance: a JPEG is decoded at the largest 1/2, 1/4 or 1/8 scale that keeps both sides
>= ``image_size`` (PNG and other formats are never reduced). On 2250×1500 photo-like JPEGs (quality 90;
``benchmarks/bench_image_processor.py``) the normalised output stays within **mean |Δ| < 0.02 and max |Δ| < 0.75**
of the full decode (measured: 0.008 / 0.59 at 224, 0.005 / 0.17 at 448; one 8-bit grey level ≈ 0.015; the
maximum sits on isolated hard edges) while running 2.6× faster at 224 and 1.75× at 448 in one DataLoader worker.
``fast_decode: False`` gives upstream's exact pipeline.

Transparency (``alpha``, only when given a path): ``white`` (default) composites RGBA / LA / transparent-palette
images on white; ``upstream`` is upstream's ``convert("RGB")``, which drops the alpha channel and keeps whatever
colour the transparent pixels store — the released MiniGPT-4 / MiniGPT-v2 checkpoints were trained that way.

``blip_caption`` keeps upstream's ``pre_caption`` exactly: lowercase; each of ``.!"()*#:;~`` becomes a space;
runs of whitespace collapse to one space; trailing newline and outer spaces stripped; at most ``max_words``
space-separated words (default 50); ``prompt`` is prepended.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, List

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from minigpt4.common.registry import registry
from minigpt4.common.schema import ProcessorConfig, registry_field
from minigpt4.processors.base_processor import BaseProcessor, ProcessorConfigError
from minigpt4.processors.image_io import check_alpha, open_image

#: CLIP normalisation statistics (upstream's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class BlipImageConfig(ProcessorConfig):
    """Options of ``blip2_image_train`` / ``blip2_image_eval``."""

    name: str = registry_field("blip2_image_train", "processor")
    image_size: int = 224
    mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: List[float] = field(default_factory=lambda: list(CLIP_STD))
    min_scale: float = 0.5  # upstream key, unused since upstream dropped RandomResizedCrop
    max_scale: float = 1.0  # upstream key, unused
    fast_decode: bool = True  # FaceGPT: reduced-size JPEG decoding when given a path
    alpha: str = "white"  # transparency: white (composite on white) | upstream (PIL convert("RGB"))


@dataclass
class BlipCaptionConfig(ProcessorConfig):
    """Options of ``blip_caption``."""

    name: str = registry_field("blip_caption", "processor")
    prompt: str = ""
    max_words: int = 50


class BlipImageBaseProcessor(BaseProcessor):
    """Bicubic resize to ``image_size``², ToTensor, Normalize; accepts a PIL image or a path."""

    config_schema = BlipImageConfig

    def __init__(self, image_size: int = 224, mean: Any = None, std: Any = None, min_scale: float = 0.5,
                 max_scale: float = 1.0, fast_decode: bool = True, alpha: str = "white") -> None:
        try:
            self.alpha = check_alpha(alpha)
        except ValueError as err:
            raise ProcessorConfigError(f"{type(self).__name__}: {err}") from None
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in (mean if mean is not None else CLIP_MEAN))
        self.std = tuple(float(s) for s in (std if std is not None else CLIP_STD))
        self.min_scale, self.max_scale = min_scale, max_scale
        self.fast_decode = bool(fast_decode)
        self.transform = transforms.Compose([
            transforms.Resize((self.image_size, self.image_size), interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def open(self, path: "str | os.PathLike[str]") -> Image.Image:
        """Open ``path`` as RGB (transparency per ``alpha``), a large JPEG at reduced size with ``fast_decode``."""
        return open_image(path, target_size=self.image_size, fast_decode=self.fast_decode, alpha=self.alpha)

    def __call__(self, item: "Image.Image | str | os.PathLike[str]") -> torch.Tensor:
        """PIL image (or path) → float tensor ``[3, S, S]``."""
        if isinstance(item, (str, os.PathLike)):
            item = self.open(item)
        elif item.mode != "RGB":
            raise ValueError(f"{type(self).__name__} expects an RGB image, got mode {item.mode!r}; "
                             "open images with minigpt4.processors.image_io.open_image")
        return self.transform(item)

    @classmethod
    def from_config(cls, cfg: Any = None) -> "BlipImageBaseProcessor":
        c = cls.typed_config(cfg)
        return cls(image_size=c.image_size, mean=list(c.mean), std=list(c.std), min_scale=c.min_scale,
                   max_scale=c.max_scale, fast_decode=c.fast_decode, alpha=c.alpha)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(image_size={self.image_size}, fast_decode={self.fast_decode}, alpha={self.alpha})"


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(BlipImageBaseProcessor):
    """Training image processor (identical to eval, as upstream since Nov 2023)."""


@dataclass
class BlipImageEvalConfig(BlipImageConfig):
    """Options of ``blip2_image_eval``."""

    name: str = registry_field("blip2_image_eval", "processor")


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(BlipImageBaseProcessor):
    """Evaluation / chat image processor."""

    config_schema = BlipImageEvalConfig


_PUNCT = re.compile(r'([.!"()*#:;~])')
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """Upstream's caption normalisation (lowercase, punctuation → space, ≤ ``max_words`` words)."""
    caption = _PUNCT.sub(" ", caption.lower())
    caption = _SPACES.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


@registry.register_processor("blip_caption")
class BlipCaptionProcessor(BaseProcessor):
    """``prompt + pre_caption(text)``: upstream's text processor (lowercases, cuts at ``max_words``)."""

    config_schema = BlipCaptionConfig

    def __init__(self, prompt: str = "", max_words: int = 50) -> None:
        self.prompt = prompt
        self.max_words = max_words
        self.truncated = 0  # FaceGPT: how many texts the word cut shortened

    def __call__(self, caption: str) -> str:
        out = pre_caption(caption, self.max_words)
        if len(out.split(" ")) == self.max_words and len(pre_caption(caption, 1 << 30).split(" ")) > self.max_words:
            self.truncated += 1
        return self.prompt + out

    @classmethod
    def from_config(cls, cfg: Any = None) -> "BlipCaptionProcessor":
        c = cls.typed_config(cfg)
        return cls(prompt=c.prompt, max_words=c.max_words)
