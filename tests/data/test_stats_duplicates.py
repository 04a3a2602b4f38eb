"""``facegpt-data stats`` shows images that two files share by content (same bytes, any path).

The expected counts are found by hashing every image file named in each annotation file (brute force, in the
test), not through the code under test.
"""

from __future__ import annotations

import hashlib
import json
import random
from itertools import combinations
from pathlib import Path
from typing import Dict, Set

import pytest
from PIL import Image

from minigpt4.tools.data import main as data_main


def _bmp(path: Path, seed: int) -> None:
    """A 16x16 BMP: all of them have one size, whatever their pixels."""
    rng = random.Random(seed)
    img = Image.new("RGB", (16, 16))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="BMP")


def _add_records(ann: Path, rels, section: str = "") -> None:
    """Append one record per image to a ShareGPT list (or to ``section`` of a section file)."""
    data = json.loads(ann.read_text())
    recs = [{"id": f"bmp-{k}", "image": rel, "conversations": [
        {"from": "human", "value": "<image>\nIs this a human face?"},
        {"from": "gpt", "value": "No, this is not a human face."}]} for k, rel in enumerate(rels)]
    (data[section] if section else data).extend(recs)
    ann.write_text(json.dumps(data))


@pytest.fixture
def data_with_bmps(tmp_path: Path) -> Path:
    """``facegpt-data synth --n 12`` plus equal-size, different-pixel BMPs in every file; one BMP of the section
    file is repeated under a second path there and under a third path in the first ShareGPT list."""
    root = tmp_path / "data"
    assert data_main(["synth", "--out", str(root), "--n", "12", "--size", "32"]) == 0
    gpt_img, share_img = root / "GPT4VisionData" / "Images", root / "ShareGPTData" / "Images"
    _bmp(gpt_img / "bmp/a.bmp", 1)
    (gpt_img / "bmp/a_again.bmp").write_bytes((gpt_img / "bmp/a.bmp").read_bytes())
    _bmp(share_img / "bmp/b.bmp", 2)
    _bmp(share_img / "bmp/c.bmp", 3)
    (share_img / "bmp/a_copy.bmp").write_bytes((gpt_img / "bmp/a.bmp").read_bytes())
    _add_records(root / "GPT4VisionData/Annotations/gpt4VisionCalls_Cleaned_BySection.json",
                 ["bmp/a.bmp", "bmp/a_again.bmp"], section="Human or not")
    anns = sorted((root / "ShareGPTData" / "Annotations").glob("*.json"))
    _add_records(anns[0], ["bmp/b.bmp", "bmp/a_copy.bmp"])
    _add_records(anns[1], ["bmp/c.bmp"])
    return root


def _hashes_by_file(root: Path) -> Dict[str, Dict[str, Set[str]]]:
    """``{file name: {sha256: paths as written}}`` of every image each annotation file names."""
    out: Dict[str, Dict[str, Set[str]]] = {}
    for ann in sorted(root.glob("*/Annotations/*.json")):
        data = json.loads(ann.read_text())
        records = data if isinstance(data, list) else [r for v in data.values() for r in v]
        by_hash: Dict[str, Set[str]] = {}
        for rec in records:
            if isinstance(rec.get("image"), str):
                digest = hashlib.sha256((ann.parent.parent / "Images" / rec["image"]).read_bytes()).hexdigest()
                by_hash.setdefault(digest, set()).add(rec["image"])
        out[ann.name] = by_hash
    return out


def test_stats_counts_images_shared_by_content_per_pair_of_files(data_with_bmps: Path, capsys) -> None:
    assert data_main(["stats", "--root", str(data_with_bmps), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["content_duplicates"]
    truth = _hashes_by_file(data_with_bmps)
    roots = {ann.name: ann.parent.parent / "Images" for ann in data_with_bmps.glob("*/Annotations/*.json")}
    pairs = {(p["a"], p["b"]): p for p in got["pairs"]}
    assert set(pairs) == set(combinations(sorted(truth), 2))
    for (a, b), pair in pairs.items():
        shared = set(truth[a]) & set(truth[b])
        other = [h for h in shared if not truth[a][h] & truth[b][h]]
        assert (pair["shared_images"], pair["other_path"]) == (len(shared), len(other)), (a, b)
        for x, y in pair["examples"]:
            assert (roots[a] / x).read_bytes() == (roots[b] / y).read_bytes() and x != y
    section_file = "gpt4VisionCalls_Cleaned_BySection.json"
    assert got["within"][section_file] == 1, "a.bmp and a_again.bmp: one repeated image"
    assert all(n == 0 for name, n in got["within"].items() if name != section_file)
    list0 = sorted(p.name for p in (data_with_bmps / "ShareGPTData" / "Annotations").glob("*.json"))[0]
    assert pairs[(section_file, list0)]["examples"][0] == ["bmp/a.bmp", "bmp/a_copy.bmp"], \
        "examples sorted by path; the equal-size BMPs b.bmp and c.bmp are in no pair"


def test_stats_table_names_the_pairs_and_an_example(data_with_bmps: Path, capsys) -> None:
    assert data_main(["stats", "--root", str(data_with_bmps)]) == 0
    out = capsys.readouterr().out
    assert "Images with the same bytes in two files" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("gpt4VisionCalls") and "synth/img_" in ln)
    assert "= sam/images/" in line or "= coco/train2017/" in line
    assert "1 image path(s) repeat the bytes of another path in the same file" in out


def test_stats_reads_no_image_bytes_with_check_images_none(data_with_bmps: Path, capsys) -> None:
    assert data_main(["stats", "--root", str(data_with_bmps), "--json", "--check-images", "none"]) == 0
    assert "content_duplicates" not in json.loads(capsys.readouterr().out)
