"""Deterministic synthetic face drawings whose answers are visible in the pixels.

:func:`draw_face` paints a cartoon face (or, for ``is_face=False``, a scene with no face) from attributes:

* skin tone: a large uniform face ellipse in one of six Fitzpatrick colours (I–VI, light → dark);
* expression: cartoon conventions drawn bold (a toothy white grin; a frown with a blue tear; a wide open "O"; a
  flat line) and the eyebrows
  (relaxed, inner ends raised for sad, high arches for surprised, straight for neutral);
* distractors that carry no label: background hue and pattern, hair colour, face position and size.

Non-face images show houses, suns, trees, checkerboards or stripes in colours away from the skin palette.
Answers are templated per attribute (:data:`ANSWERS`), so a model that reads the image can learn them and
:func:`label_from_answer` can map generated text back to a label for scoring. :func:`synthetic_face` is the
test suite's deterministic face image.
"""

from __future__ import annotations

import random
import re
from typing import Dict, List, Optional, Tuple

from PIL import Image, ImageDraw

Color = Tuple[int, int, int]

FITZPATRICK: Dict[str, Color] = {
    "I": (252, 228, 212),
    "II": (236, 196, 160),
    "III": (208, 160, 112),
    "IV": (168, 114, 72),
    "V": (112, 72, 42),
    "VI": (60, 38, 24),
}
EXPRESSIONS = ("happy", "sad", "surprised", "neutral")
HAIR: List[Color] = [(20, 20, 20), (90, 50, 20), (200, 170, 60), (150, 40, 20), (140, 140, 140)]
BACKGROUNDS: List[Color] = [(70, 110, 200), (60, 160, 90), (130, 80, 170), (40, 150, 160), (190, 190, 210),
                            (90, 90, 120)]

#: Every attribute a synthetic image has, with its possible values.
FACE_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "is_face": ("yes", "no"),
    "expression": EXPRESSIONS,
    "fitzpatrick": tuple(FITZPATRICK),
}

#: Answer template per attribute value (the only wording the synthetic data uses).
ANSWERS: Dict[str, Dict[str, str]] = {
    "expression": {e: f"The person looks {e}." for e in EXPRESSIONS},
    "fitzpatrick": {t: f"Fitzpatrick type {t}." for t in FITZPATRICK},
    "is_face": {"yes": "Yes, this is a human face.", "no": "No, this is not a human face."},
}


def label_from_answer(attribute: str, text: str) -> Optional[str]:
    """The label whose template (or key word) ``text`` contains; None when no single label matches."""
    lowered = text.lower()
    if attribute == "fitzpatrick":
        found = re.findall(r"\btype\s+(vi|iv|v|iii|ii|i)\b", lowered)
        return found[0].upper() if found else None
    if attribute == "is_face":
        yes, no = lowered.startswith("yes"), lowered.startswith("no") or "not a human" in lowered
        return "yes" if yes and not no else "no" if no and not yes else None
    hits = [e for e in EXPRESSIONS if e in lowered]
    return hits[0] if len(hits) == 1 else None


def random_attributes(rng: random.Random, face_fraction: float = 0.8) -> Dict[str, str]:
    """Draw one image's attributes (non-faces have ``expression``/``fitzpatrick`` = "")."""
    if rng.random() >= face_fraction:
        return {"is_face": "no", "expression": "", "fitzpatrick": ""}
    return {"is_face": "yes", "expression": rng.choice(EXPRESSIONS), "fitzpatrick": rng.choice(tuple(FITZPATRICK))}


