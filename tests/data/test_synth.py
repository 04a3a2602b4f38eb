"""The synthetic generator's extended attributes: drawn where they should be, recorded, and parsed back."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import yaml
from PIL import Image

from minigpt4.evaluation.labels import load_label_maps, section_key
from minigpt4.tools.data import main
from minigpt4.tools.data_synth import LABEL_MAP_DIR, SECTION_ATTRIBUTE, SECTION_FILE, label_map_documents
from minigpt4.tools.synth_faces import (ANSWERS, EXTENDED_ATTRIBUTES, FACE_ATTRIBUTES, FITZPATRICK, HAIR_COLOURS,
                                        LABEL_WORDS, draw_face, label_from_answer)

SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_ext")
    assert main(["synth", "--out", str(out), "--n", "48", "--seed", "5", "--size", str(SIZE)]) == 0
    return out


def _face(**changes: str) -> Dict[str, str]:
    attrs = {"is_face": "yes", "expression": "neutral", "fitzpatrick": "III", "hair": "black", "accessory": "none",
             "tilt": "upright", "pattern": "plain"}
    attrs.update(changes)
    return attrs


def _pixels(attrs: Dict[str, str], seed: int, size: int = 96) -> np.ndarray:
    return np.asarray(draw_face(attrs, size, random.Random(seed)), dtype=np.float32)  # (S, S, 3)


def _palette_vote(img: np.ndarray, palette: Dict[str, tuple], tol: float = 14.0) -> str:
    """The palette entry that most pixels lie within ``tol`` of (a colour region measured in the image)."""
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(img.reshape(-1, 1, 3) - colours[None], axis=-1)  # (H*W, K)
    near = dist.min(1) < tol
    return names[int(np.bincount(dist.argmin(1)[near], minlength=len(names)).argmax())]


def test_colour_regions_are_recoverable_from_the_saved_images(synth: Path) -> None:
    """Skin type and hair colour: the palette colour covering most pixels is the recorded label (JPEG and all)."""
    meta = json.loads((synth / "metadata.json").read_text())
    faces = [im for im in meta["images"] if im["attributes"]["is_face"] == "yes"]
    assert len(faces) > 24
    for attr, palette in (("fitzpatrick", FITZPATRICK), ("hair", HAIR_COLOURS)):
        hits = [_palette_vote(np.asarray(Image.open(synth / "GPT4VisionData" / "Images" /
                                                    im["paths"]["GPT4VisionData"]).convert("RGB"), np.float32),
                              palette) == im["attributes"][attr] for im in faces]
        assert np.mean(hits) > 0.95, (attr, np.mean(hits))


def test_hair_is_a_region_of_its_colour() -> None:
    """Only the hair changes with the hair attribute (same seed), over a sizeable region, in the named colour."""
    for seed in range(4):
        black, blond = _pixels(_face(hair="black"), seed), _pixels(_face(hair="blond"), seed)
        changed = np.abs(black - blond).sum(-1) > 60  # (S, S)
        assert 0.04 < changed.mean() < 0.3
        assert np.abs(np.median(blond[changed], 0) - HAIR_COLOURS["blond"]).max() < 12


def test_accessories_are_small_objects_of_their_own_colour() -> None:
    for seed in range(4):
        plain = _pixels(_face(accessory="none"), seed)
        for accessory, colour in (("glasses", (15, 15, 15)), ("earrings", (255, 205, 0))):
            img = _pixels(_face(accessory=accessory), seed)
            changed = np.abs(img - plain).sum(-1) > 60
            assert 0.002 < changed.mean() < 0.05, (accessory, changed.mean())  # small, but there
            assert (np.linalg.norm(img[changed] - colour, axis=-1) < 40).mean() > 0.4


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_tilt_moves_the_top_of_the_head_to_the_named_side() -> None:
    """Hair (the top of the head) lies left of the skin's centre for "left", right of it for "right"."""
    for seed in range(4):
        offsets = {}
        for tilt in EXTENDED_ATTRIBUTES["tilt"]:
            a, b = _pixels(_face(tilt=tilt, hair="black"), seed), _pixels(_face(tilt=tilt, hair="blond"), seed)
            skin_a, skin_b = _pixels(_face(tilt=tilt, fitzpatrick="I"), seed), _pixels(_face(tilt=tilt,
                                                                                              fitzpatrick="VI"), seed)
            hair = np.abs(a - b).sum(-1) > 60
            skin = np.abs(skin_a - skin_b).sum(-1) > 60
            offsets[tilt] = _centroid_x(hair) - _centroid_x(skin)
        assert offsets["left"] < -3 and offsets["right"] > 3 and abs(offsets["upright"]) < 3, offsets


