"""What a researcher watches during training: ``metrics.jsonl``, TensorBoard, wandb, loss curves, the summary.

:class:`MetricsWriter` is created on rank 0 only (the runner passes ``enabled=False`` elsewhere). Each record
is a flat dict with a ``type`` (``"train"``, ``"val"``, ``"nonfinite"``, ...) and a ``global_step``; numeric
values also go to TensorBoard (when the ``tensorboard`` package is installed and enabled) and to wandb (when
``run.wandb_log`` is True).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
SUMMARY_FILE = "summary.json"


class MetricsWriter:
    """Appends records to ``<run_dir>/metrics.jsonl`` and mirrors numbers to TensorBoard / wandb."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb_init: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        if tensorboard:
            self._tb = _open_tensorboard(Path(run_dir) / "tensorboard")
        if wandb_init is not None:
            self._wandb = _open_wandb(wandb_init)

    def log(self, record: Dict[str, Any]) -> None:
        """Write one record (rank 0); non-finite floats are written as ``null``."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean, sort_keys=False) + "\n")
        step = int(record.get("global_step", 0))
        kind = record.get("type", "train")
        numbers = {k: v for k, v in clean.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("global_step", "type")}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _open_tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("TensorBoard scalars off: the tensorboard package is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(folder))


def _open_wandb(init: Dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise RuntimeError("run.wandb_log is True but the wandb package is not installed: pip install wandb "
                           "(then `wandb login`), or set --options run.wandb_log=False") from err
    wandb.init(**init)
    return wandb


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    records: List[Dict[str, Any]] = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, max_global_step: int) -> int:
    """Drop records after ``max_global_step`` (lines a crashed run wrote past its last checkpoint).

    Rewrites the file atomically; returns how many records were dropped.
    """
    path = Path(path)
    records = read_metrics(path)
    keep = [r for r in records if int(r.get("global_step", 0)) <= max_global_step]
    if len(keep) == len(records) and path.is_file():
        return 0
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(records) - len(keep)


def plot_loss_curves(metrics_path: Path, out_png: Path, title: str = "") -> bool:
    """Train (and validation) loss against the global step as a PNG; False when there is nothing to plot."""
    records = read_metrics(metrics_path)
    train = [(r["global_step"], r["loss"]) for r in records if r.get("type") == "train" and r.get("loss") is not None]
    val = [(r["global_step"], r["val_loss"]) for r in records
           if r.get("type") == "val" and r.get("val_loss") is not None]
    if not train and not val:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.2, markersize=4)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(out_png).with_name(Path(out_png).name + f".tmp.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return True


def peak_memory(device: torch.device) -> Tuple[float, str]:
    """``(MiB, kind)``: CUDA max allocated on a CUDA device, else the process's max resident set size."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_max_rss"


def format_duration(seconds: float) -> str:
    """``3725.0`` → ``"1h02m05s"``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_summary(summary: Dict[str, Any]) -> str:
    """The one-screen end-of-run report."""
    def num(key: str, fmt: str = "{:.4f}") -> str:
        value = summary.get(key)
        return "n/a" if value is None else fmt.format(value)

    trunc = summary.get("truncation") or {}
    lines = [
        f"run {summary.get('job_name')}/{summary.get('run_id')}: {summary.get('status')}",
        f"  folder            {summary.get('run_dir')}",
        f"  epochs            {summary.get('epochs_done')} of {summary.get('max_epoch')} "
        f"({summary.get('iters_per_epoch')} iterations each), {summary.get('global_step')} iterations, "
        f"{summary.get('optimizer_steps')} optimizer steps",
        f"  samples seen      {summary.get('samples_seen')} (all ranks; world size {summary.get('world_size')})",
        f"  skipped images    {summary.get('skipped_images')} "
        f"({summary.get('skipped_batches', 0)} empty batches passed over)",
        f"  non-finite steps  {summary.get('nonfinite_steps')} skipped",
        f"  truncations       {', '.join(f'{k}={v}' for k, v in trunc.items()) if trunc else 'n/a'}",
        f"  final train loss  {num('final_train_loss')}   best val loss {num('best_val_loss')}",
        f"  time              {format_duration(summary.get('time_s') or 0.0)}   precision {summary.get('precision')}",
        f"  peak memory       {num('peak_memory_mb', '{:.0f}')} MiB ({summary.get('memory_kind')})",
        f"  latest checkpoint {summary.get('checkpoint_latest')}",
    ]
    if summary.get("checkpoint_best"):
        lines.append(f"  best checkpoint   {summary.get('checkpoint_best')}")
    cache = summary.get("vision_feature_cache")
    if cache:
        lines.append(f"  tower feature cache {cache.get('hits')} hits, {cache.get('misses')} misses (tower forwards), "
                     f"{cache.get('evicted')} evicted, {cache.get('images_held')} images / {cache.get('mb_held')} MB held")
    if summary.get("ranks_in_sync") is not None:
        lines.append(f"  ranks in sync     {summary.get('ranks_in_sync')} "
                     f"(max |param difference| {summary.get('rank_param_max_abs_diff')})")
    return "\n".join(lines)
