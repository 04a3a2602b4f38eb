"""Typed configs of the dataset builders (subclasses of :class:`minigpt4.common.schema.DatasetConfig`).

Each builder points ``config_schema`` at one of these; the config loader merges the builder's default YAML
(``minigpt4/configs/datasets/...``) and the user's ``datasets.<name>`` block over it. Every default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from minigpt4.common.schema import DatasetConfig, choice_field, path_field
from minigpt4.datasets.json_stream import ARRAY_FIX, SECTIONS_FIX, layout_problem


def json_list_file(path: str) -> Optional[str]:
    """Config-time check of a ShareGPT annotation file: a JSON list of records."""
    return layout_problem(path, "array", ARRAY_FIX)


def json_sections_file(path: str) -> Optional[str]:
    """Config-time check of a FaceGPT4Vision annotation file: a JSON object of sections."""
    return layout_problem(path, "object", SECTIONS_FIX)


@dataclass
class FieldMap:
    """Where the conversation fields live in a record (defaults: LLaVA / ShareGPT4V).

    For flat records such as ``{"image": ..., "question": ..., "answer": ...}`` set ``question`` and
    ``answer`` to their keys; ``conversations``, ``role`` and ``content`` are then unused.
    """

    id: str = "id"
    image: str = "image"
    conversations: str = "conversations"
    role: str = "from"
    content: str = "value"
    human_roles: List[str] = field(default_factory=lambda: ["human", "user"])
    assistant_roles: List[str] = field(default_factory=lambda: ["gpt", "assistant"])
    question: Optional[str] = None
    answer: Optional[str] = None


@dataclass
class SplitConfig:
    """Deterministic train/validation split by image (an image never lands in both)."""

    val_fraction: float = 0.0  # 0: no validation split
    seed: int = 42
    stratify_by_section: bool = True


@dataclass
class ConversationDatasetConfig(DatasetConfig):
    """Options shared by the LLaVA-style conversation datasets (ShareGPT_Face, FaceGPT4Vision)."""

    on_error: str = choice_field("error", ["error", "skip"], help="malformed record at build time: fail or skip")
    strict_images: bool = False  # True: a missing/undecodable image raises at train time instead of being skipped
    duplicate_images: str = choice_field(
        "keep_all", ["keep_all", "one_per_image"], help="an image named by several records (or files)"
    )
    max_turns: Optional[int] = None  # null: every question/answer pair trains; 1 = upstream's turns 0-1 only
    require_image_token: bool = False  # True: a record without '<image>' in its questions is malformed
    field_map: FieldMap = field(default_factory=FieldMap)
    split: SplitConfig = field(default_factory=SplitConfig)
    # True: the train split's records of one image train as one multi-turn sample (every question about the image,
    # records in a seeded order), so one pass of the LLM over the image learns all its answers. Validation is kept
    # one record per sample. max_turns then caps the grouped sample.
    group_by_image: bool = False
    shuffle_buffer: int = 64  # build_info.shards only: samples held by the seeded in-shard shuffle (<= 1: off)


@dataclass
class ShardPaths:
    """Shard sets written by ``facegpt-data shards`` (shared by the face builders' ``build_info``)."""

    # webdataset shards written by `facegpt-data shards`: "OUT/shard-{000000..000123}.tar" (brace expansion).
    # When set, the train split streams from them and ann_path / image_path are not read.
    shards: Any = None
    val_shards: Any = None  # the validation split from its own shard set (packed from a val file)


@dataclass
class ShareGPTBuildInfo(ShardPaths):
    """Where ShareGPT_Face reads from."""

    image_path: str = path_field("", "dir", required=True, help="image root the records' 'image' paths are under")
    # one JSON list (upstream's key) or a list of them, read in order
    ann_path: Any = path_field("", "file", required=True, many=True, check=json_list_file,
                               help="ShareGPT4V/LLaVA JSON list file(s)")

@dataclass
class ShareGPTFaceConfig(ConversationDatasetConfig):
    """``datasets.sharegpt_face``."""

    build_info: ShareGPTBuildInfo = field(default_factory=ShareGPTBuildInfo)


@dataclass
class FaceGPT4VisionBuildInfo(ShardPaths):
    """Where FaceGPT4Vision reads from."""

    image_path: str = path_field("", "dir", required=True, help="image root the records' 'image' paths are under")
    ann_path: str = path_field("", "file", required=True, check=json_sections_file,
                               help="JSON object: section name -> list of records")

@dataclass
class FaceGPT4VisionConfig(ConversationDatasetConfig):
    """``datasets.facegpt4vision``: sections chosen by name (matched after trimming spaces)."""

    build_info: FaceGPT4VisionBuildInfo = field(default_factory=FaceGPT4VisionBuildInfo)
    sections: List[str] = field(default_factory=list)  # empty: every section that holds samples
    section_weights: Dict[str, float] = field(default_factory=dict)  # e.g. {Fitzpatrick: 3.0}: repeat x3
    prompt_sections: List[str] = field(default_factory=lambda: ["Pre-Prompt"])  # templates, never samples


@dataclass
class CCSBUAlignBuildInfo:
    """Upstream's stage-2 data: ``<storage>/filter_cap.json`` and ``<storage>/image/<image_id>.jpg``."""

    storage: str = path_field("", "dir", required=True, help="folder holding filter_cap.json and image/")


@dataclass
class CCSBUAlignConfig(DatasetConfig):
    """``datasets.cc_sbu_align`` (MiniGPT-4 v1 stage 2)."""

    build_info: CCSBUAlignBuildInfo = field(default_factory=CCSBUAlignBuildInfo)
    strict_images: bool = False
    on_error: str = choice_field("error", ["error", "skip"])


def check_choices(cfg: Any, schema: Any, where: str = "") -> List[str]:
    """Problems with ``choices`` metadata of ``schema``'s fields in ``cfg`` (recursing into sub-dataclasses)."""
    problems: List[str] = []
    for f in fields(schema):
        value = cfg[f.name] if f.name in cfg else None
        key = f"{where}{f.name}"
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            problems.append(f"{key}={value!r} is not one of {f.metadata['choices']}")
        sub = f.default_factory() if callable(getattr(f, "default_factory", None)) else None  # type: ignore[misc]
        if is_dataclass(sub) and value is not None:
            problems += check_choices(value, type(sub), key + ".")
    return problems