def test_shirt_patterns_are_textures_below_the_face() -> None:
    """Plain: one colour; striped: full-width rows of the print colour; dotted: print colour in no full row."""
    for seed in range(4):
        plain = _pixels(_face(pattern="plain"), seed)
        bottom = slice(int(96 * 0.85), 96)
        middle = slice(int(96 * 0.38), int(96 * 0.62))  # always inside the shirt
        for pattern in EXTENDED_ATTRIBUTES["pattern"]:
            img = _pixels(_face(pattern=pattern), seed)
            printed = (np.abs(img - plain).sum(-1) > 60)[bottom, middle]  # (rows, cols)
            if pattern == "plain":
                assert not printed.any()
                continue
            assert printed.mean() > 0.05
            full_rows = printed.all(axis=1).sum()
            assert (full_rows > 0) == (pattern == "striped"), (pattern, full_rows)


def test_metadata_records_every_attribute_with_chance_and_majority(synth: Path) -> None:
    meta = json.loads((synth / "metadata.json").read_text())
    assert meta["attributes"] == {k: list(v) for k, v in FACE_ATTRIBUTES.items()}
    for im in meta["images"]:
        face = im["attributes"]["is_face"] == "yes"
        assert set(im["attributes"]) == set(FACE_ATTRIBUTES)
        assert all(bool(im["attributes"][a]) == face for a in FACE_ATTRIBUTES if a != "is_face")
    for attr, values in FACE_ATTRIBUTES.items():
        counts = meta["counts"][attr]
        assert meta["chance"][attr] == pytest.approx(1 / len(values))
        assert meta["majority"][attr] == pytest.approx(max(counts.values()) / sum(counts.values()))
    sections = json.loads((synth / SECTION_FILE).read_text())
    for section in ("Hair Color", "Accessories", "Posture", "Clothing Pattern"):
        assert len(sections[section]) == sum(im["attributes"]["is_face"] == "yes" for im in meta["images"])


def test_label_maps_parse_every_synthetic_answer_to_its_label(synth: Path) -> None:
    """One map per closed-set section, in the facegpt-eval layout; through the evaluation's loader (over the shipped
    maps) each parses every answer of its section to the image's label, as label_from_answer does."""
    folder = synth / LABEL_MAP_DIR
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}
    assert docs == label_map_documents()
    closed = {s.strip(): a for s, a in SECTION_ATTRIBUTE.items() if a}
    assert {d["section"] for d in docs.values()} == set(closed)
    maps = {section_key(k): v for k, v in load_label_maps([folder]).items()}
    meta = json.loads((synth / "metadata.json").read_text())
    by_path = {im["paths"]["GPT4VisionData"]: im["attributes"] for im in meta["images"]}
    sections = json.loads((synth / SECTION_FILE).read_text())
    for section, attr in SECTION_ATTRIBUTE.items():
        if attr is None:
            continue
        for rec in sections[section]:
            answer, truth = rec["conversations"][1]["value"], by_path[rec["image"]][attr]
            assert label_from_answer(attr, answer) == truth
            assert maps[section_key(section)].parse(answer) == truth, (section, answer)
    for attr, answers in ANSWERS.items():  # every template, including labels the small set may not draw
        for label, answer in answers.items():
            assert label_from_answer(attr, answer) == label
    assert label_from_answer("hair", "black or blond hair") is None and set(LABEL_WORDS) == set(ANSWERS)
