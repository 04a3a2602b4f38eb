"""Data tools: synth → stats consistency, clean, validate, split, the learnability of synthetic data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minigpt4.tools.data import main
from minigpt4.tools.data_synth import SECTION_FILE, SHAREGPT_FILES
from minigpt4.tools.synth_faces import ANSWERS, FACE_ATTRIBUTES, FITZPATRICK, label_from_answer


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--n", "60", "--seed", "3", "--size", "64"]) == 0
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_synth_layout_sections_and_determinism(synth_root, tmp_path) -> None:
    sections = json.loads((synth_root / SECTION_FILE).read_text())
    assert list(sections)[0] == "Pre-Prompt" and "Facial Characteristics Short " in sections
    assert sections["Multi-Person Interaction"] == [] and len(sections["Pre-Prompt"]) == 4
    share = [json.loads((synth_root / f).read_text()) for f in SHAREGPT_FILES]
    ids = [r["id"] for lst in share for r in lst]
    assert any(isinstance(i, int) for i in ids) and any(isinstance(i, str) for i in ids)
    firsts = [r["conversations"][0]["value"] for lst in share for r in lst]
    assert any(v.startswith("<image>") for v in firsts) and any(v.endswith("<image>") for v in firsts)
    assert any(len(r["conversations"]) > 2 for lst in share for r in lst)
    meta = json.loads((synth_root / "metadata.json").read_text())
    assert len(meta["images"]) == 60 and set(meta["chance"]) == set(FACE_ATTRIBUTES) == set(meta["majority"])
    main(["synth", "--out", str(tmp_path / "again"), "--n", "60", "--seed", "3", "--size", "64"])
    assert _digest(tmp_path / "again") == _digest(synth_root)


def test_synth_answers_match_the_drawn_attributes(synth_root) -> None:
    meta = json.loads((synth_root / "metadata.json").read_text())
    by_path = {im["paths"]["GPT4VisionData"]: im["attributes"] for im in meta["images"]}
    sections = json.loads((synth_root / SECTION_FILE).read_text())
    checked = 0
    for section, attr in meta["section_attribute"].items():
        for rec in sections[section] if attr else []:
            truth = by_path[rec["image"]][attr]
            assert label_from_answer(attr, rec["conversations"][1]["value"]) == truth
            checked += 1
    assert checked > 60
    assert label_from_answer("fitzpatrick", "Fitzpatrick type IV.") == "IV"
    assert label_from_answer("is_face", ANSWERS["is_face"]["no"]) == "no"
    assert label_from_answer("expression", "happy or sad") is None


def test_stats_counts_match_what_synth_wrote(synth_root, tmp_path, capsys) -> None:
    chart = tmp_path / "sections.png"
    assert main(["stats", "--root", str(synth_root), "--json", "--chart", str(chart)]) == 0
    stats = json.loads(capsys.readouterr().out)
    meta = json.loads((synth_root / "metadata.json").read_text())
    for name, info in meta["files"].items():
        got = stats["files"][name]
        assert (got["records"], got["unique_images"], got["malformed"]) == (info["records"], info["unique_images"], 0)
        if "sections" in info:
            assert {k: v["records"] for k, v in got["sections"].items()} == info["sections"]
        assert got["image_check"]["missing"] == [] and got["refusal_rate"] == 0.0
    assert stats["overlap"]["pairs"][0]["shared_images"] == meta["sharegpt_shared_images"] == 12
    assert Image.open(chart).size[0] > 100
    assert main(["stats", "--root", str(synth_root)]) == 0
    table = capsys.readouterr().out
    assert "Facial Characteristics Short" in table and "shared by all: 12" in table


def test_clean_drops_refusals_and_duplicates_without_touching_the_input(fixtures_dir, tmp_path, capsys) -> None:
    src = tmp_path / "in" / "Annotations" / "refusals.json"
    src.parent.mkdir(parents=True)
    shutil.copy(fixtures_dir / "refusals.json", src)
    before = src.read_bytes()
    assert main(["clean", str(src), "--out-dir", str(tmp_path / "out")]) == 0
    assert src.read_bytes() == before
    kept = json.loads((tmp_path / "out" / "refusals.clean.json").read_text())
    assert [r["id"] for r in kept] == [2, 3, 5]
    assert kept[0]["conversations"][1]["value"] == "The person has short dark hair and smiles warmly at the camera."
    assert kept[2]["conversations"] == [{"from": "human", "value": "<image>\nWhat is the expression?"},
                                         {"from": "gpt", "value": "The person looks surprised."}]
    report = json.loads((tmp_path / "out" / "clean_report.json").read_text())[0]["totals"]
    assert report == {"records": 6, "kept": 3, "dropped_refusal": 2, "dropped_duplicate": 1, "stripped_answers": 1,
                      "passthrough": 0}
    assert "refusals" in capsys.readouterr().out


def test_clean_keeps_sections_and_their_names(data_root, tmp_path) -> None:
    assert main(["clean", str(data_root["gpt_ann"]), "--out-dir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "sections_good.clean.json").read_text())
    original = json.loads(data_root["gpt_ann"].read_text())
    assert out == original, "nothing to clean: same sections (trailing spaces kept), same records"


def test_validate_exit_codes(data_root, fixtures_dir, capsys) -> None:
    assert main(["validate", "--root", str(data_root["root"])]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    (data_root["gpt_images"] / "synth" / "face_c.jpg").unlink()
    (data_root["share_images"] / "sam" / "images" / "sa_000003.jpg").write_bytes(b"garbage")
    assert main(["validate", "--root", str(data_root["root"])]) == 1
    out = capsys.readouterr().out
    assert "image not found" in out and "face_c.jpg" in out and "sa_000003" not in out
    assert main(["validate", "--root", str(data_root["root"]), "--decode"]) == 1
    assert "cannot decode image" in capsys.readouterr().out
    bad = data_root["share_ann"].with_name("bad.json")
    shutil.copy(fixtures_dir / "sharegpt_malformed.json", bad)
    assert main(["validate", str(bad), "--image-root", str(data_root["share_images"]), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)[0]
    assert any("record #1: odd turn order" in p for p in result["problems"])
    shutil.copy(fixtures_dir / "sharegpt_bad_syntax.json", bad)
    assert main(["validate", str(bad)]) == 1
    assert "bad.json:3:12: invalid JSON" in capsys.readouterr().out


def test_split_is_joint_by_image_and_stratified(synth_root, tmp_path, capsys) -> None:
    files = [str(synth_root / f) for f in SHAREGPT_FILES] + [str(synth_root / SECTION_FILE)]
    assert main(["split", *files, "--out-dir", str(tmp_path), "--val-fraction", "0.25", "--seed", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    sides = {"train": set(), "val": set()}
    for src in files:
        stem = Path(src).stem
        n_out = 0
        for side in sides:
            data = json.loads((tmp_path / f"{stem}.{side}.json").read_text())
            recs = data if isinstance(data, list) else [r for v in data.values() for r in v]
            sides[side] |= {r["image"] for r in recs if "image" in r}
            n_out += len(recs)
        info = report["files"][src]
        assert info["train"] + info["val"] == n_out
    assert sides["val"] and not sides["train"] & sides["val"], "an image never lands on both sides, across files"
    sections = json.loads((tmp_path / "gpt4VisionCalls_Cleaned_BySection.val.json").read_text())
    assert "Facial Characteristics Short " in sections and sections["Multi-Person Interaction"] == []
    fitz = len(sections["Fitzpatrick"])
    total_fitz = len(json.loads((synth_root / SECTION_FILE).read_text())["Fitzpatrick"])
    assert 0 < fitz < total_fitz


def test_synthetic_images_are_learnable_from_pixels(synth_root) -> None:
    """The answers are in the image: face / no face from a nearest-centroid classifier on raw pixels, the skin type
    from the palette colour most of the image's pixels are close to (tests/data/test_synth.py: every attribute)."""
    meta = json.loads((synth_root / "metadata.json").read_text())
    feats, is_face, skin_votes, skin = [], [], [], []
    palette = np.array(list(FITZPATRICK.values()), dtype=np.float32)
    for im in meta["images"]:
        img = Image.open(synth_root / "GPT4VisionData" / "Images" / im["paths"]["GPT4VisionData"]).convert("RGB")
        feats.append(np.asarray(img.resize((16, 16)), dtype=np.float32).ravel() / 255)
        is_face.append(im["attributes"]["is_face"])
        if im["attributes"]["fitzpatrick"]:
            pixels = np.asarray(img, dtype=np.float32).reshape(-1, 3)  # (H*W, 3)
            dist = np.linalg.norm(pixels[:, None, :] - palette[None], axis=-1)  # (H*W, 6)
            near = dist.min(1) < 14
            skin_votes.append(list(FITZPATRICK)[np.bincount(dist.argmin(1)[near], minlength=6).argmax()])
            skin.append(im["attributes"]["fitzpatrick"])
    x, y = np.stack(feats), np.array(is_face)
    half = len(y) // 2
    centroids = np.stack([x[:half][y[:half] == c].mean(0) for c in ("yes", "no")])
    pred = np.array(["yes", "no"])[((x[half:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert (pred == y[half:]).mean() > meta["majority"]["is_face"] + 0.1
    assert np.mean(np.array(skin_votes) == np.array(skin)) > 0.9, (skin_votes, skin)
