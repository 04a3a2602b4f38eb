"""Run settings the runner derives or checks: the output root and invalid combinations.

Precision (autocast dtype, GradScaler) is :mod:`minigpt4.common.precision`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minigpt4.common.errors import UserError


class RunConfigError(UserError, ValueError):
    """The run cannot start as configured (run settings, splits, run folder, a checkpoint of another run)."""


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
        raise RunConfigError("invalid run settings:\n  - " + "\n  - ".join(problems))
