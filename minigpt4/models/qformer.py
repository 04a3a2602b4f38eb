"""BLIP-2's Q-Former for MiniGPT-4 (v1 with Vicuna), built on transformers' ``Blip2QFormerModel``.

MiniGPT-4 feeds only the learned query tokens (no text) through BLIP-2's BERT: each layer has self-attention
among the queries, cross-attention to every vision token (CLS included) on every ``cross_attention_freq``-th
layer, and the query feed-forward branch. transformers' ``Blip2QFormerModel`` computes exactly that. Its
parameter names differ from LAVIS's ``Qformer.bert.*`` names; the map between the two is written out below
(:data:`UPSTREAM_TO_FACEGPT`) so that BLIP-2 files load and FaceGPT checkpoints can be written in upstream names.

Attention: transformers multiplies the scores by ``d**-0.5``; LAVIS divided them by ``sqrt(d)``. For the real
head size (64) both are the same float operation; for other sizes ``attn_implementation="lavis"`` divides.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers import AttentionInterface

from minigpt4.common.logger import get_logger
from minigpt4.common.schema import QFormerConfig
from minigpt4.common.checkpoint_io import read_weights
from minigpt4.models.keymap import LoadReport, load_state_dict_strict

logger = get_logger(__name__)

LAVIS_ATTENTION = "facegpt_lavis"
ATTN_IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "lavis": LAVIS_ATTENTION}


def lavis_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: float,  # noqa: ARG001 - LAVIS divides by sqrt(head_dim) instead of multiplying by a scale
    dropout: float = 0.0,
    **kwargs,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """LAVIS's BERT attention: ``softmax(q @ kᵀ / sqrt(d) + mask) @ v``; q,k,v ``[B, heads, L, d]``."""
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])  # (B, h, Lq, Lk)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, h, Lq, d) -> (B, Lq, h, d)
    return out, probs


AttentionInterface.register(LAVIS_ATTENTION, lavis_attention_forward)


def qformer_hf_config(cfg: QFormerConfig, vision_width: int, attn_implementation: str = "eager") -> Blip2QFormerConfig:
    """transformers config of the Q-Former: BERT-base dims from ``cfg``, cross-attention width ``vision_width``."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {sorted(ATTN_IMPLEMENTATIONS)}, got "
                         f"{attn_implementation!r}")
    config = Blip2QFormerConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",  # exact erf GELU, as BERT
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        layer_norm_eps=cfg.layer_norm_eps,
        cross_attention_frequency=cfg.cross_attention_freq,
        encoder_hidden_size=vision_width,
        use_qformer_text_input=False,  # MiniGPT-4 deletes the text branch
    )
    config._attn_implementation = ATTN_IMPLEMENTATIONS[attn_implementation]
    return config


def qformer_config_from_bert(config_json: Union[str, Path], cross_attention_freq: int = 2) -> QFormerConfig:
    """:class:`QFormerConfig` from a BERT ``config.json`` (what upstream read from ``bert-base-uncased``)."""
    bert = json.loads(Path(config_json).read_text())
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps",
              "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob")
    missing = [name for name in fields if name not in bert]
    if missing:
        raise ValueError(f"{config_json}: BERT config lacks {missing}")
    if bert.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{config_json}: hidden_act {bert['hidden_act']!r}; the Q-Former uses exact 'gelu'")
    return QFormerConfig(cross_attention_freq=cross_attention_freq, **{name: bert[name] for name in fields})


def build_qformer(
    cfg: QFormerConfig,
    num_query_token: int,
    vision_width: int,
    attn_implementation: str = "eager",
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[Blip2QFormerModel, nn.Parameter]:
    """Build the Q-Former (store it as ``Qformer``) and its ``query_tokens`` ``[1, Q, hidden]`` (``query_tokens``).

    Randomly initialised (query tokens ~ N(0, 0.02) as upstream); load BLIP-2 weights with
    :func:`load_blip2_qformer`. ``device="meta"`` builds the architecture without memory.
    """
    config = qformer_hf_config(cfg, vision_width, attn_implementation)
    with torch.device(device) if device is not None else nullcontext():
        qformer = Blip2QFormerModel(config)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, cfg.hidden_size))
    if query_tokens.device.type != "meta":
        query_tokens.data.normal_(mean=0.0, std=config.initializer_range)
    return qformer, query_tokens


def run_qformer(qformer: Blip2QFormerModel, query_tokens: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Query tokens attend to ``image_embeds`` ``[B, N, vision_width]`` (all N, CLS included) → ``[B, Q, hidden]``.

    Self-attention among the queries is bidirectional; the encoder mask is all ones, as upstream.
    """
    batch = image_embeds.shape[0]
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)  # (B, N)
    queries = query_tokens.expand(batch, -1, -1)  # (1, Q, H) -> (B, Q, H)
    out = qformer(
        query_embeds=queries,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
        return_dict=True,
    )
    return out.last_hidden_state


