"""Checkpoint files of a run folder: atomic writes, the ``checkpoint_latest.json`` pointer, keep-last-K, resume.

A run folder ``<output_dir>/<job_name>/<run_id>/`` holds, per checkpoint:

* ``checkpoint_<epoch>.pth`` (end of epoch ``epoch``, upstream's name) or ``checkpoint_<epoch>_<iter>.pth``
  (mid-epoch, after ``iter`` iterations of epoch ``epoch``): ``{"model": trainable weights, "epoch", "iters",
  "global_step", "config"}``, loadable by upstream MiniGPT-4 and by ``model.ckpt``;
* ``trainer_state_<same suffix>.pt``: optimizer, GradScaler, scheduler position, the data position (mixing
  step, each loader's pass and batch), counters and every rank's RNG states — everything to continue the run
  exactly. Readable with ``torch.load(..., weights_only=True)``.

Every file goes through the one writer, :mod:`minigpt4.common.checkpoint_io` (temporary name in the same folder,
fsync, ``os.replace``). ``checkpoint_latest.json`` is written the same way *after* both files, so it always names a
complete pair: a crash at any moment leaves the previous pointer and its files intact. Only then are old pairs
beyond ``keep_last_k`` deleted.

Resume verifies a pair before using it: both files readable with ``weights_only=True`` (zip checksums included)
and written by the same save (equal ``global_step``). A pair damaged afterwards (a truncated copy, a full disk, a
deleted file) is reported in one warning line and the newest complete pair still on disk is used instead; when
none is left, :class:`ResumeError` says so in one line.
"""

from __future__ import annotations

import json
import random
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from minigpt4.common.checkpoint_io import (WeightsFileError, atomic_torch_save, atomic_write, atomic_write_json,
                                           read_weights)
from minigpt4.common.logger import get_logger
from minigpt4.models.checkpoint import load_model_checkpoint, save_model_checkpoint

logger = get_logger(__name__)

LATEST = "checkpoint_latest.json"
BEST = "checkpoint_best.pth"
BEST_INFO = "checkpoint_best.json"
RESUME_KEY = "run.resume_ckpt_path"
_PAIR_RE = re.compile(r"^(checkpoint|trainer_state)_(\d+)(?:_(\d+))?\.(pth|pt)$")
__all__ = ["BEST", "BEST_INFO", "LATEST", "CheckpointManager", "ResumeError", "ResumeTarget", "atomic_torch_save",
           "atomic_write", "atomic_write_json", "capture_rng", "find_auto_resume", "load_weights", "pair_names",
           "resolve_resume", "restore_rng", "save_weights"]


# ---------------------------------------------------------------------------- model weights


class ResumeError(ValueError):
    """``run.resume_ckpt_path`` names nothing resumable; the message says what was found and the fix."""


def save_weights(model: nn.Module, path: Path, extra: Dict[str, Any],
                 weights: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Write ``{"model": trainable weights (upstream names), **extra}`` with the one atomic writer.

    ``weights``: the trainable weights already gathered under upstream's names (FSDP: each rank holds only a shard
    of ``model``, :func:`minigpt4.runners.fsdp.gather_trainable_weights` assembles them on rank 0); None = read them
    from ``model``.
    """
    if weights is None:
        save_model_checkpoint(model, path, extra)
        return
    if "model" in extra:
        raise ValueError("save_weights: 'model' in extra would overwrite the weights")
    atomic_torch_save({"model": weights, **extra}, path)
    logger.info("saved %d trainable tensors to %s", len(weights), path)


def load_weights(model: nn.Module, path: Path, key: str = RESUME_KEY) -> None:
    """Load trainable weights written by :func:`save_weights`, accounting for every key (errors name them)."""
    if callable(getattr(model, "trainable_state_dict", None)):
        report = load_model_checkpoint(model, path, key=key)
        logger.info("loaded weights from %s: %s", path, report.summary())
        return
    ckpt = read_weights(path, "a checkpoint {'model': {...}}", key)
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
    """The parsed ``checkpoint_latest.json`` of ``run_dir`` (not checked against the files), else None."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable %s: %s", pointer, err)
        return None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("weights", "trainer_state")):
        logger.warning("ignoring %s: it does not name a weights and a trainer_state file", pointer)
        return None
    return info


