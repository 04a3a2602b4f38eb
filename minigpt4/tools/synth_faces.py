"""Deterministic synthetic face drawings whose answers are visible in the pixels.

:func:`draw_face` paints a cartoon face (or, for ``is_face=False``, a scene with no face) from attributes:

* skin tone: a large uniform face ellipse in one of six Fitzpatrick colours (I–VI, light → dark);
* expression: cartoon conventions drawn bold (a toothy white grin; a frown with a blue tear; a wide open "O"; a
  flat line) and the eyebrows
  (relaxed, inner ends raised for sad, high arches for surprised, straight for neutral);
* distractors that carry no label: background hue and pattern, face position and size (and, in the plain
  drawing of :func:`synthetic_face`, the hair colour).

Images drawn with the extended attributes (:data:`EXTENDED_ATTRIBUTES`, what the data tool writes) also show

* hair colour: a cap of hair and a fringe in one of five colours (a colour region);
* an accessory: none, glasses (dark rings round the eyes) or earrings (gold dots at the ears) (a small object);
* head tilt: upright, or the whole head rotated about 18-28 degrees to the image's left or right (a pose);
* the shirt's pattern: plain, horizontal stripes or dots over a shirt of any colour (a texture), below a
  slightly smaller face.

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
HAIR_COLOURS: Dict[str, Color] = {"black": (20, 20, 20), "brown": (90, 50, 20), "blond": (200, 170, 60),
                                   "red": (150, 40, 20), "grey": (140, 140, 140)}
HAIR: List[Color] = list(HAIR_COLOURS.values())
ACCESSORIES = ("none", "glasses", "earrings")
TILTS = ("upright", "left", "right")
PATTERNS = ("plain", "striped", "dotted")
#: shirt colours (a distractor: the pattern is the attribute)
SHIRTS: List[Color] = [(200, 50, 60), (40, 90, 180), (50, 140, 70), (230, 180, 40), (110, 60, 140), (90, 90, 90)]
BACKGROUNDS: List[Color] = [(70, 110, 200), (60, 160, 90), (130, 80, 170), (40, 150, 160), (190, 190, 210),
                            (90, 90, 120)]

#: The attributes that only the extended drawing has (a face drawn without them is :func:`synthetic_face`'s).
EXTENDED_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "hair": tuple(HAIR_COLOURS),
    "accessory": ACCESSORIES,
    "tilt": TILTS,
    "pattern": PATTERNS,
}

#: Every attribute a synthetic image has, with its possible values.
FACE_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "is_face": ("yes", "no"),
    "expression": EXPRESSIONS,
    "fitzpatrick": tuple(FITZPATRICK),
    **EXTENDED_ATTRIBUTES,
}

#: Answer template per attribute value (the only wording the synthetic data uses).
ANSWERS: Dict[str, Dict[str, str]] = {
    "expression": {e: f"The person looks {e}." for e in EXPRESSIONS},
    "fitzpatrick": {t: f"Fitzpatrick type {t}." for t in FITZPATRICK},
    "is_face": {"yes": "Yes, this is a human face.", "no": "No, this is not a human face."},
    "hair": {h: f"The person has {h} hair." for h in HAIR_COLOURS},
    "accessory": {"none": "The person wears no accessories.", "glasses": "The person wears glasses.",
                  "earrings": "The person wears earrings."},
    "tilt": {"upright": "The head is upright.", "left": "The head is tilted to the left.",
             "right": "The head is tilted to the right."},
    "pattern": {p: f"The shirt is {p}." for p in PATTERNS},
}

#: Words or phrases that name each label in an answer (whole words, case-insensitive): the label maps the data
#: tool writes for ``facegpt-eval --label-maps`` and what :func:`label_from_answer` matches.
LABEL_WORDS: Dict[str, Dict[str, List[str]]] = {
    "expression": {e: [e] for e in EXPRESSIONS},
    "fitzpatrick": {t: [f"type {t}"] for t in FITZPATRICK},
    "is_face": {"yes": ["^yes"], "no": ["^no"]},  # "^": at the start of the answer only
    "hair": {"black": ["black"], "brown": ["brown"], "blond": ["blond", "blonde"], "red": ["red"],
             "grey": ["grey", "gray"]},
    "accessory": {"none": ["no accessories"], "glasses": ["glasses"], "earrings": ["earrings"]},
    "tilt": {"upright": ["upright"], "left": ["to the left"], "right": ["to the right"]},
    "pattern": {"plain": ["plain"], "striped": ["striped", "stripes"], "dotted": ["dotted", "dots"]},
}


def label_from_answer(attribute: str, text: str) -> Optional[str]:
    """The one label of ``attribute`` whose words (:data:`LABEL_WORDS`) ``text`` contains; None when none or
    several labels match."""
    lowered = " ".join(text.lower().split())
    hits = []
    for label, words in LABEL_WORDS[attribute].items():
        patterns = [("^" if w.startswith("^") else r"\b") + re.escape(w.lstrip("^").lower()) + r"\b" for w in words]
        if any(re.search(p, lowered) for p in patterns):
            hits.append(label)
    return hits[0] if len(hits) == 1 else None


def random_attributes(rng: random.Random, face_fraction: float = 0.8) -> Dict[str, str]:
    """Draw one image's attributes, all of :data:`FACE_ATTRIBUTES` (a non-face has "" for every face attribute)."""
    if rng.random() >= face_fraction:
        return {"is_face": "no", **{name: "" for name in FACE_ATTRIBUTES if name != "is_face"}}
    attrs = {"is_face": "yes", "expression": rng.choice(EXPRESSIONS), "fitzpatrick": rng.choice(tuple(FITZPATRICK))}
    attrs.update({name: rng.choice(values) for name, values in EXTENDED_ATTRIBUTES.items()})
    return attrs


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


