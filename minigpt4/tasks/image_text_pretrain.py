"""``image_text_pretrain``: the task every MiniGPT-4 / MiniGPT-v2 / FaceGPT train config names."""

from __future__ import annotations

from minigpt4.common.registry import registry
from minigpt4.tasks.base_task import BaseTask


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    """The base loop unchanged: ``model(samples)["loss"]`` on image-text batches (no benchmark evaluation)."""
