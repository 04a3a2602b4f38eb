"""Tasks: build datasets and model from a config and run the inner training loop (``run.task`` names one)."""

from __future__ import annotations

from typing import Any

from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask
from minigpt4.tasks.image_text_align import ImageTextAlignTask
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

__all__ = ["BaseTask", "ImageTextAlignTask", "ImageTextPretrainTask", "setup_task"]


def setup_task(cfg: Any) -> BaseTask:
    """The task named by ``cfg.run.task`` (upstream's entry point)."""
    name = cfg.run.task
    if not name:
        raise ValueError("run.task is not set; the MiniGPT configs use run.task=image_text_pretrain")
    return registry.get_task_class(name).setup_task(cfg=cfg)
