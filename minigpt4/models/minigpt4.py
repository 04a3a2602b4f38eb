"""MiniGPT-4 (v1), registered as ``minigpt4``.

Vicuna v0 (``pretrain_vicuna0``): EVA-ViT-g → ``ln_vision`` → BLIP-2 Q-Former (32 queries) → ``llama_proj`` 768→H.
LLaMA-2 chat (``pretrain_llama2``, ``has_qformer: False``): EVA-ViT-g → ``ln_vision`` → drop CLS, merge 4 consecutive
patch tokens → ``llama_proj`` 5632→4096 (64 tokens at 224). Only ``llama_proj`` trains by default.

As upstream, v1 does not wrap ``instruction_input`` unless ``chat_template`` is set; its stage-2 prompts come from
``prompt_path`` formatted with ``prompt_template``. Unlike upstream (which passed an empty template to the base class),
conversation batches are formatted with the configured ``prompt_template`` too.
"""

from __future__ import annotations

from typing import Dict

from omegaconf import DictConfig

from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.models.eva_vit import freeze_module
from minigpt4.models.minigpt_base import MiniGPTBase, ModelConfigError, _optional_path

logger = get_logger(__name__)


@registry.register_model("minigpt4")
class MiniGPT4(MiniGPTBase):
    """MiniGPT-4 v1: Q-Former + Vicuna, or merged patches + LLaMA-2 chat (``has_qformer: False``)."""

    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {
        "pretrain_vicuna0": "configs/models/minigpt4_vicuna0.yaml",
        "pretrain_llama2": "configs/models/minigpt4_llama2.yaml",
        "tiny": "configs/models/minigpt4_tiny.yaml",
    }

    def _init_image_adapter(self, cfg: DictConfig) -> int:
        """Q-Former (BLIP-2 weights, frozen by default) when ``has_qformer``; else the merge of the base class."""
        if not cfg.has_qformer:
            return super()._init_image_adapter(cfg)
        from minigpt4.models.qformer import build_qformer, load_blip2_qformer

        attn = {None: "eager", "sdpa": "sdpa", "eager": "lavis"}[cfg.attn_implementation]
        self.Qformer, self.query_tokens = build_qformer(
            cfg.qformer_config, cfg.num_query_token, int(self.visual_encoder.num_features), attn_implementation=attn
        )
        what = "BLIP-2 weights (blip2_pretrained_flant5xxl.pth)"
        path = None if self.on_meta else _optional_path(cfg, "q_former_model", what)
        if path:
            report = load_blip2_qformer(self.Qformer, self.query_tokens, self.ln_vision, path, self.visual_encoder)
            report.log(logger)
            for prefix in ("Qformer.", "query_tokens", "ln_vision."):
                self.weight_sources[prefix] = path
        elif cfg.freeze_qformer and not self.on_meta:
            raise ModelConfigError(
                "model.q_former_model is null but model.freeze_qformer is True: a frozen, randomly initialised "
                "Q-Former never learns. Set --options model.q_former_model=/path/to/blip2_pretrained_flant5xxl.pth"
            )
        if cfg.freeze_qformer:
            freeze_module(self.Qformer)
            self.query_tokens.requires_grad = False
            logger.info("Q-Former frozen")
        return int(cfg.qformer_config.hidden_size)
