"""Runners: DDP, loaders, optimizer, epochs, validation, checkpoints and resume (``run.runner`` names one)."""

from __future__ import annotations

from minigpt4.runners.runner_base import RunnerBase

__all__ = ["RunnerBase"]
