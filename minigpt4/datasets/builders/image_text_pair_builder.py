"""Registered image-text builders: ``sharegpt_face``, ``facegpt4vision`` and upstream's ``cc_sbu_align``.

The two face builders share :class:`ConversationBuilder`: read records (one generic reader, a field map for
other layouts) → apply ``on_error`` → image paths checked against the image root (outside: logged, skipped at
train time; an error with ``strict_images``) → ``duplicate_images`` policy (with ``keep_all``, exact duplicate
records are counted and logged per file) → optional split by image → datasets. The names of the team's earlier
fork (``sharegpt_detail``, ``gpt4visionface_detail``) are aliases.

With ``build_info.shards`` the train split streams from webdataset shards (:mod:`minigpt4.datasets.shards`) and
nothing is read at build time but the manifest; options that need every record in memory (``split``,
``section_weights``, ``duplicate_images: one_per_image``) are applied when packing, or refused with the fix.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Dict, List

from omegaconf import OmegaConf

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
    group_by_image,
    log_exact_duplicates,
    normalise_section,
)
from minigpt4.datasets.schemas import CCSBUAlignConfig, FaceGPT4VisionConfig, FieldMap, ShareGPTFaceConfig
from minigpt4.datasets.shards import ShardDataset, ShardSet, open_shard_set
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
        if self.config.build_info.get("shards"):
            return self.build_from_shards()
        if self.config.build_info.get("val_shards"):
            raise DatasetConfigError(f"datasets.{self.NAME}.build_info.val_shards is set without build_info.shards; "
                                     "set both (validation from shards goes with training from shards)")
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
        if cfg.group_by_image:
            before = len(splits["train"])
            splits["train"] = group_by_image(splits["train"], cfg.split.seed)
            logger.info("%s: group_by_image: %d train record(s) -> %d sample(s), one per image", self.NAME, before,
                        len(splits["train"]))
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


    # ------------------------------------------------------------------------------------- shards
    def build_from_shards(self) -> Dict[str, Any]:
        """``train`` streams from ``build_info.shards``; ``val`` from ``build_info.val_shards`` when set."""
        key = f"datasets.{self.NAME}.build_info"
        train = open_shard_set(self.config.build_info.shards, f"{key}.shards")
        self.check_shard_options(train.manifest, f"{key}.shards")
        logger.info("%s: %d record(s) in %d shard(s) from %s (build_info.ann_path and image_path are not read)",
                    self.NAME, train.total, len(train.paths), os.path.dirname(train.paths[0]))
        out = {"train": self._shard_dataset(train, "train", shuffle=True, pad=True)}
        if self.config.build_info.get("val_shards"):
            val = open_shard_set(self.config.build_info.val_shards, f"{key}.val_shards")
            self.check_shard_options(val.manifest, f"{key}.val_shards")
            out["val"] = self._shard_dataset(val, "eval", shuffle=False, pad=False)
        return out

    def _shard_dataset(self, shard_set: ShardSet, proc: str, *, shuffle: bool, pad: bool) -> ShardDataset:
        if self.vis_processors.get(proc) is None:
            raise DatasetConfigError(f"datasets.{self.NAME}.vis_processor.{proc} is not set; name an image "
                                     "processor, e.g. {name: blip2_image_train, image_size: 448}")
        return ShardDataset(shard_set, self.vis_processors[proc], self.text_processors.get(proc), name=self.NAME,
                            max_turns=self.config.max_turns, strict_images=bool(self.config.strict_images),
                            shuffle=shuffle, shuffle_buffer=int(self.config.shuffle_buffer), pad=pad)

    def check_shard_options(self, manifest: Dict[str, Any], where: str) -> None:
        """Options applied when packing must match the shards; what was left out follows ``on_error``."""
        cfg, name = self.config, f"datasets.{self.NAME}"
        packed = manifest.get("options", {})
        wrong = []
        if cfg.split.val_fraction > 0:
            wrong.append(f"{name}.split.val_fraction needs every record in memory: split the annotation files with "
                         "`facegpt-data split`, pack the train and val files into two shard sets and set "
                         "build_info.shards and build_info.val_shards (and split.val_fraction=0)")
        if cfg.duplicate_images == "one_per_image" and not packed.get("one_per_image"):
            wrong.append(f"{name}.duplicate_images=one_per_image: re-pack with `facegpt-data shards --one-per-image`")
        if cfg.group_by_image:
            wrong.append(f"{name}.group_by_image needs every record in memory; shards hold one record per sample "
                         "(set it to false)")
        if cfg.require_image_token and not packed.get("require_image_token"):
            wrong.append(f"{name}.require_image_token: re-pack with `facegpt-data shards --require-image-token`")
        if OmegaConf.to_container(cfg.field_map) != OmegaConf.to_container(OmegaConf.structured(FieldMap)):
            wrong.append(f"{name}.field_map: shards are packed from LLaVA-layout records; convert the files first")
        wrong += self.shard_section_problems(manifest)
        if wrong:
            raise DatasetConfigError(f"{where}: " + "; ".join(wrong))
        self._shard_skips(manifest, where)

    def shard_section_problems(self, manifest: Dict[str, Any]) -> List[str]:
        """Hook: section options that the shards cannot honour (none here)."""
        return []

    def _shard_skips(self, manifest: Dict[str, Any], where: str) -> None:
        skipped = manifest.get("skipped", {})
        first = manifest.get("examples", {})
        malformed = int(skipped.get("malformed", 0))
        if malformed and self.config.on_error == "error":
            raise DatasetConfigError(f"{where}: {malformed} malformed record(s) were left out when packing (first: "
                                     f"{first.get('malformed', ['?'])[0]}). Fix: repair the records and re-pack, or "
                                     f"set datasets.{self.NAME}.on_error=skip to train on the rest")
        if malformed:
            logger.warning("%s: %d malformed record(s) were left out when packing (on_error: skip). First: %s",
                           self.NAME, malformed, first.get("malformed", ["?"])[0])
        outside = int(skipped.get("outside_root", 0))
        if outside and self.config.strict_images:
            raise DatasetConfigError(f"{where}: {outside} record(s) name an image outside the image root "
                                     f"(strict_images is on), first: {first.get('outside_root', ['?'])[0]}. Fix: make "
                                     "image paths relative to the image root and re-pack, or set strict_images: false")
        if outside:
            logger.warning("%s: %d record(s) name an image outside the image root; they are skipped and counted like "
                           "missing images", self.NAME, outside)
        duplicates = manifest.get("exact_duplicates") or {}
        if duplicates and self.config.duplicate_images == "keep_all":
            logger.warning("%s: the shards hold exact duplicate records (same image and turns as an earlier "
                           "record; duplicate_images: keep_all trains every copy): %s; first: %s. Remove them with "
                           "facegpt-data clean before packing, or pack with --one-per-image", self.NAME,
                           ", ".join(f"{n} in {os.path.basename(f)}" for f, n in duplicates.items()),
                           manifest.get("exact_duplicate_example", "?"))


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
        if weights and self.config.group_by_image:
            raise DatasetConfigError(f"datasets.{self.NAME}: section_weights repeat a section's records, and "
                                     "group_by_image puts every question about an image into one sample, so the "
                                     "repeats would train as repeated turns; set one of them")
        return apply_section_weights(records, weights, self.config.split.seed) if weights else records

    def shard_section_problems(self, manifest: Dict[str, Any]) -> List[str]:
        """``sections`` must name exactly the packed sections; ``section_weights`` need the records in memory."""
        name, problems = f"datasets.{self.NAME}", []
        packed = sorted(s for s in manifest.get("sections", {}) if s)
        wanted = sorted({normalise_section(s) for s in self.config.sections})
        if wanted and wanted != packed:
            problems.append(f"{name}.sections={wanted} but the shards hold {packed}: re-pack with "
                            f"`facegpt-data shards --sections {' '.join(repr(w) for w in wanted)}`")
        if self.config.section_weights:
            problems.append(f"{name}.section_weights repeat records and need them in memory: with shards, pack the "
                            "sections into separate shard sets (one dataset entry each) and weight them with "
                            "sample_ratio")
        return problems


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
