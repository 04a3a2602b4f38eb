"""MiniGPT checkpoints: released MiniGPT-4 / MiniGPT-v2 files in, upstream-loadable FaceGPT files out.

A checkpoint is a ``torch.save``d dict whose ``"model"`` entry holds the trainable weights under upstream's key
names (``llama_proj.*``; for MiniGPT-v2 also the LoRA matrices). Reading (:func:`load_model_checkpoint`):

* ``torch.load(weights_only=True)``; ``ckpt["model"]`` if present, else the dict itself;
* LoRA keys in peft 0.2.0's spelling (``...q_proj.lora_A.weight``, released MiniGPT-v2 files) and in current
  peft's (``...q_proj.lora_A.default.weight``) both land on the model's LoRA matrices;
* rotary ``inv_freq`` buffers (runner-saved upstream files keep them) are checked against the values transformers 5
  recomputes and reported as intentionally unused; so is the Q-Former's ``position_ids`` buffer;
* every other file key must match a model key with the same shape; model keys the file lacks must be frozen or
  come from another file (EVA, BLIP-2, the LLM folder) — otherwise, unless ``partial``, it is an error;
* shape mismatches name the LLM size or the architecture the checkpoint was trained for.

Writing (:func:`save_model_checkpoint`): ``{"model": trainable_state_dict, **extra}`` through the one atomic writer
(:func:`minigpt4.common.checkpoint_io.atomic_torch_save`: fsync, then rename); the runner's checkpoints and its best
checkpoint go through it too, with the run's resolved config under ``"config"``. LoRA keys are
written without the adapter name (peft 0.2.0 spelling): upstream MiniGPT-4 (peft 0.2.0, ``strict=False``) loads them
and FaceGPT accepts both. Buffers are not written (upstream's runner kept them, but they are deterministic and
transformers 5 no longer stores ``inv_freq``); upstream's non-strict load does not need them. The one exception is
the image vocabulary of a word-mixture model (``image_word_vocab``, token ids chosen from the training data) and its
word groups (``image_word_groups``): learned state, written with the weights and required to load them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

from minigpt4.common.logger import get_logger
from minigpt4.common.checkpoint_io import atomic_torch_save, read_weights
from minigpt4.models.keymap import LoadReport, load_state_dict_strict
from minigpt4.models.connectors import ModelConfigError
from minigpt4.models.word_mixture import GROUPS_BUFFER, VOCAB_BUFFER

logger = get_logger(__name__)

ADAPTER = "default"
_LORA_SHORT = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\.(weight)$")
_LORA_LONG = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\." + ADAPTER + r"\.(weight)$")
_INV_FREQ = re.compile(r"rotary_emb\.inv_freq$")
_INV_FREQ_REASON = "rotary inv_freq buffer of transformers 4.30; transformers 5 recomputes it (values checked equal)"
#: hidden size → LLaMA-family size name, for messages
LLM_SIZES = {576: "SmolLM2-135M", 2048: "1B-class", 3200: "3B", 4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B/70B"}


def _is_lora(key: str) -> bool:
    return "lora_" in key


def to_upstream_key(name: str) -> str:
    """In-memory parameter name → upstream checkpoint name (peft adapter name dropped; Q-Former renamed)."""
    from minigpt4.models.qformer import qformer_key_to_upstream

    name = _LORA_LONG.sub(r".\1.\2", name)
    return qformer_key_to_upstream(name) if name.startswith("Qformer.") else name


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad`` under upstream's names, detached, on CPU; plus the image vocabulary
    of a word-mixture model once it is set (:data:`~minigpt4.models.word_mixture.VOCAB_BUFFER`, learned state
    that is not a parameter) and its word groups."""
    state = {to_upstream_key(n): p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return {**state, **learned_buffers(model)}


def learned_buffers(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The buffers a checkpoint must carry (learned from data, not rebuilt from the config): a word-mixture model's
    image vocabulary once it is set, with its word groups when it has them; ``{}`` otherwise."""
    vocab = getattr(model, VOCAB_BUFFER, None)
    if not isinstance(vocab, torch.Tensor) or not vocab.numel():
        return {}
    out = {VOCAB_BUFFER: vocab.detach().cpu()}
    groups = getattr(model, GROUPS_BUFFER, None)
    if isinstance(groups, torch.Tensor) and groups.numel():
        out[GROUPS_BUFFER] = groups.detach().cpu()
    return out


def save_model_checkpoint(model: nn.Module, path: str | os.PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``{"model": trainable weights (upstream names), **extra}`` to ``path`` (fsync + atomic rename)."""
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("save_model_checkpoint: 'model' in extra would overwrite the weights")
    unwrapped = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    payload = {"model": trainable_state_dict(unwrapped), **extra}
    atomic_torch_save(payload, path)
    logger.info("saved %d trainable tensors to %s", len(payload["model"]), path)
    return Path(path)


# ----------------------------------------------------------------------------------------- loading


def _model_key_for(key: str, model_keys: Set[str]) -> Optional[str]:
    """The model key a file key belongs to (LoRA spelling and Q-Former names mapped), or None if none fits."""
    from minigpt4.models.qformer import upstream_key_to_qformer

    if key in model_keys:
        return key
    if _LORA_SHORT.search(key):
        long = _LORA_SHORT.sub(r".\1." + ADAPTER + r".\2", key)
        if long in model_keys:
            return long
    if _LORA_LONG.search(key):
        short = _LORA_LONG.sub(r".\1.\2", key)
        if short in model_keys:
            return short
    if key.startswith("Qformer.bert."):
        mapped = upstream_key_to_qformer(key)
        if mapped in model_keys:
            return mapped
    return None


def _unused_reason(model: nn.Module, key: str, value: torch.Tensor, problems: List[str]) -> Optional[str]:
    """Why a file key is deliberately not loaded (checked buffers), else None."""
    from minigpt4.models.qformer import upstream_unused_reason

    if _INV_FREQ.search(key):
        ours = [b for n, b in model.named_buffers() if n.endswith("rotary_emb.inv_freq")]
        if ours and (ours[0].device.type == "meta" or (
                ours[0].shape == value.shape and torch.allclose(ours[0].float().cpu(), value.float(), rtol=1e-6))):
            return _INV_FREQ_REASON
        problems.append(f"{key}: rotary frequencies differ from this LLM's (other rope_theta or head size?)")
        return _INV_FREQ_REASON
    if key.startswith("Qformer.bert."):
        return upstream_unused_reason(key)
    return None


def _sort_keys(model: nn.Module, state: Dict[str, torch.Tensor]) -> Tuple[dict, dict, dict, List[str]]:
    """(tensors by model key, renamed file→model key, unused file key→reason, buffer problems)."""
    model_keys = set(model.state_dict(keep_vars=True))
    mapped: Dict[str, torch.Tensor] = {}
    renamed: Dict[str, str] = {}
    unused: Dict[str, str] = {}
    problems: List[str] = []
    for key, value in state.items():
        target = _model_key_for(key, model_keys)
        if target is None:
            reason = _unused_reason(model, key, value, problems)
            if reason is not None:
                unused[key] = reason
                continue
            target = key  # fails as unexpected, with its own name
        mapped[target] = value
        if target != key:
            renamed[key] = target
    return mapped, renamed, unused, problems


def _sourced_elsewhere(model: nn.Module, key: str) -> bool:
    """True when the weights of ``key`` were loaded from another file (EVA, BLIP-2, LLM folder; not LoRA)."""
    sources: Dict[str, str] = getattr(model, "weight_sources", {})
    return any(key.startswith(prefix) for prefix in sources) and not _is_lora(key)


def _llm_size(hidden: int) -> str:
    return LLM_SIZES.get(int(hidden), f"hidden-{hidden}")


def _shape_hint_for(model: nn.Module):
    """A shape-mismatch explainer that knows this model's Q-Former width and merged-patch width."""
    qformer = getattr(model, "Qformer", None)
    q_width = int(qformer.config.hidden_size) if qformer is not None else None
    merged = int(model.visual_encoder.num_features) * 4 if hasattr(model, "visual_encoder") else None

    def hint(key: str, file_shape: Tuple[int, ...], model_shape: Tuple[int, ...]) -> str:
        notes = []
        if key.startswith("llama_proj.") and file_shape[0] != model_shape[0]:
            notes.append(f"this checkpoint was trained with a {_llm_size(file_shape[0])} LLM (hidden {file_shape[0]}); "
                         f"model.llama_model points at a hidden-{model_shape[0]} ({_llm_size(model_shape[0])}) model")
        if key == "llama_proj.weight" and file_shape[1] != model_shape[1]:
            if q_width is None and file_shape[1] != merged:
                notes.append(f"Q-Former checkpoint (projection input {file_shape[1]}) with a no-Q-Former config "
                             f"(input {model_shape[1]} = 4 merged patches); check model_type / has_qformer")
            elif q_width is not None:
                notes.append(f"no-Q-Former checkpoint (projection input {file_shape[1]}, 4 merged patches) with a "
                             f"Q-Former config (input {model_shape[1]}); check model_type "
                             "(pretrain_llama2, minigpt_v2)")
        if _is_lora(key):
            if ".lora_A." in key and file_shape[0] != model_shape[0]:
                notes.append(f"LoRA rank differs: the file has r={file_shape[0]}, set model.lora_r: {file_shape[0]}")
            elif ".lora_B." in key and file_shape[1] != model_shape[1]:
                notes.append(f"LoRA rank differs: the file has r={file_shape[1]}, set model.lora_r: {file_shape[1]}")
            else:
                notes.append("LoRA of an LLM with other dimensions: check model.llama_model")
        return "; ".join(notes)

    return hint


def _fix_text(mapped: Dict[str, torch.Tensor], model_keys: Set[str], partial: bool) -> str:
    file_lora = sum(_is_lora(k) for k in mapped)
    model_lora = sum(_is_lora(k) for k in model_keys)
    if file_lora and not model_lora:
        return ("the file holds LoRA weights (a MiniGPT-v2 checkpoint) but the model has no LoRA: use arch minigpt_v2 "
                "or set model.lora_r to the file's rank")
    if model_lora and not file_lora and not partial:
        return ("the file has no LoRA weights (a MiniGPT-4 v1 checkpoint?); point model.ckpt at a MiniGPT-v2 "
                "checkpoint, or set model.ckpt_partial=True to start LoRA from scratch")
    return ("point model.ckpt at a checkpoint of this architecture (model_type) and LLM size; "
            "set model.ckpt_partial=True only if some trainable weights should keep their initialisation")


def load_model_checkpoint(model: nn.Module, path: str | os.PathLike, partial: bool = False,
                          key: Optional[str] = "model.ckpt") -> LoadReport:
    """Load a MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint into ``model``, accounting for every key.

    ``partial`` lets trainable weights that no file provided (projection, LoRA) keep their initialisation; they
    are then listed as expected-absent. Raises :class:`~minigpt4.models.keymap.CheckpointKeyError` otherwise, and
    :class:`~minigpt4.common.checkpoint_io.WeightsFileError` (naming ``key``) for a damaged file.
    """
    path = str(path)
    raw = read_weights(path, "a MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint ({'model': {...}})", key)
    state = raw["model"] if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: expected {{'model': {{name: tensor}}}} or a state dict, found {type(state).__name__}"
        )
    _take_image_vocabulary(model, state, path)
    mapped, renamed, unused, problems = _sort_keys(model, state)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model_keys = set(model.state_dict(keep_vars=True))

    def expected_absent(key: str) -> bool:
        return partial or key not in trainable or _sourced_elsewhere(model, key)

    report = load_state_dict_strict(
        model, mapped, file=path, expected_absent=expected_absent, unused=unused,
        shape_hint=_shape_hint_for(model), renamed=renamed, fix=_fix_text(mapped, model_keys, partial),
    )
    _add_notes(report, model, trainable)
    report.log(logger)
    return report


def _take_image_vocabulary(model: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Size the model's image vocabulary to the file's (its length is data-dependent) so that the strict load
    copies it; a file that has one and a model that reads free image tokens is a one-line error."""
    if VOCAB_BUFFER not in state:
        return
    if getattr(model, VOCAB_BUFFER, None) is None:
        raise ModelConfigError(f"{path} holds an image vocabulary ({VOCAB_BUFFER}, {state[VOCAB_BUFFER].numel()} "
                               "words): it was trained with model.image_token_space=word_mixture; set that in the "
                               "config to load it")
    model.set_image_vocabulary(state[VOCAB_BUFFER])
    if GROUPS_BUFFER in state:  # the word groups (model.word_group_tokens) over that vocabulary
        model.set_word_groups(state[GROUPS_BUFFER])


def _add_notes(report: LoadReport, model: nn.Module, trainable: Set[str]) -> None:
    """LoRA counts by spelling, and trainable weights left at their initialisation (partial loads)."""
    lora = [k for k in report.matched if _is_lora(k)]
    if lora or any(_is_lora(k) for k in trainable):
        short = sum(1 for f in report.renamed if _LORA_SHORT.search(f))
        note = (f"{len(lora)} LoRA tensors matched ({short} in peft 0.2.0 spelling, "
                f"{len(lora) - short} with '.{ADAPTER}')")
        report.notes.append(note)
    untouched = sorted(k for k in report.expected_absent if k in trainable and not _sourced_elsewhere(model, k))
    if untouched:
        note = f"{len(untouched)} trainable tensors not in the file keep their initialisation (e.g. {untouched[0]})"
        logger.warning("%s: %s", report.file, note)
        report.notes.append(note)
