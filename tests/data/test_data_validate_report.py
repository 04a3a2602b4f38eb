"""``facegpt-data validate`` on a data root built with the faults of issue 10, points 1, 2 and 5."""

from __future__ import annotations

import json
from pathlib import Path

from minigpt4.tools.data import main

from data_helpers import write_images

HUMAN = {"from": "human", "value": "<image>\nHow does the person feel?"}
GPT = {"from": "gpt", "value": "The person looks calm."}


def _rec(k: int, image: str, turns=None) -> dict:
    return {"id": k, "image": image, "conversations": turns or [HUMAN, GPT]}


def _faulty_root(root: Path) -> Path:
    """ShareGPTData: a list file with every kind of fault, and a file with a trailing comma;
    GPT4VisionData: a section file with a section that is not a list, a bad record and a duplicate."""
    share = root / "ShareGPTData"
    write_images(share / "Images", ["faces/a.jpg", "faces/b.jpg"])
    write_images(root, ["outside.jpg"])  # a real image outside the image root
    records = [
        _rec(0, "faces/a.jpg"),
        {"id": 1, "conversations": [HUMAN, GPT]},  # no image
        _rec(2, "faces/b.jpg", [GPT, HUMAN]),  # starts with the assistant
        _rec(3, "../../outside.jpg"),  # climbs out of the image root
        _rec(4, "/etc/passwd"),  # absolute, elsewhere
        _rec(5, "faces/a.jpg"),  # exact duplicate of #0
        _rec(6, "faces/missing.jpg"),  # missing image
        _rec(7, "faces/./a.jpg"),  # exact duplicate of #0 (same file after normpath)
    ]
    (share / "Annotations").mkdir(parents=True)
    (share / "Annotations" / "faces.json").write_text(json.dumps(records, indent=1))
    (share / "Annotations" / "trailing_comma.json").write_text('[\n {"id": 1, "image": "faces/a.jpg"},\n]\n')
    gpt = root / "GPT4VisionData"
    write_images(gpt / "Images", ["f/c.jpg"])
    sections = {"Pre-Prompt": ["Describe the face."], "Race": {"not": "a list"},
                "Fitzpatrick": [_rec(10, "f/c.jpg"), _rec(11, "f/c.jpg"), {"id": 12, "image": "f/c.jpg"}],
                "Gender": [_rec(13, "f/../../../ShareGPTData/Images/faces/a.jpg")]}
    (gpt / "Annotations").mkdir(parents=True)
    (gpt / "Annotations" / "sections.json").write_text(json.dumps(sections, indent=1))
    return root


def test_validate_reports_malformed_records_outside_paths_and_duplicates(tmp_path, capsys) -> None:
    root = _faulty_root(tmp_path / "data")
    assert main(["validate", "--root", str(root), "--json"]) == 1
    results = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    faces, comma, sections = results["faces.json"], results["trailing_comma.json"], results["sections.json"]

    assert faces["counts"] == {"file_errors": 0, "malformed_records": 2, "outside_root": 2, "missing_images": 1,
                               "undecodable_images": 0, "exact_duplicates": 2}
    problems = "\n".join(faces["problems"])
    assert "faces.json record #1: missing key 'image'" in problems
    assert "faces.json record #2: odd turn order: turn 0 is from 'gpt'" in problems
    assert "faces.json record #3: image path '../../outside.jpg' lands outside the image root" in problems
    assert "faces.json record #4: image path '/etc/passwd' lands outside the image root" in problems
    assert "faces.json record #6: image not found" in problems
    assert faces["duplicates"] == [f"{root}/ShareGPTData/Annotations/faces.json record #{k} repeats "
                                   f"{root}/ShareGPTData/Annotations/faces.json record #0 (same image and turns)"
                                   for k in (5, 7)]

    assert comma["counts"]["file_errors"] == 1 and "trailing_comma.json:3:" in comma["problems"][0]

    assert sections["counts"]["file_errors"] == 1 and sections["counts"]["malformed_records"] == 1
    assert sections["counts"]["outside_root"] == 1 and sections["counts"]["exact_duplicates"] == 1
    assert any("section 'Race' is dict, expected a list of records" in p for p in sections["problems"])
    assert any("sections.json['Fitzpatrick'] record #2: missing key 'conversations'" in p
               for p in sections["problems"])
    assert any("sections.json['Gender'] record #0: image path" in p for p in sections["problems"]), \
        "records after a section that is not a list are still checked"
    assert "sections.json['Fitzpatrick'] record #1 repeats" in sections["duplicates"][0]


def test_validate_text_report_prints_counts_and_locations(tmp_path, capsys) -> None:
    root = _faulty_root(tmp_path / "data")
    assert main(["validate", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert ("malformed records 2, outside root 2, missing images 1, undecodable images 0, exact duplicates 2"
            in out)
    assert "ERROR" in out and "record #4: image path '/etc/passwd' lands outside" in out
    assert "note: " in out and "faces.json record #5 repeats" in out


def test_stats_lists_outside_paths_without_opening_them(tmp_path, capsys) -> None:
    root = _faulty_root(tmp_path / "data")
    faces = root / "ShareGPTData" / "Annotations" / "faces.json"
    assert main(["stats", str(faces), "--json", "--check-images", "decode"]) == 0
    check = json.loads(capsys.readouterr().out)["files"]["faces.json"]["image_check"]
    assert sorted(check["outside_root"]) == ["../../outside.jpg", "/etc/passwd"]
    assert check["missing"] == ["faces/missing.jpg"] and check["undecodable"] == []
