"""EVA-ViT-g, the frozen vision tower of MiniGPT-4 / MiniGPT-v2, built on timm's ``Eva`` class.

timm's ``Eva`` with absolute position embeddings, fused ``qkv`` plus separate ``q_bias``/``v_bias``, no layer
scale, no final norm and no head has exactly the parameter names of LAVIS's ``eva_vit_g.pth``
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.*,norm2,mlp.*}``), so the original
file loads without renaming. The tower is BLIP-2's: 39 of EVA-CLIP-g's 40 blocks ("second-to-last layer").

Also here: ``ln_vision`` (a LayerNorm computed in fp32, as upstream), upstream's "fp16" precision (only Conv and
Linear weights in half precision) and :func:`freeze_module`, which keeps a module in eval mode for good.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Tuple, Type, Union

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from minigpt4.common.logger import get_logger
from minigpt4.common.schema import VitConfig
from minigpt4.common.checkpoint_io import read_weights
from minigpt4.models.keymap import LoadReport, load_state_dict_strict

logger = get_logger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
_HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
LN_VISION_EPS = 1e-5  # upstream's ln_vision is a LayerNorm with torch's default eps


class EvaViT(Eva):
    """EVA vision transformer whose ``forward`` returns the whole token sequence ``[B, 1+N, D]``, CLS first.

    No final norm and no head (BLIP-2's features are the raw output of the last kept block).
    ``exact_attention`` switches each block between PyTorch's fused SDPA kernel (fast, default) and the explicit
    ``softmax(q·scale @ kᵀ) @ v`` of the original EVA code.
    """

    def __init__(self, img_size: int, precision: str = "fp32", **kwargs) -> None:
        super().__init__(img_size=img_size, **kwargs)
        self.image_size = img_size
        self.precision = precision

    @property
    def exact_attention(self) -> bool:
        """True when every block computes attention explicitly (upstream's math) instead of with SDPA."""
        return all(not block.attn.fused_attn for block in self.blocks)

    @exact_attention.setter
    def exact_attention(self, exact: bool) -> None:
        for block in self.blocks:
            block.attn.fused_attn = not exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` → tokens ``[B, 1 + (S/patch)², embed_dim]`` (CLS first)."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"EVA vision tower expects images [B, 3, {self.image_size}, {self.image_size}] "
                f"(model image_size), got {list(x.shape)}; resize images with the model preset's processor "
                "or set model.image_size to match."
            )
        return self.forward_features(x)


def build_eva_vit(
    cfg: VitConfig,
    img_size: int,
    drop_path_rate: float = 0.0,
    use_grad_checkpoint: bool = False,
    precision: str = "fp32",
    exact_attention: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> EvaViT:
    """Build the EVA-ViT-g tower (randomly initialised; load weights with :func:`load_eva_vit_weights`).

    ``precision`` "fp16"/"bf16" follows upstream's "fp16": only Conv/Linear weights and biases are cast, while
    LayerNorms, ``cls_token``, ``pos_embed``, ``q_bias`` and ``v_bias`` stay fp32 — run the tower under autocast.
    ``device="meta"`` builds the architecture without memory (for shape and count checks).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"vit_precision must be one of {PRECISIONS}, got {precision!r}")
    if img_size % cfg.patch_size:
        raise ValueError(f"image_size {img_size} is not a multiple of the patch size {cfg.patch_size}")
    model = EvaViT(
        img_size=img_size,
        precision=precision,
        patch_size=cfg.patch_size,
        num_classes=0,
        global_pool="",
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        qkv_fused=True,
        norm_layer=partial(nn.LayerNorm, eps=cfg.norm_eps),
        use_abs_pos_emb=True,
        use_rot_pos_emb=False,
        init_values=None,
        use_post_transformer_norm=False,
        use_fc_norm=False,
        drop_path_rate=drop_path_rate,
        device=device,
    )
    model.exact_attention = exact_attention
    if use_grad_checkpoint:
        model.set_grad_checkpointing(True)
    if precision in _HALF_DTYPES:
        cast_linear_conv_weights(model, _HALF_DTYPES[precision])
    return model


def cast_linear_conv_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the weights and biases of every Conv1d/Conv2d/Linear in ``model`` to ``dtype``, nothing else."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.to(dtype=dtype)


# ------------------------------------------------------------------------------------------- weights

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_EXTRA_TOWER_REASON = (
    "beyond the 39-block tower: BLIP-2 uses EVA-CLIP-g's second-to-last layer, upstream drops the last block, "
    "final norm and head"
)


def _extra_tower_keys(state: Dict[str, torch.Tensor], depth: int) -> Dict[str, str]:
    """Keys of a full EVA-CLIP file that the tower deliberately leaves out: block ``depth``, final norm, head."""
    unused = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if (match and int(match.group(1)) == depth) or key.split(".")[0] in ("norm", "fc_norm", "head"):
            unused[key] = _EXTRA_TOWER_REASON
    return unused


def _resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], path: str) -> Tuple[torch.Tensor, str]:
    """Resample the patch position embeddings of a file to ``grid`` (bicubic, no antialias), CLS kept."""
    num_patches = pos_embed.shape[1] - 1  # (1, 1+g*g, D): one CLS position first
    old = int(round(num_patches ** 0.5))
    if old * old != num_patches:
        raise ValueError(f"{path}: pos_embed {list(pos_embed.shape)} does not hold a square grid plus CLS")
    resized = resample_abs_pos_embed(
        pos_embed, new_size=list(grid), old_size=[old, old], num_prefix_tokens=1,
        interpolation="bicubic", antialias=False,
    )  # (1, 1+old², D) -> (1, 1+gh*gw, D)
    note = f"position embeddings resized from {old}x{old} to {grid[0]}x{grid[1]}"
    return resized, note


def load_eva_vit_weights(model: EvaViT, path: Union[str, Path], img_size: Optional[int] = None) -> LoadReport:
    """Load LAVIS's ``eva_vit_g.pth`` (plain state dict, original key names) into ``model``, strictly.

    Position embeddings stored for another grid (LAVIS's file is 16×16, from 224 pixels) are resampled to the
    model's grid as upstream did. A 40th block, final norm or head in the file is reported as intentionally
    unused; every other file key must fit and every model key must be in the file.
    """
    path = str(path)
    if img_size is not None and img_size != model.image_size:
        raise ValueError(f"load_eva_vit_weights: img_size {img_size} differs from the tower's {model.image_size}")
    state = read_weights(path, "EVA-ViT-g weights in LAVIS's eva_vit_g.pth layout (a plain state dict)",
                         "model.vit_ckpt")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: expected a plain state dict of tensors (LAVIS's eva_vit_g.pth), found "
            f"{type(state).__name__} with keys {list(state)[:5] if isinstance(state, dict) else '-'}"
        )
    notes = []
    grid = tuple(model.patch_embed.grid_size)
    file_pos = state.get("pos_embed")
    if file_pos is not None and file_pos.dim() == 3 and file_pos.shape[-1] == model.embed_dim:
        if file_pos.shape[1] != model.pos_embed.shape[1]:
            state = dict(state)
            state["pos_embed"], note = _resize_pos_embed(file_pos, grid, path)
            logger.info("%s: %s", path, note)
            notes.append(note)
    report = load_state_dict_strict(
        model,
        state,
        file=path,
        unused=_extra_tower_keys(state, len(model.blocks)),
        shape_hint=_eva_shape_hint,
        fix="use LAVIS's eva_vit_g.pth (or a file in its layout) and make model.vit_config match it "
        "(full size: embed_dim 1408, depth 39, num_heads 16, mlp_ratio 4.3637, patch_size 14); a file of "
        "another layout (e.g. prefixed 'visual_encoder.') needs its keys renamed first.",
    )
    report.notes.extend(notes)
    return report


def _eva_shape_hint(key: str, file_shape: Tuple[int, ...], model_shape: Tuple[int, ...]) -> str:
    if file_shape and model_shape and file_shape[-1] != model_shape[-1]:
        return "width differs: check vit_config.embed_dim / mlp_ratio"
    return "check vit_config against the file"


# ------------------------------------------------------------------------------------------ ln_vision


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm that normalises in fp32 and returns the input's dtype (upstream's ``LayerNorm`` subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` in fp32, cast the result back to ``x.dtype``."""
        out = super().forward(x.to(torch.float32))
        return out.to(x.dtype)


def build_ln_vision(width: int, eps: float = LN_VISION_EPS) -> LayerNormFp32:
    """The LayerNorm between the vision tower and the Q-Former / projection (``ln_vision``)."""
    return LayerNormFp32(width, eps=eps)


def load_ln_vision(ln_vision: nn.Module, path: Union[str, Path]) -> LoadReport:
    """Load ``ln_vision.{weight,bias}`` from a ``{'model': {...}}`` file that holds only them (e.g. parity data)."""
    path = str(path)
    raw = read_weights(path, "{'model': {'ln_vision.weight', 'ln_vision.bias'}}")
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    prefix = "ln_vision."
    mapped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    renamed = {prefix + key: key for key in mapped}
    others = [key for key in state if not key.startswith(prefix)]
    if others:
        raise ValueError(f"{path}: expected only ln_vision.* keys, found also {others[:10]}")
    return load_state_dict_strict(ln_vision, mapped, file=path, renamed=renamed)


# ------------------------------------------------------------------------------------------- freezing

_FROZEN_CLASSES: Dict[type, type] = {}


class _StaysInEval:
    """Mixin of frozen modules: ``train(mode)`` always puts the module and its children in eval mode."""

    def train(self, mode: bool = True) -> nn.Module:  # noqa: ARG002 - the mode is deliberately ignored
        """Stay in eval mode whatever ``mode`` is (dropout and drop-path stay off in frozen parts)."""
        return super().train(False)  # type: ignore[misc]


def _frozen_class(cls: Type[nn.Module]) -> type:
    frozen = _FROZEN_CLASSES.get(cls)
    if frozen is None:
        frozen = type(f"Frozen{cls.__name__}", (_StaysInEval, cls), {"__module__": cls.__module__})
        _FROZEN_CLASSES[cls] = frozen
    return frozen


def freeze_module(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place: no gradients, eval mode, and eval mode kept when a parent calls ``.train()``.

    Upstream replaced the instance's ``train`` with a no-op. Here the instance's class becomes a subclass
    (``Frozen<Class>``) whose ``train`` always selects eval mode; parameter and buffer names do not change and
    ``isinstance`` checks still hold. Returns the same object.
    """
    for param in module.parameters():
        param.requires_grad_(False)
    if not isinstance(module, _StaysInEval):
        module.__class__ = _frozen_class(type(module))
    module.eval()
    return module


def is_frozen(module: nn.Module) -> bool:
    """True for modules frozen with :func:`freeze_module`."""
    return isinstance(module, _StaysInEval)


def init_vision_encoder(
    cfg: VitConfig,
    img_size: int,
    drop_path_rate: float = 0.0,
    use_grad_checkpoint: bool = False,
    precision: str = "fp16",
    freeze: bool = True,
    ckpt_path: Optional[Union[str, Path]] = None,
) -> Tuple[EvaViT, LayerNormFp32, Optional[LoadReport]]:
    """Upstream's ``init_vision_encoder``: tower (+ weights when ``ckpt_path``) and ``ln_vision``, frozen or not.

    As upstream, a trainable tower is kept in fp32 whatever ``precision`` says, and freezing covers both modules.
    """
    if not freeze and precision != "fp32":
        logger.info("vision tower is trainable: keeping it in fp32 instead of %s (as upstream)", precision)
        precision = "fp32"
    visual_encoder = build_eva_vit(cfg, img_size, drop_path_rate, use_grad_checkpoint, precision)
    report = None
    if ckpt_path:
        report = load_eva_vit_weights(visual_encoder, ckpt_path, img_size)
        report.log(logger)
    ln_vision = build_ln_vision(cfg.embed_dim)
    if freeze:
        freeze_module(visual_encoder)
        freeze_module(ln_vision)
        logger.info("vision tower and ln_vision frozen")
    return visual_encoder, ln_vision, report
