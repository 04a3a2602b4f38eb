"""MiniGPT-v2, registered as ``minigpt_v2``: presets of :class:`~minigpt4.models.minigpt_base.MiniGPTBase`.

EVA-ViT-g at 448 → ``ln_vision`` → drop CLS, merge 4 consecutive patch tokens (1024 → 256) → ``llama_proj``
5632→4096 → Llama-2-chat with LoRA on ``q_proj``/``v_proj``. ``llama_proj`` and LoRA train. Unlike upstream, LoRA
dropout and target modules come from the config (upstream hard-wired 0.05 and q/v, the presets keep those values).
"""

from __future__ import annotations

from typing import Dict

from omegaconf import DictConfig

from minigpt4.common.registry import registry
from minigpt4.models.minigpt_base import MiniGPTBase, ModelConfigError


@registry.register_model("minigpt_v2")
class MiniGPTv2(MiniGPTBase):
    """MiniGPT-v2: merged patch tokens + LoRA-tuned LLaMA-2 chat (or another LLM, e.g. SmolLM2 for the demo)."""

    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {
        "pretrain": "configs/models/minigpt_v2.yaml",
        "tiny": "configs/models/minigpt_v2_tiny.yaml",
        "smollm2": "configs/models/minigpt_v2_smollm2.yaml",
    }

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """MiniGPT-v2 has no Q-Former."""
        if cfg.has_qformer:
            raise ModelConfigError(
                "MiniGPT-v2 has no Q-Former: set model.has_qformer: False (the minigpt_v2 presets do)"
            )
