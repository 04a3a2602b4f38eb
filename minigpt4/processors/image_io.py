"""Robust image opening: every input becomes an upright 8-bit RGB ``PIL.Image``.

:func:`open_image` is what datasets, processors and the chat engine use instead of a bare
``Image.open(path).convert("RGB")`` (upstream's call). The differences:

* EXIF orientation is applied, so phone photos are upright (upstream fed them sideways);
* transparency is composited **on white** (``RGBA``, ``LA``, ``PA`` and palette images with a transparent
  colour). A plain ``convert("RGB")`` drops alpha and shows whatever colour the transparent pixels happen to
  store, which is often black; white matches how viewers and documents show such images. ``alpha="upstream"``
  keeps upstream's ``convert("RGB")`` (what the released checkpoints were trained with);
* 16-bit and 32-bit images are **scaled** to 0..255, not clipped (``convert("RGB")`` on ``I;16`` saturates
  everything above 255 to white): ``I;16*`` divides by 257 (65535 → 255); ``I`` (32-bit int) is treated the same
  way when its maximum exceeds 255 and used as is otherwise; ``F`` (float) is read as 0..1 when its maximum is at
  most 1, else as 0..255, and clipped to that range;
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``1``, ``L`` and ``P`` go through Pillow's own conversion;
* large JPEGs can be decoded at a reduced size (see :func:`draft_size`).

Reduced-size JPEG decoding (``fast_decode=True`` with a ``target_size``): libjpeg can decode at 1/2, 1/4 or
1/8 of the full size almost for free (it skips part of the inverse DCT). We ask for the largest reduction that
still leaves **both sides at least** ``target_size`` pixels (``DRAFT_FACTOR`` × the target), so the bicubic
resize that follows still down-samples; the result differs from the full decode by a small low-pass difference
(measured by ``benchmarks/bench_image_processor.py``; see :mod:`minigpt4.processors.blip_processors` for the
tolerance). Non-JPEG files are never drafted.

:func:`image_path_in_root` keeps a record's image inside its image root: the path is joined to the root and
normalised *lexically* (no symlink resolution, so a symlinked ``coco/`` folder inside the root still works),
and anything that lands outside the root is refused with :class:`ImagePathError` before any file is touched.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

#: Both sides of a drafted JPEG stay at least this many times the target size.
DRAFT_FACTOR = 1.0

#: ``alpha`` choices: composite transparency on white, or upstream's plain ``convert("RGB")``.
ALPHA_CHOICES = ("white", "upstream")

_WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")

PathLike = Union[str, "os.PathLike[str]"]


class ImageOpenError(OSError):
    """An image file is missing or cannot be decoded; the message names the file and the cause."""


class ImagePathError(ImageOpenError, ValueError):
    """A record's image path lands outside its image root (absolute elsewhere, or ``..`` climbing out).

    A ``ValueError`` of the package, so the entry points report it as a user error (one line, exit status 2)."""


def image_path_in_root(root: PathLike, rel: str) -> str:
    """``root/rel`` normalised lexically; raises :class:`ImagePathError` when it is not inside ``root``.

    An absolute ``rel`` is accepted only when it already lies inside ``root``. Symlinks are not resolved: a
    symlinked folder inside the root is part of the root wherever it points.
    """
    base = os.path.normpath(os.path.abspath(os.fspath(root)))
    if "\x00" in rel:
        raise ImagePathError(f"image path {rel!r} contains a NUL character")
    path = os.path.normpath(os.path.join(base, rel))
    if path == base:
        raise ImagePathError(f"image path {rel!r} names the image root {base} itself, not an image inside it")
    if os.path.commonpath([base, path]) != base:
        raise ImagePathError(f"image path {rel!r} lands outside the image root {base} (at {path}); image paths "
                             "must be relative to the dataset's image root (build_info.image_path) and stay inside it")
    return path


def draft_size(target_size: int, factor: float = DRAFT_FACTOR) -> tuple:
    """The ``(w, h)`` to pass to ``Image.draft`` so both drafted sides stay >= ``factor * target_size``."""
    side = max(1, int(round(target_size * factor)))
    return (side, side)


def _scale_to_uint8(arr: np.ndarray, top: float) -> Image.Image:
    """Map ``0..top`` linearly to ``0..255`` (rounded, clipped) and return an ``L`` image."""
    scaled = np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float single-channel images → 8-bit ``L``, scaled as the module docstring says."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT:
        return _scale_to_uint8(arr, 65535.0)
    if img.mode == "I":
        return _scale_to_uint8(arr, 65535.0 if arr.size and arr.max() > 255 else 255.0)
    # mode F
    finite = arr[np.isfinite(arr)]
    top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
    return _scale_to_uint8(np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0), top)


def check_alpha(alpha: str) -> str:
    """``alpha`` itself, or a ``ValueError`` naming the choices."""
    if alpha not in ALPHA_CHOICES:
        raise ValueError(f"alpha={alpha!r} is not one of {list(ALPHA_CHOICES)} (white: composite transparency on "
                         "white; upstream: PIL convert('RGB'), as the released checkpoints were trained)")
    return alpha


def to_rgb(img: Image.Image, alpha: str = "white") -> Image.Image:
    """Convert any Pillow image to 8-bit RGB: alpha composited on white (``alpha="upstream"``: upstream's
    ``convert("RGB")``, which drops it), high bit depths scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        return _high_depth_to_l(img).convert("RGB")
    if check_alpha(alpha) == "upstream":
        return img.convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: PathLike, target_size: Optional[int] = None, fast_decode: bool = True,
               alpha: str = "white") -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    ``target_size``: the side the caller will resize to; with ``fast_decode`` a JPEG larger than needed is
    decoded at a reduced size (never below ``target_size`` on either side). ``alpha``: see :func:`to_rgb`.
    Raises :class:`ImageOpenError` (an ``OSError``) naming the file when it is missing or undecodable.
    """
    check_alpha(alpha)
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            if fast_decode and target_size and img.format == "JPEG":
                img.draft("RGB", draft_size(target_size))
            img.load()  # pixels now live in memory; closing the file below is safe
            ImageOps.exif_transpose(img, in_place=True)
            return to_rgb(img, alpha)
    except FileNotFoundError as err:
        raise ImageOpenError(f"image file not found: {path}") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageOpenError(f"cannot decode image {path}: {type(err).__name__}: {err}") from err