def _eyes_brows_mouth(draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, fw: float, fh: float,
                      expression: str) -> Tuple[float, float, float]:
    """Eyes, eyebrows and mouth of a face centred at ``(cx, cy)`` with half sizes ``fw`` x ``fh``; returns the eye
    line, the eyes' half distance and the eye radius. The expression is drawn bold (wide mouth, thick strokes) so it
    survives the demo's 112 px input."""
    lw = max(2, size // 45)
    ey, dx, r = cy - fh * 0.2, fw * 0.42, fw * 0.1
    for side in (-1, 1):
        x = cx + side * dx
        draw.ellipse([x - r * 1.6, ey - r, x + r * 1.6, ey + r], fill=(250, 250, 250))
        draw.ellipse([x - r * 0.7, ey - r * 0.7, x + r * 0.7, ey + r * 0.7], fill=(40, 30, 60))
    _brows(draw, cx, ey, dx, r, expression, 2 * lw)
    _mouth(draw, cx, cy + fh * 0.45, fw * 0.62, expression, 2 * lw + 1)
    return ey, dx, r


def _face(draw: ImageDraw.ImageDraw, size: int, attrs: Dict[str, str], rng: random.Random) -> None:
    fw = size * rng.uniform(0.30, 0.38)  # half width of the face
    fh = fw * rng.uniform(1.15, 1.3)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.04, 0.08) * size
    draw.ellipse([cx - fw * 1.05, cy - fh * 1.08, cx + fw * 1.05, cy - fh * 0.1], fill=rng.choice(HAIR))
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=_jitter(FITZPATRICK[attrs["fitzpatrick"]], rng, 5))
    _eyes_brows_mouth(draw, size, cx, cy, fw, fh, attrs["expression"])


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


def _shirt(img: Image.Image, size: int, cx: float, top: float, pattern: str, rng: random.Random) -> None:
    """Shoulders from ``top`` down to the bottom edge, in a random colour, ``pattern`` printed in a contrasting one."""
    base = _jitter(rng.choice(SHIRTS), rng, 8)
    ink = (245, 245, 245) if sum(base) < 420 else (25, 25, 25)
    box = [cx - size * 0.46, top, cx + size * 0.46, top + size * 0.9]
    cloth = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(cloth)
    step = size / 9  # pattern period: about 12 px at the demo's 112 px input
    if pattern == "striped":
        y = top + rng.uniform(0, step)
        while y < size:
            draw.rectangle([0, y, size, y + step * 0.45], fill=ink)
            y += step
    elif pattern == "dotted":
        r = max(1.5, size / 38)
        for row, y in enumerate(range(int(top + step / 2), size + 1, int(step))):
            for x in range(int((row % 2) * step / 2), size + 1, int(step)):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    img.paste(cloth, (0, 0), mask)


