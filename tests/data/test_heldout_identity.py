"""Held out means held out: no validation image of any dataset of a run is in any training split, by content.

The datasets are built by the real builders from files on disk; the expected removals are found independently
by hashing every record's image file in the test (brute force), not through the module under test.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
from PIL import Image

from minigpt4.common.config import load_config
from minigpt4.common.registry import registry
from minigpt4.datasets import identity
from minigpt4.datasets.identity import content_key, hold_out_across_datasets, training_overlap
from minigpt4.tasks import setup_task
from minigpt4.tools.data import main as data_main
from minigpt4.tools.synth_faces import synthetic_face

from data_helpers import tiny_processors

REPO = Path(__file__).resolve().parents[2]
N_FACES = 12
N_BMP = 4
SECTIONS = ["Fitzpatrick", "Human or not"]


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bmp(path: Path, seed: int) -> None:
    """A 16x16 BMP: every such file has the same size, whatever its pixels."""
    rng = random.Random(seed)
    img = Image.new("RGB", (16, 16))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(256)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="BMP")


def _turns(q: str, a: str) -> List[Dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]


def write_two_datasets(root: Path, reverse: bool = False) -> Dict[str, Path]:
    """A section file and a ShareGPT list under two image roots. Every face of the section file is also in the
    list under another path (same bytes); the list has images of its own; each side has 16x16 BMPs, all of one
    size but different pixels (equal sizes that must not count as equal images)."""
    gpt_img, share_img = root / "GPT4VisionData" / "Images", root / "ShareGPTData" / "Images"
    gpt_rel, share_rel = [], []
    for k in range(N_FACES):
        (gpt_img / "faces").mkdir(parents=True, exist_ok=True)
        synthetic_face(k, 48).save(gpt_img / f"faces/f_{k:02d}.jpg", format="JPEG", quality=90)
        (share_img / "copies").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gpt_img / f"faces/f_{k:02d}.jpg", share_img / f"copies/c_{k:03d}.jpg")
        synthetic_face(100 + k, 48).save(share_img / f"copies/own_{k:02d}.jpg", format="JPEG", quality=90)
        gpt_rel.append(f"faces/f_{k:02d}.jpg")
        share_rel += [f"copies/c_{k:03d}.jpg", f"copies/own_{k:02d}.jpg"]
    for j in range(N_BMP):
        _bmp(gpt_img / f"bmp/g_{j}.bmp", j)
        _bmp(share_img / f"bmp/s_{j}.bmp", 1000 + j)
        gpt_rel.append(f"bmp/g_{j}.bmp")
        share_rel.append(f"bmp/s_{j}.bmp")
    # every image is in "Human or not", every other one in "Fitzpatrick" too (a stratum must not depend on order)
    chosen = {"Fitzpatrick": gpt_rel[::2], "Human or not": gpt_rel}
    sections = {name: [{"id": f"{name[:3]}-{i}", "image": rel, "conversations": _turns(f"{name}?", f"answer {i}")}
                       for i, rel in enumerate(chosen[name])] for name in SECTIONS}
    # two records for every copied face: record counts and image counts differ
    records = [{"id": f"s{i}", "image": rel, "conversations": _turns("Describe the image.", f"caption {i}")}
               for i, rel in enumerate(share_rel + share_rel[::2])]
    if reverse:
        sections = {name: recs[::-1] for name, recs in reversed(list(sections.items()))}
        records = records[::-1]
    (root / "GPT4VisionData" / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ShareGPTData" / "Annotations").mkdir(parents=True, exist_ok=True)
    gpt_ann = root / "GPT4VisionData" / "Annotations" / "sections.json"
    share_ann = root / "ShareGPTData" / "Annotations" / "list.json"
    gpt_ann.write_text(json.dumps(sections))
    share_ann.write_text(json.dumps(records))
    return {"gpt_ann": gpt_ann, "gpt_images": gpt_img, "share_ann": share_ann, "share_images": share_img}


def build_two(paths: Dict[str, Path]) -> Dict[str, Dict[str, Any]]:
    """Both builders, each with its own validation split, as a run builds them (before the cross-dataset step)."""
    gpt = {"build_info": {"image_path": str(paths["gpt_images"]), "ann_path": str(paths["gpt_ann"])},
           "sections": SECTIONS, "split": {"val_fraction": 0.5, "seed": 1}, **tiny_processors()}
    share = {"build_info": {"image_path": str(paths["share_images"]), "ann_path": str(paths["share_ann"])},
             "split": {"val_fraction": 0.25, "seed": 0}, **tiny_processors()}
    return {"facegpt4vision": registry.get_builder_class("facegpt4vision")(gpt).build_datasets(),
            "sharegpt_face": registry.get_builder_class("sharegpt_face")(share).build_datasets()}


def image_files(ds: Any) -> List[str]:
    return [ds.image_path(i) for i in range(len(ds))]


def held_out_hashes(datasets: Dict[str, Dict[str, Any]]) -> Set[str]:
    return {sha(p) for splits in datasets.values() for split, ds in splits.items() if split != "train"
            for p in image_files(ds)}


def record_keys(ds: Any) -> List[tuple]:
    return sorted((r.image, r.questions, r.answers) for r in ds.annotation)


def test_no_held_out_image_is_trained_on_and_removed_counts_are_exact(tmp_path: Path) -> None:
    datasets = build_two(write_two_datasets(tmp_path))
    held = held_out_hashes(datasets)
    before = {name: image_files(splits["train"]) for name, splits in datasets.items()}
    val_sizes = {Path(p).stat().st_size for s in datasets.values() for k, ds in s.items() if k != "train"
                 for p in image_files(ds)}
    gpt_val_bmps = [p for p in image_files(datasets["facegpt4vision"]["val"]) if p.endswith(".bmp")]
    assert gpt_val_bmps, "precondition: a BMP is held out, so the equal-size BMPs of the list are compared"

    report = hold_out_across_datasets(datasets)

    for name, splits in datasets.items():
        after = image_files(splits["train"])
        assert not {sha(p) for p in after} & held, f"{name}: a held-out image is still in the training split"
        removed = [p for p in before[name] if sha(p) in held]
        got = report.removed[name]
        assert (got.records_before, got.records_removed) == (len(before[name]), len(removed))
        assert got.images_removed == len(set(removed)) == got.by_path + got.by_content
        assert len(after) == len(before[name]) - len(removed)
    share = report.removed["sharegpt_face"]
    assert share.records_removed > share.images_removed > 0, "copies of held-out faces (two records each) go"
    assert share.by_content == share.images_removed and share.by_path == 0, "other paths: found by content"
    assert share.held_out_by == {"facegpt4vision": share.images_removed}
    assert report.removed["facegpt4vision"].held_out_by.get("sharegpt_face", 0) > 0, "and the other way round"
    assert all(ex["match"] == "content" and sha(ex["train"]) == sha(ex["held_out"]) for ex in share.examples)

    share_bmps = [p for p in image_files(datasets["sharegpt_face"]["train"]) if p.endswith(".bmp")]
    assert share_bmps, "BMPs of equal size but other pixels stay in training"
    read = set(identity.read_paths())
    assert {identity.normalised_path(p) for p in share_bmps} <= read, "equal size: compared by content"
    assert not {identity.normalised_path(p) for p in share_bmps} & set(identity.hashed_paths()), \
        "their first bytes differ: not hashed whole"
    unique_size = [p for p in before["sharegpt_face"] if Path(p).stat().st_size not in val_sizes]
    assert unique_size and not {identity.normalised_path(p) for p in unique_size} & read, \
        "a file whose size no held-out image has is never read"


def test_split_does_not_depend_on_record_order(tmp_path: Path) -> None:
    one = build_two(write_two_datasets(tmp_path / "a"))
    two = build_two(write_two_datasets(tmp_path / "b", reverse=True))
    r1, r2 = hold_out_across_datasets(one), hold_out_across_datasets(two)
    for name in one:
        for split in one[name]:
            assert record_keys(one[name][split]) == record_keys(two[name][split]), (name, split)
        assert r1.removed[name].records_removed == r2.removed[name].records_removed


def test_a_dataset_sharing_paths_is_matched_by_path(tmp_path: Path) -> None:
    """Two builds of the same list: every held-out path of one is in the other's training split by path."""
    paths = write_two_datasets(tmp_path)
    cfg = {"build_info": {"image_path": str(paths["share_images"]), "ann_path": str(paths["share_ann"])},
           **tiny_processors()}
    held = registry.get_builder_class("sharegpt_face")({**cfg, "split": {"val_fraction": 0.25, "seed": 0}})
    whole = registry.get_builder_class("sharegpt_face")(cfg)
    datasets = {"a": held.build_datasets(), "b": whole.build_datasets()}
    report = hold_out_across_datasets(datasets)
    val_images = set(image_files(datasets["a"]["val"]))
    assert report.removed["b"].by_path == len(val_images) > 0
    assert not set(image_files(datasets["b"]["train"])) & val_images


