"""FaceGPT: MiniGPT-4 / MiniGPT-v2 for face understanding.

Importing the package registers every builder, model, processor, task, runner and LR scheduler, so
``registry.get_model_class("minigpt_v2")`` works after a plain ``import minigpt4``.
"""

from __future__ import annotations

import importlib

from minigpt4.common.config import LIBRARY_ROOT
from minigpt4.common.registry import registry

__all__ = ["registry", "LIBRARY_ROOT", "load_model"]
__version__ = "0.1.0"

#: The installed ``minigpt4/`` folder; relative paths in component default YAMLs resolve against it.

# Registration happens in these subpackages' __init__ modules (each imports its own modules).
for _sub in ("processors", "datasets.builders", "models", "tasks", "runners", "common.optims"):
    importlib.import_module(f"minigpt4.{_sub}")


def __getattr__(name: str):
    """``from minigpt4 import load_model`` imports the Python API (:mod:`minigpt4.api`) only when asked for."""
    if name == "load_model":
        from minigpt4.api import load_model

        return load_model
    raise AttributeError(f"module 'minigpt4' has no attribute {name!r}")
