"""MiniGPT-4 (v1), registered as ``minigpt4``: presets of :class:`~minigpt4.models.minigpt_base.MiniGPTBase`.

Vicuna v0 (``pretrain_vicuna0``): EVA-ViT-g → ``ln_vision`` → BLIP-2 Q-Former (32 queries) → ``llama_proj`` 768→H.
LLaMA-2 chat (``pretrain_llama2``, ``has_qformer: False``): EVA-ViT-g → ``ln_vision`` → drop CLS, merge 4 consecutive
patch tokens → ``llama_proj`` 5632→4096 (64 tokens at 224). Only ``llama_proj`` trains by default.

As upstream, v1 does not wrap ``instruction_input`` unless ``chat_template`` is set; its stage-2 prompts come from
``prompt_path`` formatted with ``prompt_template``. Unlike upstream (which passed an empty template to the base class),
conversation batches are formatted with the configured ``prompt_template`` too.
"""

from __future__ import annotations

from typing import Dict

from minigpt4.common.registry import registry
from minigpt4.models.minigpt_base import MiniGPTBase


@registry.register_model("minigpt4")
class MiniGPT4(MiniGPTBase):
    """MiniGPT-4 v1: Q-Former + Vicuna, or merged patches + LLaMA-2 chat (``has_qformer: False``)."""

    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {
        "pretrain_vicuna0": "configs/models/minigpt4_vicuna0.yaml",
        "pretrain_llama2": "configs/models/minigpt4_llama2.yaml",
        "tiny": "configs/models/minigpt4_tiny.yaml",
    }
