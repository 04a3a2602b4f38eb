"""The package logger: one ``facegpt`` logger, quiet on every rank but zero.

Modules call ``get_logger(__name__)``; front ends call :func:`setup_logging` once. Non-zero ranks
only pass warnings and errors, so a message is printed once per run, not once per GPU.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Set

ROOT = "facegpt"
_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
_once_keys: Set[str] = set()


def _env_rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


class _RankZeroFilter(logging.Filter):
    """Lets everything through on rank 0, only WARNING and above elsewhere."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def get_logger(name: Optional[str] = None) -> logging.Logger:
    """A child of the package logger: ``get_logger(__name__)`` → ``facegpt.minigpt4.models...``."""
    if not name or name == ROOT:
        return logging.getLogger(ROOT)
    return logging.getLogger(f"{ROOT}.{name}")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes each record to whatever ``sys.stderr`` is at that moment (a redirected or captured stderr), so a
    handler set up once never writes to a stream that was replaced and closed since."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102 - the current standard error
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ / setStream assign it; the current stderr wins
        pass


def setup_logging(level: int = logging.INFO, rank: Optional[int] = None, stream=None) -> logging.Logger:
    """Attach one stream handler to the package logger (idempotent) with the rank-zero filter."""
    root = logging.getLogger(ROOT)
    rank = _env_rank() if rank is None else rank
    for handler in list(root.handlers):
        if getattr(handler, "_facegpt", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankZeroFilter(rank))
    handler.setLevel(level)  # the console keeps its level even when a run file log lowers the logger's
    handler._facegpt = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return root


def log_once(logger: logging.Logger, key: str, msg: str, *args, level: int = logging.WARNING) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process, never again."""
    if key in _once_keys:
        return
    _once_keys.add(key)
    logger.log(level, msg, *args)
