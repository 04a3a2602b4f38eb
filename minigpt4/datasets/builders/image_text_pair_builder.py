"""Registered image-text builders: ``sharegpt_face``, ``facegpt4vision`` and upstream's ``cc_sbu_align``.

The two face builders share :class:`ConversationBuilder`: read records (one generic reader, a field map for
other layouts) → apply ``on_error`` → image paths checked against the image root (outside: logged, skipped at
train time; an error with ``strict_images``) → ``duplicate_images`` policy (with ``keep_all``, exact duplicate
records are counted and logged per file) → optional split by image → datasets. The names of the team's earlier
fork (``sharegpt_detail``, ``gpt4visionface_detail``) are aliases.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Dict, List

from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.datasets.builders.base_dataset_builder import BaseDatasetBuilder, DatasetConfigError
from minigpt4.datasets.datasets.cc_sbu_dataset import CCSBUAlignDataset, check_caption_records
from minigpt4.datasets.datasets.chatgpt4vision_datasets import (
    FaceGPT4VisionDataset,
    read_section_file,
    resolve_sections,
    scan_sections,
)
from minigpt4.datasets.datasets.sharegpt_dataset import ShareGPTFaceDataset, read_sharegpt_files
from minigpt4.datasets.records import (
    Record,
    apply_error_policy,
    check_image_paths,
    dedupe_by_image,
    log_exact_duplicates,
    normalise_section,
)
from minigpt4.datasets.schemas import CCSBUAlignConfig, FaceGPT4VisionConfig, ShareGPTFaceConfig
from minigpt4.datasets.splits import apply_section_weights, split_by_image

logger = get_logger(__name__)


def _existing_file(path: Any, key: str) -> str:
    if not isinstance(path, str) or not path:
        raise DatasetConfigError(f"{key} must name a JSON file, got {path!r}")
    if not os.path.isfile(path):
        raise DatasetConfigError(f"{key}: file does not exist: {path} (set {key} or the FACEGPT_DATA variable)")
    return path


def _existing_dir(path: Any, key: str) -> str:
    if not isinstance(path, str) or not path or not os.path.isdir(path):
        raise DatasetConfigError(f"{key}: folder does not exist: {path!r} (set {key} or the FACEGPT_DATA variable)")
    return path


class ConversationBuilder(BaseDatasetBuilder):
    """Shared build steps of the LLaVA-style face builders."""

    NAME = ""
    train_dataset_cls: type = ShareGPTFaceDataset

    @abc.abstractmethod
    def read_records(self) -> List[Record]:
        """Every usable record (``on_error`` already applied)."""

    def weight_train(self, records: List[Record]) -> List[Record]:
        """Hook for per-section weights (identity here)."""
        return records

    def build(self) -> Dict[str, Any]:
        self.build_processors()
        cfg = self.config
        vis_root = _existing_dir(cfg.build_info.image_path, f"datasets.{self.NAME}.build_info.image_path")
        records = self.read_records()
        check_image_paths(records, vis_root, bool(cfg.strict_images), self.NAME)
        if cfg.duplicate_images == "one_per_image":
            records, dropped = dedupe_by_image(records)
            logger.info("%s: duplicate_images=one_per_image dropped %d record(s)", self.NAME, dropped)
        else:
            log_exact_duplicates(records, self.NAME)
        splits = {"train": records}
        if cfg.split.val_fraction > 0:
            splits["train"], splits["val"] = split_by_image(records, cfg.split.val_fraction, cfg.split.seed,
                                                            cfg.split.stratify_by_section)
            logger.info("%s: split by image: %d train / %d val record(s)", self.NAME, len(splits["train"]),
                        len(splits["val"]))
        splits["train"] = self.weight_train(splits["train"])
        out = {}
        for split, recs in splits.items():
            proc = "train" if split == "train" else "eval"
            if self.vis_processors.get(proc) is None:
                raise DatasetConfigError(f"datasets.{self.NAME}.vis_processor.{proc} is not set; name an image "
                                         "processor, e.g. {name: blip2_image_train, image_size: 448}")
            out[split] = self.train_dataset_cls(
                self.vis_processors[proc], self.text_processors.get(proc), vis_root, recs,
                max_turns=cfg.max_turns, strict_images=cfg.strict_images, name=self.NAME,
            )
        return out


@registry.register_builder("sharegpt_face", aliases=("sharegpt_detail",))
class ShareGPTFaceBuilder(ConversationBuilder):
    """ShareGPT_Face: one or more ShareGPT4V/LLaVA JSON lists under one image root."""

    NAME = "sharegpt_face"
    train_dataset_cls = ShareGPTFaceDataset
    config_schema = ShareGPTFaceConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/sharegpt/default.yaml"}

    def read_records(self) -> List[Record]:
        key = f"datasets.{self.NAME}.build_info.ann_path"
        given = self.config.build_info.ann_path
        paths = [given] if isinstance(given, str) else list(given)
        if not paths:
            raise DatasetConfigError(f"{key} is empty; name one or more ShareGPT JSON files")
        paths = [_existing_file(p, key) for p in paths]
        records, errors = read_sharegpt_files(paths, self.config.field_map, self.config.require_image_token)
        apply_error_policy(errors, self.config.on_error, self.NAME)
        return records


@registry.register_builder("facegpt4vision", aliases=("gpt4visionface_detail",))
class FaceGPT4VisionBuilder(ConversationBuilder):
    """FaceGPT4Vision: a section dict; sections chosen (and weighted) by name in the config."""

    NAME = "facegpt4vision"
    train_dataset_cls = FaceGPT4VisionDataset
    config_schema = FaceGPT4VisionConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/chatgpt4vision/default.yaml"}

    def read_records(self) -> List[Record]:
        cfg = self.config
        path = _existing_file(cfg.build_info.ann_path, f"datasets.{self.NAME}.build_info.ann_path")
        counts = scan_sections(path)
        chosen = resolve_sections(path, list(cfg.sections), list(cfg.prompt_sections), counts)
        unknown = [w for w in cfg.section_weights if normalise_section(w) not in chosen]
        if unknown:
            raise DatasetConfigError(f"datasets.{self.NAME}.section_weights names section(s) {unknown} that are not "
                                     f"selected; selected: {chosen}")
        records, errors, got = read_section_file(path, chosen, cfg.field_map, cfg.require_image_token)
        apply_error_policy(errors, cfg.on_error, self.NAME)
        logger.info("%s: %d record(s) from sections %s", self.NAME, len(records), got)
        return records

    def weight_train(self, records: List[Record]) -> List[Record]:
        weights = {normalise_section(k): float(v) for k, v in self.config.section_weights.items()}
        return apply_section_weights(records, weights, self.config.split.seed) if weights else records


@registry.register_builder("cc_sbu_align")
class CCSBUAlignBuilder(BaseDatasetBuilder):
    """Upstream's MiniGPT-4 stage-2 data: ``<storage>/filter_cap.json`` + ``<storage>/image/<id>.jpg``."""

    train_dataset_cls = CCSBUAlignDataset
    config_schema = CCSBUAlignConfig
    DATASET_CONFIG_DICT = {"default": "configs/datasets/cc_sbu/align.yaml"}

    def build(self) -> Dict[str, Any]:
        self.build_processors()
        storage = _existing_dir(self.config.build_info.storage, "datasets.cc_sbu_align.build_info.storage")
        ann = _existing_file(os.path.join(storage, "filter_cap.json"), "datasets.cc_sbu_align.build_info.storage")
        ds = CCSBUAlignDataset(self.vis_processors["train"], self.text_processors["train"],
                               os.path.join(storage, "image"), [ann], strict_images=self.config.strict_images)
        errors = check_caption_records(ds.annotation, ann)
        apply_error_policy(errors, self.config.on_error, "cc_sbu_align")
        bad = {e.index for e in errors}
        ds.annotation = [a for i, a in enumerate(ds.annotation) if i not in bad]
        ds.name = "cc_sbu_align"
        return {"train": ds}
