"""Run settings the runner derives or checks: precision and autocast, the output root, invalid combinations."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)


def resolve_precision(run_cfg: Any, device: torch.device) -> str:
    """``run.precision`` with ``auto`` resolved: bf16 on CUDA with bf16, fp16 on other CUDA, fp32 on CPU.

    ``run.amp: False`` means fp32 (upstream's switch for mixed precision).
    """
    requested = str(run_cfg.precision)
    if not run_cfg.amp:
        if requested not in ("auto", "fp32"):
            logger.warning("run.amp is False: training in fp32 (run.precision=%s ignored)", requested)
        return "fp32"
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_factory(precision: str, device: torch.device) -> Callable[[], ContextManager[Any]]:
    """A zero-argument callable giving the autocast context of ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def output_root(output_dir: str) -> Path:
    """``run.output_dir`` as an absolute path (relative → against the current working directory)."""
    path = Path(str(output_dir)).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def check_run_settings(run: Any) -> None:
    """Combinations of ``run`` values the runner cannot honour, all reported in one ``ValueError``."""
    problems = []
    if run.accum_grad_iters < 1:
        problems.append(f"run.accum_grad_iters must be >= 1, got {run.accum_grad_iters}")
    elif run.save_every_iters and run.save_every_iters % run.accum_grad_iters:
        problems.append(f"run.save_every_iters ({run.save_every_iters}) must be a multiple of "
                        f"run.accum_grad_iters ({run.accum_grad_iters}): a checkpoint cannot hold half an "
                        "accumulated gradient")
    if run.val_every_iters and not run.valid_splits:
        problems.append("run.val_every_iters is set but run.valid_splits is empty: add --options "
                        "'run.valid_splits=[val]' (and a val split on the datasets)")
    for key in ("log_freq", "max_epoch", "max_nonfinite_steps"):
        if run[key] < 1:
            problems.append(f"run.{key} must be >= 1, got {run[key]}")
    if run.keep_last_k < 0:
        problems.append(f"run.keep_last_k must be >= 0 (0 keeps every checkpoint), got {run.keep_last_k}")
    if problems:
        raise ValueError("invalid run settings:\n  - " + "\n  - ".join(problems))
