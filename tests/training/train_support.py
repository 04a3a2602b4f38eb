"""Helpers of the training tests: tiny weight files in their original formats, options and child-process env."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

from minigpt4.tools.tiny_weights import write_tiny_blip2 as _write_tiny_blip2
from minigpt4.tools.tiny_weights import write_tiny_eva  # noqa: F401  (used by the training conftest)

REPO = Path(__file__).resolve().parents[2]


def load_gpu_check() -> ModuleType:
    """``benchmarks/gpu_check.py`` imported as the module ``gpu_check`` (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_tiny_blip2(path: Path) -> Path:
    """A tiny BLIP-2 file whose ``ln_vision`` is at its init (1, 0)."""
    return _write_tiny_blip2(path, random_ln_vision=False)


def tiny_options(arch: str, files: Dict[str, str], out: Path, *extra: str) -> List[str]:
    """``--options`` for ``train_configs/tiny_*.yaml``: weight paths, output folder, then ``extra``."""
    opts = [f"model.llama_model={files['llama_model']}", f"model.vit_ckpt={files['vit_ckpt']}",
            f"run.output_dir={out}"]
    if arch == "minigpt4":
        opts.append(f"model.q_former_model={files['q_former_model']}")
    return opts + list(extra)


def subprocess_env(data_root: Path) -> Dict[str, str]:
    """Environment of a child training process: offline, the synthetic data, this checkout importable."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "FACEGPT_DATA": str(data_root),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"})
    return env
