"""The processor base class: a typed config in, a callable out.

A processor class declares its options as a dataclass (a subclass of
:class:`minigpt4.common.schema.ProcessorConfig`) in ``config_schema``; :meth:`BaseProcessor.from_config`
merges the given config (a dict or DictConfig, e.g. ``vis_processor.train`` of a dataset) over that schema,
so an unknown key or a wrong type is an error naming the processor, and defaults live in the schema only.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Type

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from minigpt4.common.schema import ProcessorConfig


class ProcessorConfigError(ValueError):
    """A processor config names an unknown key or holds a value of the wrong type."""


def typed_processor_config(schema: Type[ProcessorConfig], cfg: Optional[Any]) -> DictConfig:
    """``cfg`` (dict, DictConfig or None) merged over ``schema``'s defaults, validated."""
    base = OmegaConf.structured(schema)
    if cfg is None:
        return base
    if not isinstance(cfg, (Mapping, DictConfig)):
        raise ProcessorConfigError(f"{schema.__name__}: expected a mapping of options, got {type(cfg).__name__}")
    try:
        return OmegaConf.merge(base, cfg)
    except OmegaConfBaseException as err:
        known = ", ".join(sorted(base.keys()))
        raise ProcessorConfigError(f"{schema.__name__}: {err.msg if hasattr(err, 'msg') else err}. "
                                   f"Known options: {known}") from err


class BaseProcessor:
    """Identity processor; subclasses override :meth:`__call__` and declare ``config_schema``."""

    config_schema: Type[ProcessorConfig] = ProcessorConfig

    def __call__(self, item: Any) -> Any:
        return item

    @classmethod
    def from_config(cls, cfg: Optional[Any] = None) -> "BaseProcessor":
        """Build from a processor config (``None`` = the schema's defaults)."""
        return cls()

    @classmethod
    def typed_config(cls, cfg: Optional[Any]) -> DictConfig:
        """``cfg`` validated against :attr:`config_schema`."""
        return typed_processor_config(cls.config_schema, cfg)

    def build(self, **kwargs: Any) -> "BaseProcessor":
        """Upstream's alias for building from keyword options."""
        return self.from_config(OmegaConf.create(kwargs))
