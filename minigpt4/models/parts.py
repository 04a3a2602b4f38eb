"""The parts a MiniGPT model is composed of, and the one place that decides what trains.

:func:`build_llm` (LLM + LoRA + tokenizer), :func:`build_vision` (EVA tower + ``ln_vision``), the connector
(:mod:`minigpt4.models.connectors`) and the prompt format (:mod:`minigpt4.prompting`) are put together by
:class:`~minigpt4.models.minigpt_base.MiniGPTBase`; :func:`set_trainability` then freezes what the config says:

* ``llama_model``: frozen, except LoRA tensors (``lora_r > 0``); every weight trains with ``freeze_llm: False``
  (full fine-tune, e.g. under ``run.strategy: fsdp``);
* ``visual_encoder`` + ``ln_vision``: frozen when ``freeze_vit`` (they stay in eval mode under ``model.train()``);
* ``Qformer`` + ``query_tokens``: frozen when ``freeze_qformer``;
* ``llama_proj``: always trained.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from minigpt4.common.config import LIBRARY_ROOT, resolve_library_path
from minigpt4.common.logger import get_logger
from minigpt4.models.connectors import ModelConfigError, optional_path
from minigpt4.models.eva_vit import build_eva_vit, build_ln_vision, freeze_module, load_eva_vit_weights
from minigpt4.models.feature_cache import FeatureCache
from minigpt4.models.llm import add_lora, build_llm_from_config, llm_path_error, load_llm
from minigpt4.models.tokenizer import LLMTokenizer, load_tokenizer
from minigpt4.prompting import IMAGE_HERE, PromptFormat

logger = get_logger(__name__)


def build_llm(cfg: Any, llm_config: Any, sources: Dict[str, str]) -> Tuple[nn.Module, Optional[LLMTokenizer]]:
    """The LLM (from ``llama_model``, or random from ``llm_config`` on meta) with LoRA, and its tokenizer."""
    attn = "eager" if cfg.attn_implementation == "eager" else cfg.attn_implementation
    tokenizer: Optional[LLMTokenizer] = None
    if llm_config is not None:
        llm = build_llm_from_config(llm_config, precision=cfg.llm_precision, attn_implementation=attn)
    else:
        if OmegaConf.is_missing(cfg, "llama_model"):
            raise llm_path_error("???", "the preset leaves it unset")
        path = cfg.llama_model
        llm = load_llm(path, precision=cfg.llm_precision, attn_implementation=attn,
                       low_resource=cfg.low_resource, device_8bit=cfg.device_8bit,
                       quantization=cfg.get("llm_quantization"))
        tokenizer = load_tokenizer(path, pad_token=cfg.pad_token)
        if tokenizer.vocab_size > llm.get_input_embeddings().num_embeddings:
            raise ModelConfigError(
                f"model.llama_model={path}: the tokenizer has {tokenizer.vocab_size} ids but the model "
                f"only {llm.get_input_embeddings().num_embeddings} embeddings; the folder mixes two models"
            )
        sources["llama_model."] = str(path)
    for param in llm.parameters():  # the base never trains; set_trainability re-checks after LoRA
        param.requires_grad = False
    if cfg.lora_r > 0:
        llm = add_lora(llm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=list(cfg.lora_target_modules))  # k-bit preparation when quantized
    return llm, tokenizer


def build_vision(cfg: Any, on_meta: bool, sources: Dict[str, str]) -> Tuple[nn.Module, nn.Module]:
    """EVA-ViT-g (weights from ``vit_ckpt``) and ``ln_vision``; a trainable tower stays in fp32 (as upstream)."""
    vit_ckpt = None
    if not on_meta:
        vit_ckpt = optional_path(cfg, "vit_ckpt", "EVA-ViT-g weights (eva_vit_g.pth)")
        if vit_ckpt is None and cfg.freeze_vit and cfg.get("vit_init_seed") is None:
            raise ModelConfigError(
                "model.vit_ckpt is null but model.freeze_vit is True: a frozen, randomly initialised vision tower "
                "never learns. Set --options model.vit_ckpt=/path/to/eva_vit_g.pth, or model.freeze_vit=False to "
                "train the tower from scratch (or model.vit_init_seed=0 to keep seeded random features on purpose)"
            )
    precision = cfg.vit_precision
    if not cfg.freeze_vit and precision != "fp32":
        logger.info("vision tower is trainable: keeping it in fp32 instead of %s (as upstream)", precision)
        precision = "fp32"
    seed = cfg.get("vit_init_seed")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:  # the same tower wherever it is rebuilt, whatever run.seed drew before
            torch.manual_seed(int(seed))
        tower = build_eva_vit(cfg.vit_config, cfg.image_size, cfg.drop_path_rate, cfg.use_grad_checkpoint,
                              precision)
    if vit_ckpt:
        load_eva_vit_weights(tower, vit_ckpt, cfg.image_size).log(logger)
        sources["visual_encoder."] = vit_ckpt
    elif seed is not None and not on_meta:
        logger.info("vision tower: random initialisation from model.vit_init_seed=%d%s", int(seed),
                    " (frozen: random features)" if cfg.freeze_vit else "")
    tower.exact_attention = cfg.attn_implementation == "eager"
    return tower, build_ln_vision(cfg.vit_config.embed_dim)


def load_prompt_list(cfg: Any, prompt_format: PromptFormat) -> List[str]:
    """v1 stage-2 instruction prompts from ``prompt_path`` (lines holding the image slot), wrapped."""
    if not cfg.prompt_path:
        return []
    path = resolve_library_path(cfg.prompt_path)
    if not path.is_file():
        raise ModelConfigError(f"model.prompt_path={cfg.prompt_path!r}: no such file (looked in the working "
                               f"directory and under {LIBRARY_ROOT})")
    lines = [line for line in path.read_text().splitlines() if IMAGE_HERE in line]
    prompts = [prompt_format.wrap(line) for line in lines]
    logger.info("%d training prompts from %s, e.g. %r", len(prompts), path, prompts[:1])
    return prompts


def vision_feature_cache(cfg: Any) -> Optional[FeatureCache]:
    """The frozen tower's per-image feature cache of ``model.vit_feature_cache_mb`` (None when 0)."""
    size = int(cfg.get("vit_feature_cache_mb", 0) or 0)
    if size < 0:
        raise ModelConfigError(f"model.vit_feature_cache_mb must be 0 (off) or a size in MB, got {size}")
    if size == 0:
        return None
    if not cfg.freeze_vit:
        raise ModelConfigError(f"model.vit_feature_cache_mb={size} keeps the features of a frozen vision tower, but "
                               "model.freeze_vit=False trains it; set model.vit_feature_cache_mb=0 or "
                               "model.freeze_vit=True")
    logger.info("vision feature cache: up to %d MB of frozen-tower features, one entry per distinct image", size)
    return FeatureCache(size)


def set_trainability(model: nn.Module, cfg: Any) -> None:
    """Freeze what the config says (see the module docstring); everything else trains."""
    full = not cfg.get("freeze_llm", True)
    if full and (cfg.get("llm_quantization", "none") != "none" or cfg.get("low_resource", False)):
        raise ModelConfigError("model.freeze_llm=False (full fine-tune) with a quantized LLM (model.llm_quantization "
                               "/ low_resource): quantized weights cannot train; use LoRA (model.lora_r) or "
                               "model.llm_quantization=none")
    for name, param in model.llama_model.named_parameters():
        param.requires_grad = full or "lora_" in name
    if full:
        logger.info("LLM fully trainable (model.freeze_llm=False)")
    if cfg.freeze_vit:
        freeze_module(model.visual_encoder)
        freeze_module(model.ln_vision)
        logger.info("vision tower and ln_vision frozen")
    if model.Qformer is not None and cfg.freeze_qformer:
        freeze_module(model.Qformer)
        model.query_tokens.requires_grad = False
        logger.info("Q-Former frozen")
    for param in model.llama_proj.parameters():
        param.requires_grad = True
