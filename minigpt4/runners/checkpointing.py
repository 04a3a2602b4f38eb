"""Checkpoint files of a run folder: atomic writes, the ``checkpoint_latest.json`` pointer, keep-last-K, resume.

A run folder ``<output_dir>/<job_name>/<run_id>/`` holds, per checkpoint:

* ``checkpoint_<epoch>.pth`` (end of epoch ``epoch``, upstream's name) or ``checkpoint_<epoch>_<iter>.pth``
  (mid-epoch, after ``iter`` iterations of epoch ``epoch``): ``{"model": trainable weights, "epoch", "iters",
  "global_step", "config"}``, loadable by upstream MiniGPT-4 and by ``model.ckpt``;
* ``trainer_state_<same suffix>.pt``: optimizer, GradScaler, scheduler position, the data position (mixing
  step, each loader's pass and batch), counters and every rank's RNG states — everything to continue the run
  exactly. Readable with ``torch.load(..., weights_only=True)``.

Each file is written to a temporary name in the same folder, flushed and fsync'ed, then ``os.replace``'d into
place. ``checkpoint_latest.json`` is written the same way *after* both files, so it always names a complete
pair: a crash at any moment leaves the previous pointer and its files intact. Only then are old pairs beyond
``keep_last_k`` deleted.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

LATEST = "checkpoint_latest.json"
BEST = "checkpoint_best.pth"
BEST_INFO = "checkpoint_best.json"
_PAIR_RE = re.compile(r"^(checkpoint|trainer_state)_(\d+)(?:_(\d+))?\.(pth|pt)$")


# ------------------------------------------------------------------------------ atomic writes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a partial file under ``path``."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


# ---------------------------------------------------------------------------- model weights


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's own ``trainable_state_dict()`` (upstream key names) or, for plain modules, trainable params."""
    own = getattr(model, "trainable_state_dict", None)
    if callable(own):
        return own()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_weights(model: nn.Module, path: Path, extra: Dict[str, Any]) -> None:
    """Write ``{"model": trainable weights, **extra}`` atomically (FaceGPT models via their checkpoint module)."""
    if callable(getattr(model, "trainable_state_dict", None)):
        from minigpt4.models.checkpoint import save_model_checkpoint

        save_model_checkpoint(model, path, extra)
        _fsync_file(path)  # durable before the pointer names it
        return
    state = {"model": {k: v.detach().cpu().clone() for k, v in trainable_state_dict(model).items()}, **extra}
    atomic_torch_save(state, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load trainable weights written by :func:`save_weights`, accounting for every key (errors name them)."""
    if callable(getattr(model, "trainable_state_dict", None)):
        from minigpt4.models.checkpoint import load_model_checkpoint

        report = load_model_checkpoint(model, path)
        logger.info("loaded weights from %s: %s", path, report)
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"{path}: checkpoint keys do not match the model's trainable parameters; "
                       f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# ------------------------------------------------------------------------------- RNG states


def capture_rng() -> Dict[str, Any]:
    """Python, numpy, torch and CUDA RNG states as lists/tensors (so ``weights_only=True`` can read them)."""
    version, internal, gauss = random.getstate()
    key, mt, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [key, torch.from_numpy(np.asarray(mt, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    key, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((key, mt.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- run folder


def pair_names(epoch: int, iters: Optional[int]) -> Dict[str, str]:
    """File names of one checkpoint: epoch end (``iters=None``) or after ``iters`` iterations of ``epoch``."""
    suffix = f"{epoch}" if iters is None else f"{epoch}_{iters:06d}"
    return {"weights": f"checkpoint_{suffix}.pth", "trainer_state": f"trainer_state_{suffix}.pt"}


def read_latest(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The parsed ``checkpoint_latest.json`` when it names files that exist, else None."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable %s: %s", pointer, err)
        return None
    if not all((Path(run_dir) / info[k]).is_file() for k in ("weights", "trainer_state")):
        logger.warning("ignoring %s: it names files that no longer exist", pointer)
        return None
    return info


class CheckpointManager:
    """Writes checkpoint pairs and the pointer in one run folder (rank 0 only), keeps the last K."""

    def __init__(self, run_dir: Path, keep_last_k: int) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last_k = int(keep_last_k)

    def save(self, model: nn.Module, trainer_state: Dict[str, Any], *, epoch: int, iters: Optional[int],
             global_step: int, extra: Dict[str, Any]) -> Dict[str, Any]:
        """Write weights, then trainer state, then the pointer; then prune. Returns the pointer's content."""
        names = pair_names(epoch, iters)
        started = time.time()
        save_weights(model, self.run_dir / names["weights"], {"epoch": epoch, "iters": iters,
                                                              "global_step": global_step, **extra})
        atomic_torch_save(trainer_state, self.run_dir / names["trainer_state"])
        previous = read_latest(self.run_dir)
        history = [h for h in (previous or {}).get("history", []) if h["weights"] != names["weights"]]
        history.append(names)
        keep = history if self.keep_last_k <= 0 else history[-self.keep_last_k:]
        pointer = {**names, "epoch": epoch, "iters": iters, "global_step": global_step,
                   "next_epoch": trainer_state["next_epoch"], "next_step": trainer_state["next_step"],
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "unix_time": time.time(), "history": keep}
        atomic_write_json(pointer, self.run_dir / LATEST)
        self.prune(keep)
        logger.info("checkpoint saved: %s + %s (%.1f s)", names["weights"], names["trainer_state"],
                    time.time() - started)
        return pointer

    def prune(self, keep: List[Dict[str, str]]) -> None:
        """Delete checkpoint pairs (and leftover temporary files) that the pointer's history does not keep."""
        kept = {name for pair in keep for name in pair.values()}
        for path in self.run_dir.iterdir():
            stale_tmp = path.name.startswith(".") and ".tmp." in path.name
            if (_PAIR_RE.match(path.name) and path.name not in kept) or stale_tmp:
                path.unlink(missing_ok=True)

    def save_best(self, model: nn.Module, *, val_loss: float, epoch: int, iters: Optional[int], global_step: int,
                  extra: Dict[str, Any]) -> None:
        """Weights of the lowest validation loss so far, as ``checkpoint_best.pth`` (+ a small JSON)."""
        save_weights(model, self.run_dir / BEST, {"epoch": epoch, "iters": iters, "global_step": global_step,
                                                  "val_loss": val_loss, **extra})
        atomic_write_json({"val_loss": val_loss, "epoch": epoch, "iters": iters, "global_step": global_step},
                          self.run_dir / BEST_INFO)


# ------------------------------------------------------------------------------ resume lookup


@dataclass
class ResumeTarget:
    """What to resume from: weights, optional trainer state, and the run folder to continue (if any)."""

    weights: Path
    trainer_state: Optional[Path]
    run_dir: Optional[Path]


def find_auto_resume(job_dir: Path, run_id: Optional[str]) -> Optional[ResumeTarget]:
    """``resume_ckpt_path: auto``: the newest complete checkpoint under ``<output_dir>/<job_name>/``.

    With ``run.run_id`` set only that run folder is considered; otherwise every run folder of the job, the one
    whose ``checkpoint_latest.json`` was written last winning. None when nothing complete exists.
    """
    folders = [job_dir / run_id] if run_id else (sorted(p for p in job_dir.iterdir() if p.is_dir())
                                                  if job_dir.is_dir() else [])
    best: Optional[tuple] = None
    for folder in folders:
        info = read_latest(folder)
        if info is not None and (best is None or info["unix_time"] > best[0]):
            best = (info["unix_time"], folder, info)
    if best is None:
        return None
    _, folder, info = best
    return ResumeTarget(folder / info["weights"], folder / info["trainer_state"], folder)


def resolve_resume(value: Optional[str], job_dir: Path, run_id: Optional[str]) -> Optional[ResumeTarget]:
    """Interpret ``run.resume_ckpt_path``: null, ``auto``, a run folder, a ``checkpoint_latest.json``, a
    ``checkpoint_*.pth`` (its ``trainer_state_*`` beside it is used when present) or a ``trainer_state_*.pt``."""
    if value is None or str(value).strip() == "":
        return None
    if str(value).strip().lower() == "auto":
        target = find_auto_resume(job_dir, run_id)
        if target is None:
            logger.info("resume_ckpt_path=auto: no complete checkpoint under %s yet, starting a new run", job_dir)
        return target
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if path.is_dir():
        info = read_latest(path)
        if info is None:
            raise FileNotFoundError(f"run.resume_ckpt_path={value}: folder has no complete {LATEST}")
        return ResumeTarget(path / info["weights"], path / info["trainer_state"], path)
    if not path.is_file():
        raise FileNotFoundError(f"run.resume_ckpt_path={value}: no such file or folder. Use a run folder, its "
                                f"{LATEST}, a checkpoint_*.pth, 'auto' or null")
    if path.name == LATEST:
        return resolve_resume(str(path.parent), job_dir, run_id)
    match = _PAIR_RE.match(path.name)
    if match is None:
        return ResumeTarget(path, None, None)  # e.g. an upstream checkpoint_4.pth from elsewhere
    suffix = path.name[len(match.group(1)) + 1:].rsplit(".", 1)[0]
    weights = path.parent / f"checkpoint_{suffix}.pth"
    state = path.parent / f"trainer_state_{suffix}.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"run.resume_ckpt_path={value}: the matching weights {weights.name} are missing")
    return ResumeTarget(weights, state if state.is_file() else None, None)
