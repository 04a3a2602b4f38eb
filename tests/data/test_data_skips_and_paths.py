"""Image paths stay inside the image root; skipped images shrink the batch; exact duplicates are counted.

Every fault is built by the test: records that climb out of the image root (``..``, an absolute path,
``/etc/passwd``) next to a real image outside the root that would decode fine, a symlinked folder inside the
root, missing images, duplicated records.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from minigpt4.common.config import load_config
from minigpt4.common.registry import registry
from minigpt4.datasets.datasets.collate import SkippedSample
from minigpt4.processors.image_io import ImagePathError, open_image
from minigpt4.runners.loaders import ResumableLoader

from data_helpers import tiny_processors, write_images


def _record(k: int, image: str, answer: str = "") -> dict:
    return {"id": k, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is the expression?"},
        {"from": "gpt", "value": answer or "The person looks happy."}]}


def _build(images: Path, ann, **extra) -> dict:
    files = [str(a) for a in ann] if isinstance(ann, list) else str(ann)
    cfg = {"build_info": {"image_path": str(images), "ann_path": files}, **tiny_processors(), **extra}
    return registry.get_builder_class("sharegpt_face")(cfg).build_datasets()


@pytest.fixture
def escaping_root(tmp_path: Path) -> dict:
    """Images/ with two good images and a symlinked folder; outside.png beside Images/ decodes fine."""
    images, elsewhere = tmp_path / "Images", tmp_path / "mounted_elsewhere"
    write_images(images, ["faces/a.jpg", "faces/b.jpg"])
    write_images(elsewhere, ["c.jpg"])
    os.symlink(elsewhere, images / "sam", target_is_directory=True)  # a mount inside the root, target outside
    outside = tmp_path / "outside.png"
    write_images(tmp_path, ["outside.png"])
    records = [_record(0, "faces/a.jpg"), _record(1, "../outside.png"), _record(2, str(outside)),
               _record(3, "/etc/passwd"), _record(4, "sam/c.jpg"), _record(5, "faces/../faces/b.jpg"),
               _record(6, "faces/../../outside.png")]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(records))
    return {"images": images, "ann": ann, "outside": outside}


def test_paths_outside_the_root_are_refused_before_any_open(escaping_root, caplog, monkeypatch) -> None:
    open_image(escaping_root["outside"])  # the outside file is a valid image: only the path check refuses it
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        ds = _build(escaping_root["images"], escaping_root["ann"])["train"]
    assert "4 record(s) name an image outside the image root" in caplog.text
    assert "ann.json record #1: '../outside.png'" in caplog.text
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        items = [ds[i] for i in range(len(ds))]
    monkeypatch.setattr(builtins, "open", real_open)
    refused = [it for it in items if isinstance(it, SkippedSample)]
    assert [it.index for it in refused] == [1, 2, 3, 6]
    assert all("outside the image root" in it.reason for it in refused)
    assert str(escaping_root["images"] / "faces" / "a.jpg") in opened, "the spy sees the files that are opened"
    assert str(escaping_root["outside"]) not in opened and "/etc/passwd" not in opened
    assert [it["image_id"] for it in items if isinstance(it, dict)] == ["0", "4", "5"], "the symlinked folder works"
    assert "ann.json record #3: image path '/etc/passwd' lands outside" in caplog.text
    assert ds.collater(items)["skipped"] == 4


def test_strict_images_makes_an_outside_path_a_one_line_user_error(escaping_root) -> None:
    errors = pytest.importorskip("minigpt4.common.errors")
    with pytest.raises(ImagePathError) as err:
        _build(escaping_root["images"], escaping_root["ann"], strict_images=True)
    msg = errors.one_line(err.value)
    assert errors.is_user_error(err.value) and "\n" not in str(err.value)
    assert "4 record(s) name an image outside the image root" in msg and "strict_images is on" in msg
    assert "ann.json record #1: '../outside.png'" in msg and "(and 1 more)" in msg


def test_cc_sbu_image_ids_cannot_climb_out(tmp_path) -> None:
    storage = tmp_path / "cc_sbu_align"
    write_images(storage / "image", ["1.jpg"])
    write_images(tmp_path, ["escape.jpg"])
    anns = [{"image_id": "1", "caption": "A face."}, {"image_id": "../../escape", "caption": "Out."}]
    (storage / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    ds = registry.get_builder_class("cc_sbu_align")({"build_info": {"storage": str(storage)},
                                                      **tiny_processors()}).build_datasets()["train"]
    assert ds[0]["image_id"] == "1"
    assert isinstance(ds[1], SkippedSample) and "outside the image root" in ds[1].reason


def test_every_record_is_seen_at_most_once_per_pass_with_missing_images(tmp_path) -> None:
    names = [f"faces/{k:02d}.jpg" for k in range(10)]
    write_images(tmp_path / "Images", names)
    missing = {2, 3, 7}
    for k in missing:
        (tmp_path / "Images" / names[k]).unlink()
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([_record(k, name) for k, name in enumerate(names)]))
    ds = _build(tmp_path / "Images", ann)["train"]
    loader = ResumableLoader("faces", ds, batch_size=2, num_workers=1, seed=3, rank=0, world_size=1,
                             collate_fn=ds.collater)
    batches = [next(loader) for _ in range(len(loader))]  # one pass = one epoch of this loader
    seen = Counter(i for b in batches for i in b.get("image_id", []))
    assert set(seen.values()) == {1} and set(seen) == {str(k) for k in range(10) if k not in missing}
    assert sum(b["skipped"] for b in batches) == len(missing)
    assert sorted(len(b.get("image_id", [])) for b in batches) == sorted(
        2 - sum(int(i) in missing for i in pair) for pair in _pairs(loader, len(batches)))


def _pairs(loader: ResumableLoader, n: int) -> list:
    """The record indices of the first ``n`` batches of pass 0 (the same seeded order the loader used)."""
    from minigpt4.runners.loaders import ShardedSampler

    order = list(ShardedSampler(len(loader.dataset), rank=0, world_size=1, seed=loader.seed, pass_index=0,
                                shuffle=True))
    return [order[2 * b: 2 * b + 2] for b in range(n)]


def test_exact_duplicates_are_counted_per_file_with_keep_all(tmp_path, caplog) -> None:
    write_images(tmp_path / "Images", ["a.jpg", "b.jpg"])
    first = [_record(0, "a.jpg"), _record(1, "b.jpg"), _record(2, "a.jpg"), _record(3, "./a.jpg")]
    second = [_record(9, "b.jpg"), _record(8, "b.jpg", answer="A different answer.")]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps(first))
    two.write_text(json.dumps(second))
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        ds = _build(tmp_path / "Images", [str(one), str(two)])["train"]
    assert len(ds) == 6, "keep_all keeps every copy"
    lines = [r.getMessage() for r in caplog.records if "exact duplicate" in r.getMessage()]
    assert len(lines) == 2
    assert f"{one} holds 2 exact duplicate record(s)" in lines[0] and "one.json record #2 repeats" in lines[0]
    assert f"{two} holds 1 exact duplicate record(s)" in lines[1] and "one.json record #1" in lines[1]


def test_alpha_is_settable_from_yaml_and_options(tmp_path, data_root) -> None:
    (tmp_path / "llama").mkdir()
    (tmp_path / "vit.pth").write_bytes(b"")
    entry = {"build_info": {"image_path": str(data_root["share_images"]), "ann_path": str(data_root["share_ann"])},
             "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 32, "alpha": "upstream"}}}
    data = {"model": {"arch": "minigpt_v2", "model_type": "tiny", "llama_model": str(tmp_path / "llama"),
                      "vit_ckpt": str(tmp_path / "vit.pth")},
            "datasets": {"sharegpt_face": entry}, "run": {"task": "image_text_pretrain"}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    from_yaml = load_config(str(path)).datasets.sharegpt_face
    ds = registry.get_builder_class("sharegpt_face")(from_yaml).build_datasets()["train"]
    assert ds.vis_processor.alpha == "upstream"
    options = ["datasets.sharegpt_face.vis_processor.train.alpha=white"]
    from_options = load_config(str(path), options).datasets.sharegpt_face
    assert registry.get_builder_class("sharegpt_face")(from_options).build_datasets()["train"].vis_processor.alpha \
        == "white"
