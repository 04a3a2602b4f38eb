"""The rank-0 progress bar (tqdm: loss, lr, it/s, epoch ETA and run ETA) and the loss window between log lines."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.common.metrics import format_duration


class WindowMeter:
    """Mean of the finite losses added since the last :meth:`take`, with the iteration count and seconds."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.total, self.finite, self.count, self.since = 0.0, 0, 0, time.time()

    def add(self, loss: float) -> None:
        self.count += 1
        if math.isfinite(loss):
            self.total += loss
            self.finite += 1

    def take(self) -> Tuple[float, int, float]:
        """``(mean loss, iterations, seconds)`` of the window, then start a new window."""
        out = (self.total / self.finite if self.finite else math.nan, self.count, time.time() - self.since)
        self._reset()
        return out


class Progress:
    """``with Progress(...) as bar: bar.update(loss, lr, eta)`` — a no-op when not enabled (other ranks)."""

    def __init__(self, epoch: int, max_epoch: int, total: int, initial: int, enabled: bool) -> None:
        self.epoch, self.max_epoch, self.total, self.initial = epoch, max_epoch, total, initial
        self.enabled = enabled
        self._bar: Any = None
        self._redirect: Any = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
                             dynamic_ncols=True, file=sys.stderr, mininterval=0.5, unit="it")
            self._redirect = logging_redirect_tqdm(loggers=[get_logger()])
            self._redirect.__enter__()
        return self

    def update(self, loss: float, lr: float, eta_seconds: Optional[float]) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", run_eta=self.format_eta(eta_seconds), refresh=False)
        self._bar.update(1)

    def __exit__(self, *exc: Any) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
            self._redirect = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def format_eta(seconds: Optional[float]) -> str:
        if seconds is None or not math.isfinite(seconds):
            return "?"
        return format_duration(seconds)