class CheckpointManager:
    """Writes checkpoint pairs and the pointer in one run folder (rank 0 only), keeps the last K."""

    def __init__(self, run_dir: Path, keep_last_k: int) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last_k = int(keep_last_k)

    def save(self, model: nn.Module, trainer_state: Dict[str, Any], *, epoch: int, iters: Optional[int],
             global_step: int, extra: Dict[str, Any],
             weights: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, Any]:
        """Write weights, then trainer state, then the pointer; then prune. Returns the pointer's content.
        ``weights``: already gathered trainable weights (see :func:`save_weights`)."""
        names = pair_names(epoch, iters)
        started = time.time()
        save_weights(model, self.run_dir / names["weights"], {"epoch": epoch, "iters": iters,
                                                              "global_step": global_step, **extra}, weights)
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
                  extra: Dict[str, Any], weights: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Weights of the lowest validation loss so far, as ``checkpoint_best.pth`` (+ a small JSON)."""
        save_weights(model, self.run_dir / BEST, {"epoch": epoch, "iters": iters, "global_step": global_step,
                                                  "val_loss": val_loss, **extra}, weights)
        atomic_write_json({"val_loss": val_loss, "epoch": epoch, "iters": iters, "global_step": global_step},
                          self.run_dir / BEST_INFO)


# ------------------------------------------------------------------------------ pair checks


def _order(weights_name: str) -> Tuple[int, float]:
    """Sort key of a checkpoint file name: (epoch, iterations; an epoch-end checkpoint after all of its)."""
    match = _PAIR_RE.match(weights_name)
    if match is None:
        return (-1, -1.0)
    return int(match.group(2)), float(match.group(3)) if match.group(3) is not None else float("inf")


def _names_of(path: Path) -> Dict[str, str]:
    """The pair a ``checkpoint_*.pth`` or ``trainer_state_*.pt`` file belongs to."""
    match = _PAIR_RE.match(path.name)
    assert match is not None
    suffix = path.name[len(match.group(1)) + 1:].rsplit(".", 1)[0]
    return {"weights": f"checkpoint_{suffix}.pth", "trainer_state": f"trainer_state_{suffix}.pt"}


def pairs_on_disk(run_dir: Path) -> List[Dict[str, str]]:
    """Every checkpoint pair with at least one file in ``run_dir``, newest first."""
    pairs = {_names_of(p)["weights"]: _names_of(p) for p in Path(run_dir).iterdir() if _PAIR_RE.match(p.name)}
    return [pairs[name] for name in sorted(pairs, key=_order, reverse=True)]


def pair_problem(run_dir: Path, names: Dict[str, str]) -> Optional[str]:
    """None when the pair is complete, readable and from one save; else what is wrong, naming the file."""
    files = {kind: Path(run_dir) / name for kind, name in names.items()}
    for path in files.values():
        if not path.is_file():
            return f"{path} is missing"
    try:
        weights = read_weights(files["weights"], "a checkpoint {'model': {...}}", RESUME_KEY, mmap=True)
        check_zip_checksums(files["weights"], RESUME_KEY)
        state = read_weights(files["trainer_state"], "a trainer state", RESUME_KEY, mmap=True)
        check_zip_checksums(files["trainer_state"], RESUME_KEY)
    except WeightsFileError as err:
        return str(err)
    if not isinstance(weights, dict) or not isinstance(weights.get("model"), dict):
        return f"{files['weights']} holds no 'model' entry (not a checkpoint written by the runner)"
    if not isinstance(state, dict) or "next_step" not in state:
        return f"{files['trainer_state']} is not a trainer state (no next_step)"
    if "global_step" in state and weights.get("global_step") != state["global_step"]:
        return (f"{files['weights'].name} (global step {weights.get('global_step')}) and {files['trainer_state'].name} "
                f"(global step {state.get('global_step')}) come from different saves")
    return None


def check_zip_checksums(path: Path, key: str) -> None:
    """Raise :class:`WeightsFileError` when a member of a zip-format torch file fails its CRC (bytes overwritten)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # not a zip file: torch.load already judged it
    if bad is not None:
        raise WeightsFileError(path, f"is damaged: archive member {bad} fails its checksum", key)


def newest_complete_pair(run_dir: Path, value: str, newest: Optional[Dict[str, str]] = None
                         ) -> Optional[Dict[str, str]]:
    """The pair to resume from in ``run_dir``: the pointer's (or ``newest``'s) pair if complete, else the newest
    complete older one (one warning line says which file was damaged). None when the folder holds no checkpoint;
    :class:`ResumeError` when it holds only damaged ones."""
    first = newest or read_latest(run_dir)
    candidates = [{"weights": first["weights"], "trainer_state": first["trainer_state"]}] if first else []
    limit = _order(candidates[0]["weights"]) if newest else (float("inf"),)
    candidates += [p for p in pairs_on_disk(run_dir) if p not in candidates and _order(p["weights"]) <= limit]
    problems: List[str] = []
    for names in candidates:
        problem = pair_problem(run_dir, names)
        if problem is None:
            if problems:
                logger.warning("cannot resume from %s; resuming from the newest complete pair %s + %s",
                               "; ".join(problems), names["weights"], names["trainer_state"])
            return names
        problems.append(problem)
    if problems:
        raise ResumeError(f"{RESUME_KEY}={value}: no complete checkpoint pair left in {run_dir} ({'; '.join(problems)})."
                          f" Restore the files, or start afresh with --options {RESUME_KEY}=null")
    return None