@pytest.fixture
def demo_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The demo training config over ``facegpt-data synth --n 40`` (both face builders)."""
    assert data_main(["synth", "--out", str(tmp_path / "data"), "--n", "40", "--size", "32"]) == 0
    monkeypatch.setenv("FACEGPT_DATA", str(tmp_path / "data"))
    return load_config(REPO / "train_configs" / "demo_smollm2.yaml", ["model.llama_model=unused.gguf"],
                       check_paths=False)


def test_demo_config_keeps_every_held_out_face_out_of_sharegpt_training(demo_cfg: Any, tmp_path: Path) -> None:
    plain = {name: registry.get_builder_class(name)(c).build_datasets() for name, c in demo_cfg.datasets.items()}
    held = held_out_hashes(plain)
    contaminated = [p for p in image_files(plain["sharegpt_face"]["train"]) if sha(p) in held]
    assert contaminated, "precondition: the synthetic ShareGPT list repeats held-out faces under other paths"

    task = setup_task(demo_cfg)
    datasets = task.build_datasets(demo_cfg)
    assert held_out_hashes(datasets) == held
    for name, splits in datasets.items():
        assert not {sha(p) for p in image_files(splits["train"])} & held, name
    report = task.heldout_report
    assert report.removed["sharegpt_face"].records_removed == len(contaminated)
    assert report.removed["facegpt4vision"].records_removed == 0, "its own split is already by image"
    assert json.loads(json.dumps(report.as_dict()))["records_removed"] == len(contaminated)

    val = image_files(datasets["facegpt4vision"]["val"])
    train = image_files(datasets["sharegpt_face"]["train"])
    copy_of_train, copy_of_val = tmp_path / "copy_train.jpg", tmp_path / "copy_val.jpg"
    shutil.copyfile(train[0], copy_of_train)
    shutil.copyfile(val[0], copy_of_val)
    asked = [str(copy_of_val), train[1], str(copy_of_train)] + val[1:4]
    assert training_overlap(demo_cfg, asked, datasets) == [train[1], str(copy_of_train)]
    assert training_overlap(demo_cfg, val) == [], "built again from the config: the same answer"


def test_content_key_is_the_sha256_of_the_bytes_and_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"first")
    assert content_key(str(path)) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")
    assert content_key(str(path)) == hashlib.sha256(b"second, longer").hexdigest(), "cache keyed by size/mtime"


def test_equal_size_and_equal_head_still_compared_whole(tmp_path: Path) -> None:
    """Files that agree in size and in their first HEAD_BYTES bytes are told apart by their whole bytes."""
    head = bytes(range(256)) * (identity.HEAD_BYTES // 256)
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "sub" / "c.jpg"
    c.parent.mkdir()
    a.write_bytes(head + b"tail A")
    b.write_bytes(head + b"tail B")
    c.write_bytes(head + b"tail A")
    keys = identity.identity_keys([str(a), str(b), str(c)])
    norm = identity.normalised_path
    assert keys[norm(str(a))] == keys[norm(str(c))] != keys[norm(str(b))]
    index = identity.ImageIndex([(str(a), "held")])
    assert index.match(str(b)) is None
    assert index.match(str(c)) == ("content", str(a), "held")
    assert index.match(str(tmp_path / "sub" / ".." / "a.jpg")) == ("path", str(a), "held")


def test_a_streamed_split_is_named_not_passed_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A split that streams its records (shards) cannot be compared: the report and the log name it."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(())

    datasets = build_two(write_two_datasets(tmp_path))
    datasets["streamed"] = {"train": Stream(), "val": Stream()}
    with caplog.at_level("WARNING", logger="facegpt"):
        report = hold_out_across_datasets(datasets)
    assert report.unchecked == ["streamed.val", "streamed.train"]
    assert "streamed.val, streamed.train stream(s) records without listing them" in caplog.text
    assert report.removed["sharegpt_face"].records_removed > 0, "the listed datasets are still compared"
