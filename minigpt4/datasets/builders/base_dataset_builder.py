"""``BaseDatasetBuilder``: upstream's builder shape over FaceGPT's typed dataset configs.

A builder class names its default YAML in ``DATASET_CONFIG_DICT`` (paths relative to the ``minigpt4/``
folder, as upstream) and its options in ``config_schema`` (a :class:`~minigpt4.common.schema.DatasetConfig`
subclass). ``Builder(cfg)`` accepts the typed block :func:`minigpt4.common.config.load_config` produces, a plain
dict / DictConfig of user settings, a YAML path, or ``None`` (defaults only); in every case the schema, the
default YAML and the given settings are merged in that order. ``build_datasets()`` returns
``{"train": dataset[, "val": dataset]}``; each dataset has ``name``, ``sample_ratio`` and ``collater``.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Dict, Optional, Type

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.config import LIBRARY_ROOT  # DATASET_CONFIG_DICT paths are relative to it
from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.common.schema import DatasetConfig
from minigpt4.datasets.schemas import check_choices
from minigpt4.processors.base_processor import BaseProcessor

logger = get_logger(__name__)



class DatasetConfigError(ValueError):
    """A dataset config value is wrong; the message names the key and the fix."""


def _first_dataset_entry(path: Path) -> DictConfig:
    """The first block under ``datasets:`` of a dataset YAML (upstream's ``load_dataset_config``)."""
    loaded = OmegaConf.load(path)
    section = loaded.get("datasets") if isinstance(loaded, DictConfig) else None
    if not section:
        raise DatasetConfigError(f"{path}: a dataset YAML needs a 'datasets: {{<name>: {{...}}}}' block")
    return next(iter(section.values()))


class BaseDatasetBuilder(abc.ABC):
    """Reads a dataset config, builds processors, then datasets (subclasses define :meth:`build`)."""

    train_dataset_cls: Optional[type] = None
    eval_dataset_cls: Optional[type] = None
    DATASET_CONFIG_DICT: Dict[str, str] = {}
    config_schema: Type[DatasetConfig] = DatasetConfig

    def __init__(self, cfg: Any = None) -> None:
        if isinstance(cfg, (str, os.PathLike)):
            cfg = _first_dataset_entry(Path(cfg))
        self.config = self.typed_config(cfg)
        self.data_type = self.config.data_type
        self.vis_processors: Dict[str, Any] = {"train": BaseProcessor(), "eval": BaseProcessor()}
        self.text_processors: Dict[str, Any] = {"train": BaseProcessor(), "eval": BaseProcessor()}

    @classmethod
    def default_config_path(cls, type_: str = "default") -> Optional[Path]:
        """Absolute path of the default YAML for ``type_`` (None when the builder has none)."""
        rel = cls.DATASET_CONFIG_DICT.get(type_)
        if rel is None:
            if cls.DATASET_CONFIG_DICT:
                raise DatasetConfigError(f"{cls.__name__}: unknown type {type_!r}; known: "
                                         f"{sorted(cls.DATASET_CONFIG_DICT)}")
            return None
        return LIBRARY_ROOT / rel

    @classmethod
    def typed_config(cls, cfg: Any = None) -> DictConfig:
        """Schema defaults ← default YAML ← ``cfg``, with choice fields checked."""
        user = OmegaConf.create({} if cfg is None else cfg)
        default_path = cls.default_config_path(str(user.get("type", "default")))
        layers = [OmegaConf.structured(cls.config_schema)]
        if default_path is not None:
            layers.append(_first_dataset_entry(default_path))
        merged = OmegaConf.merge(*layers, user)
        problems = check_choices(merged, cls.config_schema)
        if problems:
            raise DatasetConfigError(f"{cls.__name__}: " + "; ".join(problems))
        return merged

    @staticmethod
    def _build_processor(entry: Any) -> Any:
        if entry is None:
            return None
        if "name" not in entry:
            raise DatasetConfigError(f"a processor entry needs a registered name, got {OmegaConf.to_container(entry)}")
        return registry.get_processor_class(entry["name"]).from_config(entry)

    def build_processors(self) -> None:
        """``vis_processor`` / ``text_processor`` ``train`` and ``eval`` entries → processor objects (or None)."""
        for attr, key in (("vis_processors", "vis_processor"), ("text_processors", "text_processor")):
            pair = self.config.get(key)
            if pair is None:
                continue
            setattr(self, attr, {split: self._build_processor(pair.get(split)) for split in ("train", "eval")})

    def build_datasets(self) -> Dict[str, Any]:
        """Build every split (nothing is downloaded: data paths are local) and set ``sample_ratio``."""
        datasets = self.build()
        for ds in datasets.values():
            ds.sample_ratio = float(self.config.sample_ratio)
        return datasets

    @abc.abstractmethod
    def build(self) -> Dict[str, Any]:
        """``{split: dataset}``; builders call :meth:`build_processors` first."""