# ------------------------------------------------------------------------------ resume lookup


@dataclass
class ResumeTarget:
    """What to resume from: weights, optional trainer state, and the run folder to continue (if any)."""

    weights: Path
    trainer_state: Optional[Path]
    run_dir: Optional[Path]


def _folder_time(folder: Path) -> float:
    """When a run folder last saved a checkpoint: its pointer's time, else its newest pair file's mtime."""
    info = read_latest(folder)
    if info is not None and isinstance(info.get("unix_time"), (int, float)):
        return float(info["unix_time"])
    times = [p.stat().st_mtime for p in folder.iterdir() if _PAIR_RE.match(p.name)]
    return max(times, default=-1.0)


def find_auto_resume(job_dir: Path, run_id: Optional[str]) -> Optional[ResumeTarget]:
    """``resume_ckpt_path: auto``: the newest complete checkpoint pair under ``<output_dir>/<job_name>/``.

    With ``run.run_id`` set only that run folder is considered; otherwise the run folder that saved last. Within
    it, a damaged newest pair falls back to the newest complete one (see :func:`newest_complete_pair`). None when
    no checkpoint exists yet.
    """
    folders = [job_dir / run_id] if run_id else (sorted(p for p in job_dir.iterdir() if p.is_dir())
                                                  if job_dir.is_dir() else [])
    folders = [f for f in folders if f.is_dir() and _folder_time(f) >= 0]
    if not folders:
        return None
    folder = max(folders, key=_folder_time)
    names = newest_complete_pair(folder, "auto")
    if names is None:
        return None
    return ResumeTarget(folder / names["weights"], folder / names["trainer_state"], folder)


def _resume_file(path: Path, value: str) -> ResumeTarget:
    """An explicit ``checkpoint_*.pth`` / ``trainer_state_*.pt``: its pair (weights only when the state file is
    absent), or, when damaged, the newest complete pair before it in the same folder."""
    names = _names_of(path)
    weights, state = path.parent / names["weights"], path.parent / names["trainer_state"]
    if not weights.is_file() and not state.is_file():
        raise ResumeError(f"{RESUME_KEY}={value}: the matching weights {weights.name} are missing")
    if weights.is_file() and not state.is_file():
        read_weights(weights, "a checkpoint {'model': {...}}", RESUME_KEY, mmap=True)
        check_zip_checksums(weights, RESUME_KEY)
        return ResumeTarget(weights, None, None)
    chosen = newest_complete_pair(path.parent, value, newest=names)
    assert chosen is not None
    return ResumeTarget(path.parent / chosen["weights"], path.parent / chosen["trainer_state"], None)


def resolve_resume(value: Optional[str], job_dir: Path, run_id: Optional[str]) -> Optional[ResumeTarget]:
    """Interpret ``run.resume_ckpt_path``: null, ``auto``, a run folder, a ``checkpoint_latest.json``, a
    ``checkpoint_*.pth`` (its ``trainer_state_*`` beside it is used when present) or a ``trainer_state_*.pt``.
    Damaged pairs fall back to the newest complete one; :class:`ResumeError` when none is left."""
    if value is None or str(value).strip() == "":
        return None
    if str(value).strip().lower() == "auto":
        target = find_auto_resume(job_dir, run_id)
        if target is None:
            logger.info("resume_ckpt_path=auto: no checkpoint under %s yet, starting a new run", job_dir)
        return target
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if path.is_file() and path.name == LATEST:
        path = path.parent
    if path.is_dir():
        names = newest_complete_pair(path, str(value))
        if names is None:
            raise ResumeError(f"{RESUME_KEY}={value}: the folder holds no checkpoint ({LATEST} or checkpoint_*.pth); "
                              "name a run folder of an earlier run, 'auto' or null")
        return ResumeTarget(path / names["weights"], path / names["trainer_state"], path)
    if not path.is_file():
        raise ResumeError(f"{RESUME_KEY}={value}: no such file or folder. Use a run folder, its "
                                f"{LATEST}, a checkpoint_*.pth, 'auto' or null")
    if _PAIR_RE.match(path.name) is None:  # e.g. an upstream checkpoint_4.pth renamed, from elsewhere
        read_weights(path, "a checkpoint {'model': {...}}", RESUME_KEY, mmap=True)
        return ResumeTarget(path, None, None)
    return _resume_file(path, str(value))
