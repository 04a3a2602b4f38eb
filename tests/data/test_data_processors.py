"""Processors: upstream parity, robust image opening, fast JPEG decoding, text processors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from minigpt4.common.registry import registry
from minigpt4.processors import (
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    FaceTextProcessor,
    ImageOpenError,
    ProcessorConfigError,
    open_image,
    pre_caption,
)
from minigpt4.processors.image_io import draft_size, to_rgb
from minigpt4.tools.synth_faces import synthetic_face


@pytest.mark.parametrize("variant,size", [("v2", 448), ("v1", 224), ("v1_llama2", 224)])
def test_blip2_image_train_matches_upstream_intermediates(parity_root, variant: str, size: int) -> None:
    proc = registry.get_processor_class("blip2_image_train").from_config({"name": "blip2_image_train",
                                                                           "image_size": size})
    expected = torch.load(parity_root / variant / "intermediates.pt", weights_only=True)["image"]
    for i in range(2):
        path = parity_root / variant / "batch" / f"img{i}.png"
        assert (proc(path) - expected[i]).abs().max().item() <= 1e-6
        assert (proc(open_image(path)) - expected[i]).abs().max().item() <= 1e-6


def test_image_processor_config_defaults_and_unknown_key() -> None:
    proc = Blip2ImageTrainProcessor.from_config(None)
    assert proc.image_size == 224 and proc.fast_decode and proc.min_scale == 0.5 and proc.max_scale == 1.0
    assert registry.get_processor_class("blip2_image_eval").from_config({"image_size": 448}).image_size == 448
    with pytest.raises(ProcessorConfigError, match="image_szie"):
        Blip2ImageTrainProcessor.from_config({"image_szie": 448})
    out = proc(synthetic_face(1, 100))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32


def test_image_processor_rejects_non_rgb_pil() -> None:
    with pytest.raises(ValueError, match="expects an RGB image"):
        Blip2ImageTrainProcessor(32)(Image.new("L", (8, 8)))


def _save(img: Image.Image, path, fmt: str, **kw) -> str:
    img.save(path, format=fmt, **kw)
    return str(path)


def test_exif_orientation_is_applied(tmp_path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = _save(img, tmp_path / "r.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    out = open_image(path)
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60, "the left strip must end up on top after the EXIF rotation"


def test_alpha_is_composited_on_white(tmp_path) -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(open_image(_save(rgba, tmp_path / "a.png", "PNG")))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [255, 0, 0]
    la = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    out = np.asarray(open_image(_save(pal, tmp_path / "p.png", "PNG", transparency=0)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 200, 30]


def test_sixteen_bit_and_float_are_scaled_not_clipped(tmp_path) -> None:
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(arr)
    assert img16.mode == "I;16"
    out = np.asarray(open_image(_save(img16, tmp_path / "g16.png", "PNG")))
    assert out[0, :, 0].tolist() == [0, 100, 255]
    as_i = Image.fromarray(arr.astype(np.int32))
    assert np.asarray(to_rgb(as_i))[0, :, 1].tolist() == [0, 100, 255]
    small_i = Image.fromarray(np.array([[0, 7, 200]], dtype=np.int32))
    assert np.asarray(to_rgb(small_i))[0, :, 0].tolist() == [0, 7, 200]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(f01))[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_and_cmyk(tmp_path) -> None:
    gray = open_image(_save(Image.new("L", (3, 3), 77), tmp_path / "l.png", "PNG"))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    cmyk = open_image(_save(Image.new("CMYK", (3, 3), (0, 255, 255, 0)), tmp_path / "c.jpg", "JPEG", quality=100))
    r, g, b = np.asarray(cmyk)[1, 1].tolist()
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_missing_and_undecodable_images_raise_naming_the_file(tmp_path) -> None:
    with pytest.raises(ImageOpenError, match="not found: .*nope.jpg"):
        open_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageOpenError, match="cannot decode image .*bad.jpg"):
        open_image(bad)


def _photo(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([128 + 80 * np.sin(x / 97), 128 + 80 * np.cos(y / 61), 128 + 60 * np.sin((x + y) / 150)], -1)
    arr += np.random.default_rng(0).normal(0, 5, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_fast_decode_drafts_large_jpegs_within_tolerance(tmp_path) -> None:
    path = _save(_photo(1200, 900), tmp_path / "big.jpg", "JPEG", quality=90)
    drafted = open_image(path, target_size=224, fast_decode=True)
    assert drafted.size == (300, 225), "1/4-scale decode keeps both sides >= 224"
    assert min(drafted.size) >= draft_size(224)[0]
    assert open_image(path, target_size=224, fast_decode=False).size == (1200, 900)
    fast, full = Blip2ImageTrainProcessor(224, fast_decode=True), Blip2ImageTrainProcessor(224, fast_decode=False)
    diff = (fast(path) - full(path)).abs()
    assert diff.mean().item() < 0.02 and diff.max().item() < 0.75
    assert torch.equal(full(path), full(Image.open(path).convert("RGB"))), "fast_decode off = upstream pipeline"


def test_png_is_never_drafted(tmp_path) -> None:
    path = _save(_photo(600, 500), tmp_path / "big.png", "PNG")
    assert open_image(path, target_size=64).size == (600, 500)


def test_pre_caption_matches_upstream_rules() -> None:
    text = 'Hello,  World! "Quoted" (paren) *star* #hash: semi; ~tilde~\n'
    assert pre_caption(text) == "hello, world quoted paren star hash semi tilde"
    long = " ".join(f"w{i}" for i in range(60))
    assert pre_caption(long).split(" ") == [f"w{i}" for i in range(50)]
    proc = BlipCaptionProcessor.from_config({"name": "blip_caption", "prompt": "a photo of ", "max_words": 3})
    assert proc("One Two Three Four") == "a photo of one two three"
    assert proc.truncated == 1
    proc("one two")
    assert proc.truncated == 1


def test_face_text_keeps_instructions_and_counts_cuts() -> None:
    proc = registry.get_processor_class("face_text").from_config({"name": "face_text"})
    text = '  Describe: the "Face" (in DETAIL);\n\n  then  stop!  '
    assert proc(text) == 'Describe: the "Face" (in DETAIL); then stop!'
    long = " ".join(["word"] * 80)
    assert proc(long) == long and proc.truncated == 0
    cut = FaceTextProcessor(max_words=5)
    assert cut(long) == " ".join(["word"] * 5) and cut.truncated == 1
    with pytest.raises(ValueError, match="max_words"):
        FaceTextProcessor(max_words=0)


def _rgba_with_hidden_colour(path) -> "Path":
    """A PNG whose transparent pixels store a colour (what convert('RGB') reveals) plus a half-transparent one."""
    rgba = Image.new("RGBA", (8, 8), (20, 40, 60, 0))
    rgba.putpixel((1, 1), (200, 100, 50, 128))
    rgba.putpixel((2, 2), (0, 255, 0, 255))
    rgba.save(path, format="PNG")
    return path


@pytest.mark.parametrize("alpha", ["white", "upstream"])
def test_alpha_option_white_or_upstream_convert(tmp_path, alpha: str) -> None:
    path = _rgba_with_hidden_colour(tmp_path / "a.png")
    proc = Blip2ImageTrainProcessor.from_config({"name": "blip2_image_train", "image_size": 8, "alpha": alpha})
    pixels = np.asarray(proc.open(path))
    assert pixels[2, 2].tolist() == [0, 255, 0], "opaque pixels are the same either way"
    with Image.open(path) as img:
        upstream = img.convert("RGB")  # upstream's call
    if alpha == "upstream":
        assert np.array_equal(pixels, np.asarray(upstream)) and pixels[0, 0].tolist() == [20, 40, 60]
        assert torch.equal(proc(path), proc.transform(upstream)), "the tensor is upstream's pipeline exactly"
    else:
        assert pixels[0, 0].tolist() == [255, 255, 255]
        over_white = [c * 128 / 255 + 255 * (1 - 128 / 255) for c in (200, 100, 50)]  # alpha 128 over white
        assert np.abs(pixels[1, 1] - np.array(over_white)).max() <= 1.0
        assert not torch.equal(proc(path), proc.transform(upstream))
    with pytest.raises(ProcessorConfigError, match=r"alpha='black' is not one of \['white', 'upstream'\]"):
        Blip2ImageTrainProcessor.from_config({"alpha": "black"})