def _accessory(draw: ImageDraw.ImageDraw, cx: float, cy: float, fw: float, fh: float, ey: float, dx: float,
               r: float, accessory: str, lw: int) -> None:
    if accessory == "glasses":  # dark rings round both eyes and a bridge
        g = r * 2.1
        for side in (-1, 1):
            x = cx + side * dx
            draw.ellipse([x - g, ey - g * 0.85, x + g, ey + g * 0.85], outline=(15, 15, 15), width=lw)
        draw.line([(cx - dx + g, ey), (cx + dx - g, ey)], fill=(15, 15, 15), width=lw)
    elif accessory == "earrings":  # gold dots hanging at both ears
        e = max(2.0, fw * 0.16)
        for side in (-1, 1):
            x, y = cx + side * fw * 1.02, cy + fh * 0.15
            draw.ellipse([x - e, y - e, x + e, y + e], fill=(255, 205, 0), outline=(150, 110, 0))


def _extended_face(img: Image.Image, size: int, attrs: Dict[str, str], rng: random.Random) -> None:
    """The face with every attribute of :data:`FACE_ATTRIBUTES` drawn (a slightly smaller head above a shirt)."""
    fw = size * rng.uniform(0.27, 0.31)  # half width of the face
    fh = fw * rng.uniform(1.15, 1.25)
    cx = size / 2 + rng.uniform(-0.05, 0.05) * size
    cy = size * rng.uniform(0.39, 0.43)
    _shirt(img, size, cx, cy + fh * 0.72, attrs["pattern"], rng)
    head = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(head)
    hair = _jitter(HAIR_COLOURS[attrs["hair"]], rng, 6)
    draw.ellipse([cx - fw * 1.12, cy - fh * 1.22, cx + fw * 1.12, cy + fh * 0.1], fill=hair)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=_jitter(FITZPATRICK[attrs["fitzpatrick"]], rng, 5))
    draw.chord([cx - fw, cy - fh, cx + fw, cy - fh * 0.2], 180, 360, fill=hair)  # fringe over the forehead
    lw = max(2, size // 45)
    ey, dx, r = _eyes_brows_mouth(draw, size, cx, cy, fw, fh, attrs["expression"])
    _accessory(draw, cx, cy, fw, fh, ey, dx, r, attrs["accessory"], lw + 1)
    # PIL turns counter-clockwise for a positive angle: the top of the head goes to the image's left
    angle = {"upright": rng.uniform(-4, 4), "left": rng.uniform(18, 28), "right": -rng.uniform(18, 28)}[attrs["tilt"]]
    head = head.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    img.paste(head, (0, 0), head)


def draw_face(attrs: Dict[str, str], size: int, rng: random.Random) -> Image.Image:
    """An RGB ``size``×``size`` drawing of ``attrs`` (see :data:`FACE_ATTRIBUTES`). A face whose ``attrs`` hold the
    :data:`EXTENDED_ATTRIBUTES` shows them; one with only expression and skin type is the plain drawing."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _background(draw, size, rng)
    if attrs["is_face"] == "yes" and all(attrs.get(name) for name in EXTENDED_ATTRIBUTES):
        _extended_face(img, size, attrs, rng)
    elif attrs["is_face"] == "yes":
        _face(draw, size, attrs, rng)
    else:
        _scene(draw, size, rng)
    return img


def synthetic_face(seed: int, size: int = 224) -> Image.Image:
    """A deterministic face image for tests: the same ``seed`` always gives the same pixels."""
    rng = random.Random(seed)
    attrs = {"is_face": "yes", "expression": EXPRESSIONS[seed % 4], "fitzpatrick": tuple(FITZPATRICK)[seed % 6]}
    return draw_face(attrs, size, rng)