def _jitter(color: Color, rng: random.Random, amount: int) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _background(draw: ImageDraw.ImageDraw, size: int, rng: random.Random) -> None:
    base = _jitter(rng.choice(BACKGROUNDS), rng, 10)
    draw.rectangle([0, 0, size, size], fill=base)
    if rng.random() < 0.5:
        stripe = _jitter(rng.choice(BACKGROUNDS), rng, 10)
        step = max(4, size // rng.randint(6, 12))
        for x in range(0, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=stripe)


def _mouth(draw: ImageDraw.ImageDraw, cx: float, cy: float, w: float, expression: str, lw: int) -> None:
    """Cartoon conventions, drawn bold: a toothy grin, a frown with a tear, a wide open "O", a flat line."""
    dark = (120, 20, 30)
    if expression == "happy":  # open grin: a white crescent of teeth under a dark lip line
        draw.chord([cx - w, cy - w * 0.9, cx + w, cy + w * 0.7], 0, 180, fill=(255, 255, 255), outline=dark,
                   width=lw)
    elif expression == "sad":  # frown, and a blue tear under the right eye
        draw.arc([cx - w, cy, cx + w, cy + w * 1.4], 200, 340, fill=dark, width=lw)
        tx, ty = cx + w * 0.75, cy - w * 1.1
        draw.ellipse([tx - w * 0.16, ty - w * 0.1, tx + w * 0.16, ty + w * 0.38], fill=(60, 140, 255))
    elif expression == "surprised":
        draw.ellipse([cx - w * 0.4, cy - w * 0.3, cx + w * 0.4, cy + w * 0.8], fill=dark)
    else:
        draw.line([cx - w * 0.8, cy + w * 0.2, cx + w * 0.8, cy + w * 0.2], fill=dark, width=lw)


def _brows(draw: ImageDraw.ImageDraw, cx: float, ey: float, dx: float, r: float, expression: str, lw: int) -> None:
    for side in (-1, 1):
        x = cx + side * dx
        inner, outer = x - side * r * 1.2, x + side * r * 1.2
        if expression == "sad":  # inner ends raised
            pts = [(inner, ey - r * 3.0), (outer, ey - r * 1.8)]
        elif expression == "surprised":  # high
            pts = [(inner, ey - r * 3.4), (outer, ey - r * 3.4)]
        elif expression == "happy":
            pts = [(inner, ey - r * 2.0), (outer, ey - r * 2.4)]
        else:
            pts = [(inner, ey - r * 2.2), (outer, ey - r * 2.2)]
        draw.line(pts, fill=(30, 20, 15), width=lw)


def _face(draw: ImageDraw.ImageDraw, size: int, attrs: Dict[str, str], rng: random.Random) -> None:
    fw = size * rng.uniform(0.30, 0.38)  # half width of the face
    fh = fw * rng.uniform(1.15, 1.3)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.04, 0.08) * size
    draw.ellipse([cx - fw * 1.05, cy - fh * 1.08, cx + fw * 1.05, cy - fh * 0.1], fill=rng.choice(HAIR))
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=_jitter(FITZPATRICK[attrs["fitzpatrick"]], rng, 5))
    lw = max(2, size // 45)
    ey, dx, r = cy - fh * 0.2, fw * 0.42, fw * 0.1
    for side in (-1, 1):
        x = cx + side * dx
        draw.ellipse([x - r * 1.6, ey - r, x + r * 1.6, ey + r], fill=(250, 250, 250))
        draw.ellipse([x - r * 0.7, ey - r * 0.7, x + r * 0.7, ey + r * 0.7], fill=(40, 30, 60))
    # expression is drawn bold (wide mouth, thick strokes) so it survives the demo's 112 px input
    _brows(draw, cx, ey, dx, r, attrs["expression"], 2 * lw)
    _mouth(draw, cx, cy + fh * 0.45, fw * 0.62, attrs["expression"], 2 * lw + 1)


def _scene(draw: ImageDraw.ImageDraw, size: int, rng: random.Random) -> None:
    kind = rng.choice(("house", "sun", "tree", "checker", "shapes"))
    s = size
    if kind == "house":
        x0, y0 = s * rng.uniform(0.2, 0.35), s * rng.uniform(0.4, 0.5)
        draw.rectangle([x0, y0, s - x0, s * 0.9], fill=(180, 40, 40))
        draw.polygon([(x0 - s * 0.05, y0), (s / 2, s * 0.15), (s - x0 + s * 0.05, y0)], fill=(60, 60, 70))
        draw.rectangle([s * 0.45, s * 0.65, s * 0.55, s * 0.9], fill=(240, 220, 40))
    elif kind == "sun":
        r = s * rng.uniform(0.15, 0.25)
        draw.ellipse([s / 2 - r, s / 2 - r, s / 2 + r, s / 2 + r], fill=(255, 230, 0))
        for k in range(12):
            draw.line([(s / 2, s / 2), (s / 2 + 2 * r * ((k % 4) - 1.5) / 1.5, s / 2 + 2 * r * (k // 4 - 1))],
                      fill=(255, 200, 0), width=max(2, s // 60))
    elif kind == "tree":
        draw.rectangle([s * 0.45, s * 0.55, s * 0.55, s * 0.95], fill=(100, 60, 30))
        draw.ellipse([s * 0.2, s * 0.1, s * 0.8, s * 0.65], fill=(30, 140, 40))
    elif kind == "checker":
        n = rng.randint(4, 8)
        step = s / n
        for i in range(n):
            for j in range((i % 2), n, 2):
                draw.rectangle([j * step, i * step, (j + 1) * step, (i + 1) * step], fill=(20, 20, 20))
    else:
        for _ in range(rng.randint(3, 6)):
            x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(s * 0.05, s * 0.2)
            color = rng.choice([(230, 40, 40), (40, 200, 230), (250, 240, 40), (40, 40, 200), (240, 240, 240)])
            draw.rectangle([x - r, y - r, x + r, y + r], fill=color)


def draw_face(attrs: Dict[str, str], size: int, rng: random.Random) -> Image.Image:
    """An RGB ``size``×``size`` drawing of ``attrs`` (see :data:`FACE_ATTRIBUTES`)."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _background(draw, size, rng)
    if attrs["is_face"] == "yes":
        _face(draw, size, attrs, rng)
    else:
        _scene(draw, size, rng)
    return img


def synthetic_face(seed: int, size: int = 224) -> Image.Image:
    """A deterministic face image for tests: the same ``seed`` always gives the same pixels."""
    rng = random.Random(seed)
    attrs = {"is_face": "yes", "expression": EXPRESSIONS[seed % 4], "fitzpatrick": tuple(FITZPATRICK)[seed % 6]}
    return draw_face(attrs, size, rng)
