"""Connectors: how the vision tower's features become the tokens ``llama_proj`` projects into the LLM.

* :class:`MergeConnector` (MiniGPT-v2, MiniGPT-4 with LLaMA-2): drop CLS, concatenate ``model.merge_tokens``
  (upstream: 4) consecutive patch tokens (raster order) → ``[B, N/m, m·D]``.
* :class:`QFormerConnector` (MiniGPT-4 with Vicuna): BLIP-2's Q-Former, its learned queries attending to all
  vision tokens → ``[B, Q, hidden]``.

A connector is a plain object, not a module: the Q-Former and its queries are registered on the model under
upstream's names (``Qformer``, ``query_tokens``), so parameter names and checkpoint keys stay upstream's.
:func:`image_token_count` gives the number of image tokens from the config alone (no weights needed), which is
what the sample encoder reserves per image.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: consecutive patch tokens merged into one LLM token in the models without Q-Former (upstream's fixed 4; FaceGPT's
#: ``model.merge_tokens`` changes it)
MERGE_TOKENS = 4


def merge_count(cfg: Any) -> int:
    """``model.merge_tokens`` of a config (upstream's 4 where the key is absent)."""
    value = cfg.get("merge_tokens", MERGE_TOKENS)
    if int(value) < 1:
        raise ModelConfigError(f"model.merge_tokens must be at least 1, got {value}")
    return int(value)


class ModelConfigError(ValueError):
    """The model config asks for something impossible; the message names the key and the fix."""


def optional_path(cfg: Any, key: str, what: str) -> Optional[str]:
    """A path value of ``cfg``: None when null/empty; an error when left at the preset's ``???``."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, key):
        raise ModelConfigError(
            f"model.{key} is required by this preset but not set; it must name {what}. "
            f"Set it with --options model.{key}=/path/to/file (or null where the preset allows it)"
        )
    value = cfg[key]
    return str(value) if value not in (None, "") else None


def image_token_count(cfg: Any) -> int:
    """Image tokens per image for a ``model:`` config: the Q-Former's queries, or the patches merged by
    ``merge_tokens``."""
    if cfg.has_qformer:
        return int(cfg.num_query_token)
    patches = (int(cfg.image_size) // int(cfg.vit_config.patch_size)) ** 2
    merge = merge_count(cfg)
    if patches % merge:
        raise ModelConfigError(f"model.merge_tokens={merge} does not divide the {patches} patches of image_size "
                               f"{cfg.image_size} / patch_size {cfg.vit_config.patch_size}; pick a divisor")
    return patches // merge


class MergeConnector:
    """No parameters: drop CLS and merge ``merge`` consecutive patch tokens (upstream: 4). Larger groups give
    fewer, wider LLM tokens: each is one linear map (``llama_proj``) of a whole band of patches."""

    name = "merge"

    def __init__(self, merge: int = MERGE_TOKENS) -> None:
        self.merge = merge

    def attach(self, model: nn.Module, cfg: Any) -> int:
        """Nothing to register; returns the input width of ``llama_proj``."""
        return int(model.visual_encoder.num_features) * self.merge

    def tokens(self, model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 1+N, D]`` → ``[B, N/m, m·D]`` (raster order)."""
        patches = feats[:, 1:, :]  # drop CLS: (B, 1+N, D) -> (B, N, D)
        batch, n, dim = patches.shape
        m = self.merge
        if n % m:
            raise ModelConfigError(f"{n} patch tokens cannot be merged in groups of {m}; check image_size and "
                                   "model.merge_tokens")
        return patches.reshape(batch, n // m, dim * m)  # (B, N, D) -> (B, N/m, m·D)


class QFormerConnector:
    """BLIP-2's Q-Former and query tokens, registered on the model as ``Qformer`` / ``query_tokens``."""

    name = "qformer"

    def attach(self, model: nn.Module, cfg: Any) -> int:
        """Build the Q-Former (loading BLIP-2's weights when ``q_former_model`` is set); returns its width."""
        from minigpt4.models.qformer import build_qformer, load_blip2_qformer

        attn = {None: "eager", "sdpa": "sdpa", "eager": "lavis"}[cfg.attn_implementation]
        model.Qformer, model.query_tokens = build_qformer(
            cfg.qformer_config, cfg.num_query_token, int(model.visual_encoder.num_features), attn_implementation=attn
        )
        what = "BLIP-2 weights (blip2_pretrained_flant5xxl.pth)"
        path = None if model.on_meta else optional_path(cfg, "q_former_model", what)
        if path:
            report = load_blip2_qformer(model.Qformer, model.query_tokens, model.ln_vision, path,
                                        model.visual_encoder)
            report.log(logger)
            for prefix in ("Qformer.", "query_tokens", "ln_vision."):
                model.weight_sources[prefix] = path
        elif cfg.freeze_qformer and not model.on_meta:
            raise ModelConfigError(
                "model.q_former_model is null but model.freeze_qformer is True: a frozen, randomly initialised "
                "Q-Former never learns. Set --options model.q_former_model=/path/to/blip2_pretrained_flant5xxl.pth"
            )
        return int(cfg.qformer_config.hidden_size)

    def tokens(self, model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 1+N, D]`` → ``[B, Q, hidden]``."""
        from minigpt4.models.qformer import run_qformer

        return run_qformer(model.Qformer, model.query_tokens, feats)


def connector_for(cfg: Any) -> Any:
    """The connector a ``model:`` config asks for (``has_qformer``)."""
    return QFormerConnector() if cfg.has_qformer else MergeConnector(merge_count(cfg))