# ------------------------------------------------------------------------------------------ key map
# Names at the level of the MiniGPT-4 module: upstream stores BertLMHeadModel as ``Qformer`` (so ``Qformer.bert.*``),
# FaceGPT stores Blip2QFormerModel as ``Qformer``. ``query_tokens`` and ``ln_vision.*`` are the same in both.

_L = r"Qformer\.encoder\.layer\.(\d+)"
_UL = r"Qformer\.bert\.encoder\.layer\.(\d+)"

#: (upstream pattern, FaceGPT replacement), each covering one family of keys.
UPSTREAM_TO_FACEGPT: List[Tuple[str, str]] = [
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$", r"Qformer.layernorm.\1"),
    (rf"^{_UL}\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)$",
     r"Qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (rf"^{_UL}\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$",
     r"Qformer.encoder.layer.\1.\2.output.\3.\4"),
    (rf"^{_UL}\.intermediate_query\.dense\.(weight|bias)$", r"Qformer.encoder.layer.\1.intermediate_query.dense.\2"),
    (rf"^{_UL}\.output_query\.(dense|LayerNorm)\.(weight|bias)$", r"Qformer.encoder.layer.\1.output_query.\2.\3"),
]

#: (FaceGPT pattern, upstream replacement): the inverse of :data:`UPSTREAM_TO_FACEGPT`.
FACEGPT_TO_UPSTREAM: List[Tuple[str, str]] = [
    (r"^Qformer\.layernorm\.(weight|bias)$", r"Qformer.bert.embeddings.LayerNorm.\1"),
    (rf"^{_L}\.(attention|crossattention)\.attention\.(query|key|value)\.(weight|bias)$",
     r"Qformer.bert.encoder.layer.\1.\2.self.\3.\4"),
    (rf"^{_L}\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$",
     r"Qformer.bert.encoder.layer.\1.\2.output.\3.\4"),
    (rf"^{_L}\.intermediate_query\.dense\.(weight|bias)$",
     r"Qformer.bert.encoder.layer.\1.intermediate_query.dense.\2"),
    (rf"^{_L}\.output_query\.(dense|LayerNorm)\.(weight|bias)$", r"Qformer.bert.encoder.layer.\1.output_query.\2.\3"),
]

_TEXT_EMBEDDINGS = "Q-Former text embeddings: MiniGPT-4 feeds only query tokens and discards them, as upstream"
_TEXT_FFN = "Q-Former text feed-forward branch: unused without text input, discarded by MiniGPT-4 as upstream"
_LM_HEAD = "BLIP-2's BERT language-model head: discarded by MiniGPT-4, as upstream"

#: Upstream Q-Former keys with no FaceGPT counterpart, and why.
UPSTREAM_DISCARDED: List[Tuple[str, str]] = [
    (r"^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight$", _TEXT_EMBEDDINGS),
    (r"^Qformer\.bert\.embeddings\.position_ids$", _TEXT_EMBEDDINGS),
    (rf"^{_UL}\.intermediate\.dense\.(weight|bias)$", _TEXT_FFN),
    (rf"^{_UL}\.output\.(dense|LayerNorm)\.(weight|bias)$", _TEXT_FFN),
    (r"^Qformer\.cls\.", _LM_HEAD),
]

#: Parts of BLIP-2 files (outside the Q-Former) that MiniGPT-4 has no place for, by top-level name.
BLIP2_OTHER_PARTS: Dict[str, str] = {
    **dict.fromkeys(("t5_proj", "opt_proj", "llm_proj"),
                    "BLIP-2's projection into its own LLM; MiniGPT-4 uses llama_proj (upstream ignored it)"),
    **dict.fromkeys(("t5_model", "opt_model", "llm_model"),
                    "BLIP-2's language model; MiniGPT-4 uses its own LLaMA (upstream ignored it)"),
    **dict.fromkeys(("vision_proj", "text_proj", "itm_head", "temp"),
                    "BLIP-2 stage-1 contrastive/matching head; not part of MiniGPT-4 (upstream ignored it)"),
}
_VISUAL_FROM_VIT_CKPT = (
    "vision tower weights: not loaded from this file (no visual encoder given); eva_vit_g.pth provides them"
)


def _apply_rules(name: str, rules: List[Tuple[str, str]]) -> Optional[str]:
    for pattern, replacement in rules:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def upstream_key_to_qformer(name: str) -> Optional[str]:
    """Upstream MiniGPT-4/BLIP-2 key → FaceGPT key (``Qformer.bert.encoder.layer.0.attention.self.query.weight``
    → ``Qformer.encoder.layer.0.attention.attention.query.weight``).

    Keys outside ``Qformer.`` come back unchanged; ``Qformer.*`` keys without a counterpart give ``None``
    (see :func:`upstream_unused_reason` for the ones discarded on purpose).
    """
    if not name.startswith("Qformer."):
        return name
    return _apply_rules(name, UPSTREAM_TO_FACEGPT)


