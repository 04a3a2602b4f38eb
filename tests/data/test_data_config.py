"""The face builders through the real config loader (default YAMLs, schemas, FACEGPT_DATA)."""

from __future__ import annotations

import pytest
import yaml

from minigpt4.common.config import ConfigError, load_config
from minigpt4.common.registry import registry


def _user_yaml(tmp_path, datasets: dict) -> str:
    (tmp_path / "llama").mkdir(exist_ok=True)
    (tmp_path / "vit.pth").write_bytes(b"")
    data = {"model": {"arch": "minigpt_v2", "model_type": "tiny", "llama_model": str(tmp_path / "llama"),
                      "vit_ckpt": str(tmp_path / "vit.pth")},
            "datasets": datasets, "run": {"task": "image_text_pretrain"}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_default_yamls_resolve_from_facegpt_data_and_build(data_root, monkeypatch, tmp_path) -> None:
    root = data_root["root"]
    (root / "GPT4VisionData" / "Annotations" / "sections_good.json").rename(
        root / "GPT4VisionData" / "Annotations" / "gpt4VisionCalls_Cleaned_BySection.json")
    ann = root / "ShareGPTData" / "Annotations"
    (ann / "sharegpt_good.json").rename(ann / "subset_objects_gpt4vision_100k.json")
    (ann / "subset_objects_share-captioner_coco_lcs_sam_1246k_1107.json").write_text("[]")
    monkeypatch.setenv("FACEGPT_DATA", str(root))
    path = _user_yaml(tmp_path, {
        "sharegpt_detail": {"batch_size": 2, "vis_processor": {"train": {"name": "blip2_image_train",
                                                                         "image_size": 32}}},
        "facegpt4vision": {"sample_ratio": 5, "sections": ["Fitzpatrick", "Facial Characteristics Short "],
                           "split": {"val_fraction": 0.5},
                           "vis_processor": {"train": {"image_size": 32}, "eval": {"image_size": 32}}},
    })
    cfg = load_config(path)
    share_cfg = cfg.datasets.sharegpt_detail
    assert share_cfg.build_info.image_path == str(root / "ShareGPTData" / "Images")
    assert share_cfg.on_error == "error" and share_cfg.text_processor.train.name == "face_text"
    share = registry.get_builder_class("sharegpt_detail")(share_cfg).build_datasets()
    assert len(share["train"]) == 4 and share["train"][0]["image"].shape == (3, 32, 32)
    face = registry.get_builder_class("facegpt4vision")(cfg.datasets.facegpt4vision).build_datasets()
    assert set(face) == {"train", "val"} and face["train"].sample_ratio == 5.0
    assert set(face["train"].section_counts()) | set(face["val"].section_counts()) == {
        "Fitzpatrick", "Facial Characteristics Short"}


def test_loader_reports_schema_problems_of_face_datasets(tmp_path) -> None:
    path = _user_yaml(tmp_path, {"facegpt4vision": {"on_error": "ignore", "duplicate_image": "keep_all",
                                                    "build_info": {"image_path": str(tmp_path / "none")}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = {p.key: p.message for p in err.value.problems}
    assert "is not one of ['error', 'skip']" in keys["datasets.facegpt4vision.on_error"]
    assert "Did you mean 'duplicate_images'?" in keys["datasets.facegpt4vision.duplicate_image"]
    assert "folder does not exist" in keys["datasets.facegpt4vision.build_info.image_path"]


def test_annotation_files_are_checked_when_the_config_loads(data_root, tmp_path) -> None:
    """A missing annotation file (each item of a list is checked) and a file of the wrong JSON layout are config
    problems, listed with the others before any dataset is built."""
    missing = tmp_path / "nope.json"
    path = _user_yaml(tmp_path, {
        "sharegpt_face": {"build_info": {"image_path": str(data_root["share_images"]),
                                         "ann_path": [str(data_root["share_ann"]), str(missing)]}},
        "facegpt4vision": {"build_info": {"image_path": str(data_root["gpt_images"]),
                                          "ann_path": str(data_root["share_ann"])}},  # a list, not sections
    })
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = {p.key: p for p in err.value.problems}
    assert set(problems) == {"datasets.sharegpt_face.build_info.ann_path[1]",
                             "datasets.facegpt4vision.build_info.ann_path"}
    absent = problems["datasets.sharegpt_face.build_info.ann_path[1]"]
    assert absent.message.startswith(f"file does not exist: {missing}")
    assert absent.fix == "datasets.sharegpt_face.build_info.ann_path=[/path/to/file1,/path/to/file2]"
    layout = problems["datasets.facegpt4vision.build_info.ann_path"].message
    assert layout.startswith(f"{data_root['share_ann']} holds a JSON list, but a JSON object is expected here")
    assert "invalid JSON" not in layout and "sharegpt_face" in layout
    one_line = err.value.one_line()
    assert "\n" not in one_line and one_line.startswith(f"2 problem(s) in {path}: datasets.")


def test_sharegpt_file_of_sections_and_empty_file_list_are_config_problems(data_root, tmp_path) -> None:
    path = _user_yaml(tmp_path, {
        "sharegpt_face": {"build_info": {"image_path": str(data_root["share_images"]),
                                         "ann_path": str(data_root["gpt_ann"])}}})
    with pytest.raises(ConfigError, match=r"ann_path: .*sections_good.json holds a JSON object, but a JSON list"):
        load_config(path)
    path = _user_yaml(tmp_path, {"sharegpt_face": {"build_info": {"image_path": str(data_root["share_images"]),
                                                                  "ann_path": []}}})
    with pytest.raises(ConfigError, match=r"datasets.sharegpt_face.build_info.ann_path: required value is not set"):
        load_config(path)
