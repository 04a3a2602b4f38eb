"""ShareGPT_Face and FaceGPT4Vision builders: records → items of the model contract."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from minigpt4.common.registry import registry
from minigpt4.datasets.builders import DatasetConfigError
from minigpt4.datasets.datasets.collate import is_empty_batch
from minigpt4.datasets.datasets.chatgpt4vision_datasets import SectionError
from minigpt4.datasets.records import DataFormatError
from minigpt4.processors.image_io import ImageOpenError

from data_helpers import tiny_processors, write_images

PLACEHOLDER = "<Img><ImageHere></Img>"


def share_cfg(paths, **extra) -> dict:
    return {"build_info": {"image_path": str(paths["share_images"]), "ann_path": str(paths["share_ann"])},
            **tiny_processors(), **extra}


def gpt_cfg(paths, **extra) -> dict:
    return {"build_info": {"image_path": str(paths["gpt_images"]), "ann_path": str(paths["gpt_ann"])},
            **tiny_processors(), **extra}


def build(name: str, cfg: dict) -> dict:
    return registry.get_builder_class(name)(cfg).build_datasets()


def test_sharegpt_items_single_and_multi_turn(data_root) -> None:
    ds = build("sharegpt_face", share_cfg(data_root, sample_ratio=3.0))["train"]
    assert len(ds) == 4 and ds.name == "sharegpt_face" and ds.sample_ratio == 3.0
    first, second, third, fourth = (ds[i] for i in range(4))
    assert first["instruction_input"] == f"{PLACEHOLDER} What is the expression? "
    assert second["instruction_input"] == f"{PLACEHOLDER} Describe the skin tone. ", "<image> after the question"
    assert first["answer"] == "The person looks happy." and first["image_id"] == "1" and second["image_id"] == "000002"
    assert first["image"].shape == (3, 32, 32) and first["section"] == "" and first["skipped"] == 0
    assert third["conv_q"] == [f"{PLACEHOLDER} Is this a human face? ", "What is the expression? ", "And the skin? "]
    assert third["conv_a"] == ["Yes, this is a human face.", "The person looks sad.", "Fitzpatrick type V."]
    assert "instruction_input" not in third
    expected = f'{PLACEHOLDER} Describe this image in detail: "quotes" (and) *stars*; ~tilde~. '
    assert fourth["instruction_input"] == expected


def test_blip_caption_keeps_upstream_text_behaviour_when_named(data_root) -> None:
    cfg = share_cfg(data_root, max_turns=1)
    cfg["text_processor"] = {"train": {"name": "blip_caption", "max_words": 4}}
    ds = build("sharegpt_detail", cfg)["train"]
    assert ds[3]["instruction_input"] == f"{PLACEHOLDER} describe this image in "
    assert ds[2]["instruction_input"] == f"{PLACEHOLDER} is this a human "
    assert ds[2]["answer"] == "Yes, this is a human face.", "max_turns=1 keeps upstream's turns 0-1"
    assert ds.truncated == 2


def test_several_files_duplicate_policy_and_split(data_root) -> None:
    second = data_root["share_ann"].with_name("second.json")
    records = json.loads(data_root["share_ann"].read_text())
    second.write_text(json.dumps(records[:2]))
    files = [str(data_root["share_ann"]), str(second)]
    cfg = share_cfg(data_root)
    cfg["build_info"]["ann_path"] = files
    assert len(build("sharegpt_face", cfg)["train"]) == 6
    one = build("sharegpt_face", {**cfg, "duplicate_images": "one_per_image"})["train"]
    assert len(one) == 3 and len({r.image for r in one.annotation}) == 3
    splits = build("sharegpt_face", {**cfg, "split": {"val_fraction": 0.34, "seed": 1}})
    train_imgs = {r.image for r in splits["train"].annotation}
    val_imgs = {r.image for r in splits["val"].annotation}
    assert train_imgs and val_imgs and not train_imgs & val_imgs
    assert len(splits["train"]) + len(splits["val"]) == 6
    again = build("sharegpt_face", {**cfg, "split": {"val_fraction": 0.34, "seed": 1}})
    assert {r.image for r in again["val"].annotation} == val_imgs, "the split is deterministic"


def _malformed_root(data_root, fixtures_dir):
    shutil.copy(fixtures_dir / "sharegpt_malformed.json", data_root["share_ann"])
    write_images(data_root["share_images"], ["sam/images/sa_000013.jpg", "sam/images/sa_000019.jpg"])
    return data_root


def test_malformed_records_are_reported_with_file_index_and_reason(data_root, fixtures_dir) -> None:
    _malformed_root(data_root, fixtures_dir)
    with pytest.raises(DataFormatError) as err:
        build("sharegpt_face", share_cfg(data_root))
    msg = str(err.value)
    assert "9 malformed record(s)" in msg and "on_error: skip" in msg
    for index, reason in [(0, "missing key 'conversations'"), (1, "odd turn order: turn 0 is from 'gpt'"),
                          (2, "turn 0 'value' is list, expected a string"), (4, "2 '<image>' tokens"),
                          (5, "turn 1 'value' is empty"), (6, "a record must be a JSON object, got list"),
                          (7, "missing key 'image'"), (8, "question without an answer"),
                          (10, "'id' is dict")]:
        line = next(x for x in msg.splitlines() if f"sharegpt_good.json record #{index}: " in x)
        assert reason in line, (index, line)


def test_skip_mode_counts_and_keeps_the_valid_records(data_root, fixtures_dir, caplog) -> None:
    _malformed_root(data_root, fixtures_dir)
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        ds = build("sharegpt_face", share_cfg(data_root, on_error="skip"))["train"]
    assert [r.image_id for r in ds.annotation] == ["13", "19"]
    assert "skipped 9 malformed record(s)" in caplog.text
    assert ds[0]["instruction_input"] == f"{PLACEHOLDER} What is this? (no image token) "
    with pytest.raises(DataFormatError, match=r"#3: no '<image>' token"):
        build("sharegpt_face", share_cfg(data_root, on_error="error", require_image_token=True))


def test_bad_json_names_line_and_column(data_root, fixtures_dir) -> None:
    shutil.copy(fixtures_dir / "sharegpt_bad_syntax.json", data_root["share_ann"])
    with pytest.raises(ValueError, match=r"sharegpt_good.json:3:12: invalid JSON"):
        build("sharegpt_face", share_cfg(data_root))


def test_missing_image_is_skipped_counted_and_logged_once(data_root, caplog) -> None:
    (data_root["share_images"] / "sam/images/sa_000002.jpg").unlink()
    (data_root["share_images"] / "sam/images/sa_000003.jpg").write_bytes(b"not an image")
    ds = build("sharegpt_face", share_cfg(data_root))["train"]
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        items = [ds[i] for i in range(len(ds))]
        again = ds[2]
    assert [type(it).__name__ for it in items] == ["dict", "SkippedSample", "SkippedSample", "dict"]
    assert items[1].index == 1 and "image file not found" in items[1].reason
    assert again.index == 2 and "cannot decode" in again.reason, "a skipped record is not replaced by its neighbour"
    for name in ("sa_000002.jpg", "sa_000003.jpg"):
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1, "each bad path is logged once"
        assert "sharegpt_good.json record #" in lines[0], "the log names the file and the record"
    batch = ds.collater(items)
    assert batch["image_id"] == ["1", "4"] and batch["image"].shape[0] == 2 and batch["skipped"] == 2
    empty = ds.collater(items[1:3])
    assert is_empty_batch(empty) and empty.skipped == 2, "an all-skipped batch is empty"
    strict = build("sharegpt_face", share_cfg(data_root, strict_images=True))["train"]
    with pytest.raises(ImageOpenError, match=r"record #1: image file not found: .*sa_000002.jpg.*strict_images"):
        strict[1]


def test_facegpt4vision_sections_items_and_names(data_root) -> None:
    ds = build("facegpt4vision", gpt_cfg(data_root))["train"]
    assert ds.section_counts() == {"Facial Expression due to contextual cues": 2, "Facial Characteristics Short": 1,
                                   "Fitzpatrick": 3, "Human or not": 1}
    items = [ds[i] for i in range(len(ds))]
    assert all(PLACEHOLDER in (it.get("instruction_input") or it["conv_q"][0]) for it in items)
    assert items[0]["section"] == "Facial Expression due to contextual cues" and items[0]["image_id"] == "e1"
    conv = next(it for it in items if "conv_q" in it)
    assert conv["conv_q"] == [f"{PLACEHOLDER} Fitzpatrick type? ", "Are you sure? "]
    assert conv["section"] == "Fitzpatrick"
    wanted = [" Facial Characteristics Short", "Fitzpatrick"]
    chosen = build("gpt4visionface_detail", gpt_cfg(data_root, sections=wanted))
    assert chosen["train"].section_counts() == {"Facial Characteristics Short": 1, "Fitzpatrick": 3}


def test_unknown_prompt_and_empty_sections(data_root, caplog) -> None:
    with pytest.raises(SectionError) as err:
        build("facegpt4vision", gpt_cfg(data_root, sections=["Fitzpatrik"]))
    assert "unknown section 'Fitzpatrik'" in str(err.value) and "'Fitzpatrick' (3)" in str(err.value)
    assert "'Multi-Person Interaction' (0)" in str(err.value) and "'Pre-Prompt' (2)" in str(err.value)
    with pytest.raises(SectionError, match="'Pre-Prompt' holds prompt templates"):
        build("facegpt4vision", gpt_cfg(data_root, sections=["Pre-Prompt"]))
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        ds = build("facegpt4vision", gpt_cfg(data_root, sections=["Multi-Person Interaction", "Human or not"]))
    assert "'Multi-Person Interaction' is empty" in caplog.text and len(ds["train"]) == 1


def test_section_weights_and_stratified_split(data_root) -> None:
    cfg = gpt_cfg(data_root, sections=["Fitzpatrick", "Human or not"],
                  section_weights={"Fitzpatrick": 2.0, "Human or not": 0.0})
    ds = build("facegpt4vision", cfg)["train"]
    assert ds.section_counts() == {"Fitzpatrick": 6}
    with pytest.raises(DatasetConfigError, match="section_weights names section"):
        build("facegpt4vision", gpt_cfg(data_root, sections=["Fitzpatrick"], section_weights={"Race": 1.0}))
    splits = build("facegpt4vision", gpt_cfg(data_root, split={"val_fraction": 0.5, "seed": 3}))
    train = {r.image for r in splits["train"].annotation}
    val = {r.image for r in splits["val"].annotation}
    assert not train & val and len(val) >= 2
    assert splits["val"].vis_processor.__class__.__name__ == "Blip2ImageEvalProcessor"


def test_group_by_image_trains_every_question_about_an_image_in_one_sample(data_root) -> None:
    splits = build("facegpt4vision", gpt_cfg(data_root, group_by_image=True))
    ds = splits["train"]
    by_image = {r.image: r for r in ds.annotation}
    assert len(ds) == len(by_image) == 5  # face_a (2 records), face_b (2), face_c, face_d, scene_a
    a, b = by_image["synth/face_a.jpg"], by_image["synth/face_b.jpg"]
    assert sorted(zip(a.questions, a.answers)) == [("Describe the face briefly.", "A happy face."),
                                                   ("What facial expression does the person show?",
                                                    "The person looks happy.")]
    assert a.section == ""  # two sections in one sample
    # face_b: the expression record and the two-turn Fitzpatrick record; that record's turns stay together
    fitz = b.questions.index("Fitzpatrick type?")
    assert b.questions[fitz + 1] == "Are you sure?" and len(b.questions) == 3
    assert by_image["synth/face_c.jpg"].section == "Fitzpatrick"  # a single record is unchanged
    item = ds[[r.image for r in ds.annotation].index("synth/face_b.jpg")]
    assert len(item["conv_q"]) == len(item["conv_a"]) == 3 and PLACEHOLDER in item["conv_q"][0]
    assert sum(PLACEHOLDER in q for q in item["conv_q"]) == 1  # the image enters once, in the first turn
    # the order is seeded per image: the same seed gives the same samples, validation stays one record per sample
    again = build("facegpt4vision", gpt_cfg(data_root, group_by_image=True))["train"]
    assert again.annotation == ds.annotation
    split = build("facegpt4vision", gpt_cfg(data_root, group_by_image=True, split={"val_fraction": 0.5, "seed": 3}))
    assert all(len(r.questions) == 1 or r.section == "Fitzpatrick" for r in split["val"].annotation)
    assert sum(len(r.questions) for r in split["train"].annotation) + sum(
        len(r.questions) for r in split["val"].annotation) == 8  # every turn trains or validates once
    with pytest.raises(DatasetConfigError, match="section_weights repeat .* set one of them"):
        build("facegpt4vision", gpt_cfg(data_root, group_by_image=True, section_weights={"Fitzpatrick": 2.0}))


def test_field_map_reads_flat_records(data_root, fixtures_dir) -> None:
    shutil.copy(fixtures_dir / "sections_flat.json", data_root["gpt_ann"])
    fmap = {"image": "img", "id": "uid", "question": "question", "answer": "answer"}
    ds = build("facegpt4vision", gpt_cfg(data_root, field_map=fmap))["train"]
    items = [ds[i] for i in range(len(ds))]
    assert [it["instruction_input"] for it in items] == [f"{PLACEHOLDER} Skin type? "] * 2 + [f"{PLACEHOLDER} Human? "]
    assert [it["image_id"] for it in items] == ["7", "8", "synth/scene_a.jpg"]
    assert items[2]["section"] == "Human or not"


def test_config_errors_name_the_key(data_root) -> None:
    with pytest.raises(DatasetConfigError, match="on_error='ignore' is not one of"):
        build("sharegpt_face", share_cfg(data_root, on_error="ignore"))
    cfg = share_cfg(data_root)
    cfg["build_info"]["image_path"] = str(data_root["root"] / "nowhere")
    with pytest.raises(DatasetConfigError, match=r"datasets.sharegpt_face.build_info.image_path: folder does not"):
        build("sharegpt_face", cfg)
    with pytest.raises(ValueError, match="JSON object"):
        build("sharegpt_face", {**share_cfg(data_root), "build_info": {
            "image_path": str(data_root["share_images"]), "ann_path": str(data_root["gpt_ann"])}})


@pytest.mark.parametrize("name,cfg_fn", [("sharegpt_face", share_cfg), ("facegpt4vision", gpt_cfg)])
def test_dataloader_with_one_worker_yields_contract_batches(data_root, name, cfg_fn) -> None:
    ds = build(name, cfg_fn(data_root))["train"]
    loader = DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=ds.collater)
    batch = next(iter(loader))
    assert batch["image"].shape == (len(ds), 3, 32, 32) and batch["image"].dtype == torch.float32
    assert isinstance(batch["conv_q"], list) and len(batch["conv_q"]) == len(ds), "mixed batch → conversations"
    assert all(q[0].count(PLACEHOLDER) == 1 and len(q) == len(a) for q, a in zip(batch["conv_q"], batch["conv_a"]))
    assert batch["skipped"] == 0 and all(isinstance(i, str) for i in batch["image_id"])
    single = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=ds.collater)
    first = next(iter(single))
    assert first["instruction_input"][0].startswith(PLACEHOLDER) and isinstance(first["answer"][0], str)


def test_cc_sbu_align(tmp_path) -> None:
    storage = tmp_path / "cc_sbu_align"
    (storage / "image").mkdir(parents=True)
    anns = [{"image_id": "2", "caption": "A face, smiling."}, {"image_id": 5, "caption": "Another face."},
            {"image_id": "9", "caption": ""}]
    (storage / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    write_images(storage / "image", ["2.jpg", "5.jpg"])
    with pytest.raises(DataFormatError, match="filter_cap.json record #2: missing, empty"):
        build("cc_sbu_align", {"build_info": {"storage": str(storage)}, **tiny_processors()})
    ds = build("cc_sbu_align", {"build_info": {"storage": str(storage)}, "on_error": "skip", **tiny_processors()})
    item = ds["train"][1]
    assert item["answer"] == "Another face." and item["image_id"] == "5" and item["image"].shape == (3, 32, 32)
    assert set(item) == {"image", "answer", "image_id", "section", "skipped"}