def qformer_key_to_upstream(name: str) -> str:
    """FaceGPT key → upstream key (inverse of :func:`upstream_key_to_qformer`); non-``Qformer.`` keys unchanged."""
    if not name.startswith("Qformer."):
        return name
    mapped = _apply_rules(name, FACEGPT_TO_UPSTREAM)
    if mapped is None:
        raise KeyError(f"{name} has no upstream (LAVIS Qformer.bert.*) name; it is not a Q-Former parameter FaceGPT "
                       "knows — update FACEGPT_TO_UPSTREAM in minigpt4/models/qformer.py")
    return mapped


def upstream_unused_reason(name: str) -> Optional[str]:
    """Why an upstream Q-Former key has no FaceGPT counterpart (text embeddings, text FFN, LM head), else None."""
    for pattern, reason in UPSTREAM_DISCARDED:
        if re.match(pattern, name):
            return reason
    return None


# ----------------------------------------------------------------------------------------- loading


class _Blip2Targets(nn.Module):
    """The parts a BLIP-2 file may fill, under MiniGPT-4's attribute names (a view; nothing is copied)."""

    def __init__(
        self,
        qformer: nn.Module,
        query_tokens: nn.Parameter,
        ln_vision: nn.Module,
        visual_encoder: Optional[nn.Module],
    ) -> None:
        super().__init__()
        self.Qformer = qformer
        self.query_tokens = query_tokens
        self.ln_vision = ln_vision
        if visual_encoder is not None:
            self.visual_encoder = visual_encoder


def _qformer_shape_hint(key: str, file_shape: Tuple[int, ...], model_shape: Tuple[int, ...]) -> str:
    if key == "query_tokens":
        return f"the file has {file_shape[1]} query tokens: set model.num_query_token: {file_shape[1]}"
    if ".crossattention.attention.key." in key or ".crossattention.attention.value." in key:
        return "cross-attention input width = vision tower width: check vit_config.embed_dim"
    if key.startswith("ln_vision."):
        return "ln_vision width = vision tower width: check vit_config.embed_dim"
    return "check model.qformer_config against the file"


def _unwrap_model(raw: object, path: str) -> Dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or "model" not in raw or not isinstance(raw["model"], dict):
        keys = list(raw)[:5] if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"{path}: expected a BLIP-2 checkpoint {{'model': {{...}}}} (as LAVIS saves it), found {keys}; "
            "set model.q_former_model to blip2_pretrained_flant5xxl.pth"
        )
    return raw["model"]


def _sort_blip2_keys(state: Dict[str, torch.Tensor], has_visual: bool) -> Tuple[dict, dict, dict]:
    """Split a BLIP-2 state dict into (mapped tensors, renamed file→model keys, unused file key→reason)."""
    mapped, renamed, unused = {}, {}, {}
    for key, value in state.items():
        top = key.split(".")[0]
        reason = upstream_unused_reason(key) or BLIP2_OTHER_PARTS.get(top)
        if reason is None and top == "visual_encoder" and not has_visual:
            reason = _VISUAL_FROM_VIT_CKPT
        if reason is not None:
            unused[key] = reason
            continue
        new = upstream_key_to_qformer(key)
        new = key if new is None else new  # unknown Qformer.* keys stay as they are and fail as unexpected
        mapped[new] = value
        if new != key:
            renamed[key] = new
    return mapped, renamed, unused


def load_blip2_qformer(
    qformer: nn.Module,
    query_tokens: nn.Parameter,
    ln_vision: nn.Module,
    path: Union[str, Path],
    visual_encoder: Optional[nn.Module] = None,
) -> LoadReport:
    """Load a BLIP-2 checkpoint (``{'model': {...}}``, LAVIS names) into the Q-Former, query tokens and ln_vision.

    Every Q-Former key is renamed by :data:`UPSTREAM_TO_FACEGPT`; text embeddings, text FFN and the LM head are
    reported as intentionally unused, as are BLIP-2's own LLM projection/heads. ``visual_encoder.*`` keys, if the
    file has them, are loaded into ``visual_encoder`` when it is given (as upstream's non-strict load did) and
    reported unused otherwise. All Q-Former, ``query_tokens`` and ``ln_vision`` keys must be in the file.
    """
    path = str(path)
    raw = read_weights(path, "a BLIP-2 checkpoint {'model': {...}} such as blip2_pretrained_flant5xxl.pth",
                       "model.q_former_model")
    state = _unwrap_model(raw, path)
    mapped, renamed, unused = _sort_blip2_keys(state, visual_encoder is not None)
    targets = _Blip2Targets(qformer, query_tokens, ln_vision, visual_encoder)
    report = load_state_dict_strict(
        targets,
        mapped,
        file=path,
        expected_absent=lambda key: key.startswith("visual_encoder."),
        unused=unused,
        shape_hint=_qformer_shape_hint,
        renamed=renamed,
        fix="use a BLIP-2 checkpoint in LAVIS's layout (blip2_pretrained_flant5xxl.pth) and make model.qformer_config, "
        "num_query_token and vit_config.embed_dim match it.",
    )
    visual = [key for key in report.matched if key.startswith("visual_encoder.")]
    if visual:
        note = f"{len(visual)} visual_encoder.* tensors taken from this file (they override eva_vit_g.pth, as upstream)"
        logger.warning("%s: %s", path, note)
        report.notes.append(note)
    return report
