"""``MiniGPTBase``: a MiniGPT model composed of parts — vision tower, connector, LLM, prompt format.

``visual_encoder`` → ``ln_vision`` → connector (``Qformer`` or merge 4 patches) → ``llama_proj`` → ``llama_model``.
The parts are built in :mod:`minigpt4.models.parts` and :mod:`minigpt4.models.connectors`; what trains is decided
in one place (:func:`~minigpt4.models.parts.set_trainability`). MiniGPT-4 (v1) and MiniGPT-v2 are presets of this
class (config defaults and checks), not different code.

Text never reaches this module as strings on the training path: the sample encoder
(:class:`~minigpt4.prompting.SampleEncoder`, run in the data-loader workers) turns each batch into ``input_ids``
(with :data:`~minigpt4.prompting.IMAGE_SLOT_ID` at the image positions), ``labels`` and ``attention_mask``. The
model embeds the ids and writes the image embeddings into the image slots with one ``masked_scatter``
(:meth:`MiniGPTBase.embed_with_images`, count checked). A raw batch (strings) is still accepted: the model then runs
the same encoder itself. The model opens no autocast: the caller's precision policy applies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from minigpt4.common.config import LIBRARY_ROOT
from minigpt4.common.logger import get_logger, log_once
from minigpt4.common.schema import ModelConfig
from minigpt4.models.connectors import MERGE_TOKENS, ModelConfigError, connector_for, image_token_count
from minigpt4.models.connectors import optional_path as _optional_path
from minigpt4.models.generation import GenerationMixin
from minigpt4.models.llm import enable_llm_activation_checkpointing
from minigpt4.models.feature_cache import autocast_state, weights_state
from minigpt4.models.parts import build_llm, build_vision, load_prompt_list, set_trainability, vision_feature_cache
from minigpt4.models.word_align import answer_word_weights, check_word_align, word_align_loss
from minigpt4.models.word_mixture import (GROUPS_BUFFER, VOCAB_BUFFER, group_mixture_loss, group_tokens, mix_words,
                                          word_logits, word_mixture_loss)
from minigpt4.models.tokenizer import LLMTokenizer
from minigpt4.prompting import IGNORE_INDEX, IMAGE_SLOT_ID, PromptError, PromptFormat, SampleEncoder
from minigpt4.prompting.encoder import TRUNCATION_KEYS

logger = get_logger(__name__)

__all__ = ["IGNORE_INDEX", "IMAGE_SLOT_ID", "LLMInputs", "MERGE_TOKENS", "MiniGPTBase", "ModelConfigError",
           "PromptError"]

_INSTANCE_IDS = itertools.count()  # for once-per-model log keys


@dataclass
class LLMInputs:
    """What the LLM receives for one batch (plus the token layout, for tests and debugging)."""

    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside answers
    token_ids: torch.Tensor  # (B, L) long: token id per position, IMAGE_SLOT_ID for image embeddings
    input_lens: List[int]  # length of each condition block (without the BOS)
    image_embeds: Optional[torch.Tensor] = None  # (B, N, H): the projected image tokens (None without images)


class MiniGPTBase(GenerationMixin, nn.Module):
    """Shared MiniGPT model (see the module docstring).

    Build with :meth:`from_config` (preset defaults merged, ``model.ckpt`` loaded) or, for architecture checks
    without files, :meth:`build_on_meta`. Training: ``model(batch) -> {"loss"}`` on an encoded (or raw) batch;
    :meth:`build_llm_inputs` exposes what the LLM gets. Inference: see
    :class:`~minigpt4.models.generation.GenerationMixin`.
    """

    config_schema = ModelConfig
    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {}

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: DictConfig, llm_config: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.on_meta = llm_config is not None
        self.weight_sources: Dict[str, str] = {}  # key prefix -> file that provided those weights
        self.truncation_stats: Dict[str, int] = {k: 0 for k in TRUNCATION_KEYS}
        self._instance = next(_INSTANCE_IDS)
        self.check_config(cfg)
        check_word_align(float(cfg.get("word_align_weight", 0.0)), float(cfg.get("word_align_temperature", 0.05)))
        groups = int(cfg.get("word_group_tokens", 0) or 0)
        if groups < 0 or (groups and cfg.get("image_token_space", "free") != "word_mixture"):
            raise ModelConfigError(f"model.word_group_tokens={groups}: group tokens are >= 0 and need "
                                   "model.image_token_space=word_mixture (0 turns them off)")
        self.llama_model, self.llama_tokenizer = build_llm(cfg, llm_config, self.weight_sources)
        self.llm_hidden_size = int(self.llama_model.config.hidden_size)
        self.visual_encoder, self.ln_vision = build_vision(cfg, self.on_meta, self.weight_sources)
        self.Qformer: Optional[nn.Module] = None
        self.query_tokens: Optional[nn.Parameter] = None
        self.connector = connector_for(cfg)
        self.llama_proj = nn.Linear(self.connector.attach(self, cfg), self.llm_hidden_size)
        self.prompt_format = PromptFormat.from_config(cfg, self.llama_tokenizer)
        self.prompt_list: List[str] = [] if self.on_meta else load_prompt_list(cfg, self.prompt_format)
        set_trainability(self, cfg)
        self.vision_cache = vision_feature_cache(cfg)
        if self.word_mixture:  # the image vocabulary: set by the alignment stage or loaded with model.ckpt
            self.register_buffer(VOCAB_BUFFER, torch.zeros(0, dtype=torch.long))
            self.register_buffer(GROUPS_BUFFER, torch.zeros(0, 0, dtype=torch.bool))  # (K, W) once set
        if cfg.use_grad_checkpoint_llm and not self.on_meta:
            enable_llm_activation_checkpointing(self.llama_model)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Preset-specific refusals (none here)."""

    @classmethod
    def typed_config(cls, cfg: Any) -> DictConfig:
        """The typed model config: a config already typed by this schema is kept; anything else (a dict, an
        untyped section) is merged onto the schema and its ``model_type`` preset, as ``--cfg-path`` does."""
        if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is cls.config_schema:
            return cfg
        model_type = OmegaConf.create(cfg).get("model_type") if cfg is not None else None
        if model_type in cls.PRETRAINED_MODEL_CONFIG_DICT:
            return cls.default_config(str(model_type), cfg)
        return OmegaConf.merge(OmegaConf.structured(cls.config_schema), cfg)

    @classmethod
    def default_config_path(cls, model_type: str) -> Path:
        """The preset YAML of ``model_type`` (upstream's ``default_config_path``)."""
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ModelConfigError(
                f"unknown model_type {model_type!r} for {cls.__name__}; "
                f"known: {sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}"
            )
        return LIBRARY_ROOT / cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def default_config(cls, model_type: str, overrides: Any = None) -> DictConfig:
        """Typed model config: schema ← the preset YAML's ``model:`` section ← ``overrides`` (the one merge path
        of presets, also what :meth:`from_config` uses for a plain dict)."""
        preset = OmegaConf.load(cls.default_config_path(model_type))["model"]
        return OmegaConf.merge(OmegaConf.structured(cls.config_schema), preset, overrides or {})

    @classmethod
    def from_config(cls, cfg: Any) -> "MiniGPTBase":
        """Build the model from its config, then load ``model.ckpt`` (strict key accounting) if set."""
        from minigpt4.models.checkpoint import load_model_checkpoint

        cfg = cls.typed_config(cfg)
        model = cls(cfg)
        ckpt = _optional_path(cfg, "ckpt", "a MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint (.pth)")
        if ckpt:
            load_model_checkpoint(model, ckpt, partial=cfg.ckpt_partial)
        return model

    @classmethod
    def build_on_meta(cls, cfg: Any, llm_config: Any) -> "MiniGPTBase":
        """The same construction on the ``meta`` device, from a transformers LLM config: no files, no memory."""
        cfg = cls.typed_config(cfg)
        with torch.device("meta"):
            return cls(cfg, llm_config=llm_config)

    # ------------------------------------------------------------------ small helpers
    @property
    def device(self) -> torch.device:
        """Device of the projection (where inputs must go)."""
        return self.llama_proj.weight.device

    @property
    def tokenizer(self) -> LLMTokenizer:
        """The tokenizer (an error on a model built on ``meta``, which has none)."""
        if self.llama_tokenizer is None:
            raise ModelConfigError("this model was built on the meta device without a tokenizer")
        return self.llama_tokenizer

    @property
    def end_sym(self) -> str:
        """The resolved end symbol of the prompt format."""
        return self.prompt_format.end_sym

    @property
    def num_image_tokens(self) -> int:
        """LLM positions per image (Q-Former queries or merged patches; a word-mixture model's group tokens after
        them)."""
        return image_token_count(self.cfg) + self.word_group_count

    @property
    def sample_encoder(self) -> SampleEncoder:
        """The encoder that turns this model's batches into token inputs (picklable: data-loader workers use it)."""
        self.tokenizer  # noqa: B018  (a clear error on meta)
        return SampleEncoder(self.prompt_format, self.num_image_tokens, int(self.cfg.max_txt_len),
                             int(self.cfg.max_context_len), list(self.prompt_list))

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings of token ids (plain or peft-wrapped model)."""
        return self.llama_model.get_input_embeddings()(ids)

    # ------------------------------------------------------------------ images
    @property
    def word_mixture(self) -> bool:
        """``model.image_token_space == "word_mixture"``: the image slots receive word-embedding mixtures."""
        return self.cfg.get("image_token_space", "free") == "word_mixture"

    def encode_img(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, S, S]`` → LLM-space embeddings ``[B, N, H]`` and their attention ``[B, N]``.

        This is where the image enters the LLM's space: the projected tokens as they are (upstream), at the text
        norm (``image_token_scale: match_text``), or as mixtures of the image vocabulary's word embeddings
        (``image_token_space: word_mixture``, :mod:`minigpt4.models.word_mixture`)."""
        embeds = self.llm_image_tokens(self.project_image(image))  # (B, n, H) -> (B, N, H)
        if embeds.shape[1] != self.num_image_tokens:  # the prompts reserve num_image_tokens slots per image
            raise ModelConfigError(f"the image gives {embeds.shape[1]} LLM tokens but num_image_tokens is "
                                   f"{self.num_image_tokens} (the slots every prompt reserves): a model that adds "
                                   f"image tokens must count them in num_image_tokens")
        atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)  # (B, N)
        return embeds, atts

    def llm_image_tokens(self, projected: torch.Tensor) -> torch.Tensor:
        """The projection's output ``[B, n, H]`` → what the image slots receive ``[B, N, H]``: as it is, at the text
        norm, or word mixtures (``N = n``) and, with ``model.word_group_tokens`` K, the K group tokens after them
        (``N = n + K``)."""
        if self.word_mixture:
            logits = self.image_word_logits(projected)  # (B, n, W)
            words, norm = self.image_vocabulary_embeddings(), self.text_embedding_norm()
            mixed = mix_words(logits, words, norm)  # (B, n, W) -> (B, n, H)
            if not self.word_group_count:
                return mixed
            return torch.cat([mixed, group_tokens(logits, self.word_groups(), words, norm)], dim=1)
        if self.cfg.get("image_token_scale", "none") == "match_text":  # each token at the text embeddings' norm
            return F.normalize(projected, dim=-1) * self.text_embedding_norm()
        return projected

    def project_image(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` (or ``[B, T, 3, S, S]``) → the projection's output ``[B(*T), n, H]``, before
        any rescaling or word mixing."""
        if image.dim() == 5:
            image = image.reshape(-1, *image.shape[-3:])  # (B, T, 3, S, S) -> (B*T, 3, S, S)
        feats = self.vision_features(image)  # (B, 1+N, D)
        return self.llama_proj(self.image_tokens(feats))  # (B, n, F) -> (B, n, H)

    # ------------------------------------------------------------------ the image vocabulary (word_mixture)
    def image_vocabulary(self) -> torch.Tensor:
        """The ``[W]`` token ids the image tokens are mixed from; a one-line error when unset."""
        vocab = getattr(self, VOCAB_BUFFER, None)
        if not self.word_mixture or vocab is None:
            raise ModelConfigError("this model reads free image tokens (model.image_token_space=free): it has no "
                                   "image vocabulary")
        if vocab.numel() == 0:
            raise ModelConfigError(
                "model.image_token_space=word_mixture needs its image vocabulary: train a first stage with "
                "run.task=image_text_align (it picks the words from the training answers), or load a checkpoint "
                "written by such a run with model.ckpt")
        return vocab

    def set_image_vocabulary(self, ids: torch.Tensor) -> None:
        """Set the image vocabulary (``[W]`` token ids, each inside the LLM's table)."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()  # (W,)
        size = int(self.llama_model.get_input_embeddings().weight.shape[0])
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= size:
            raise ModelConfigError(f"the image vocabulary must hold at least one token id in [0, {size}), got "
                                   f"{ids.numel()} ids" + (f" in [{int(ids.min())}, {int(ids.max())}]"
                                                           if ids.numel() else ""))
        if not self.word_mixture:
            raise ModelConfigError("an image vocabulary needs model.image_token_space=word_mixture")
        setattr(self, VOCAB_BUFFER, ids.to(getattr(self, VOCAB_BUFFER).device))
        groups = getattr(self, GROUPS_BUFFER)
        if groups.numel() and groups.shape[1] != ids.numel():  # groups of another vocabulary: set them again
            setattr(self, GROUPS_BUFFER, torch.zeros(0, 0, dtype=torch.bool, device=groups.device))

    @property
    def word_group_count(self) -> int:
        """``model.word_group_tokens`` of a word-mixture model (0 otherwise)."""
        return int(self.cfg.get("word_group_tokens", 0) or 0) if self.word_mixture else 0

    def word_groups(self) -> torch.Tensor:
        """The ``[K, W]`` bool word groups (:data:`~minigpt4.models.word_mixture.GROUPS_BUFFER`); a one-line error
        when unset."""
        groups = getattr(self, GROUPS_BUFFER)
        if groups.shape[0] != self.word_group_count:
            raise ModelConfigError(
                f"model.word_group_tokens={self.word_group_count} needs {self.word_group_count} word groups, and this "
                f"model has {groups.shape[0]}: train a first stage with run.task=image_text_align and the same "
                "model.word_group_tokens (it picks the groups from the training answers), or load a checkpoint "
                "written by such a run with model.ckpt")
        return groups

    def set_word_groups(self, groups: torch.Tensor) -> None:
        """Set the word groups: ``[K, W]`` bool over the image vocabulary, ``K == model.word_group_tokens``, each
        group at least one word."""
        groups = torch.as_tensor(groups).bool()
        width = self.image_vocabulary().numel()
        if groups.dim() == 2 and groups.shape[0] == self.word_group_count and groups.shape[1] != width:
            raise ModelConfigError(f"the word groups are over {groups.shape[1]} words but the image vocabulary has "
                                   f"{width}: set the vocabulary they were chosen for first")
        if groups.dim() != 2 or tuple(groups.shape) != (self.word_group_count, width):
            raise ModelConfigError(
                f"the word groups have shape {tuple(groups.shape)}; this model needs ({self.word_group_count}, "
                f"{width}) (model.word_group_tokens x its image vocabulary); set model.word_group_tokens="
                f"{groups.shape[0] if groups.dim() == 2 else '?'} to load them")
        if groups.numel() and not bool(groups.any(dim=1).all()):
            raise ModelConfigError("every word group needs at least one word of the image vocabulary")
        setattr(self, GROUPS_BUFFER, groups.to(getattr(self, GROUPS_BUFFER).device))

    def image_vocabulary_embeddings(self) -> torch.Tensor:
        """``[W, H]``: the LLM's input embeddings of the image vocabulary."""
        table = self.llama_model.get_input_embeddings().weight  # (V, H)
        return table[self.image_vocabulary().to(table.device)]

    def image_word_logits(self, projected: torch.Tensor) -> torch.Tensor:
        """Projected tokens ``[B, n, H]`` → ``[B, n, W]``: cosine with each vocabulary word over
        ``model.word_align_temperature``."""
        return word_logits(projected, self.image_vocabulary_embeddings(),
                           float(self.cfg.get("word_align_temperature", 0.05)))

    def vision_features(self, image: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` → the tower's features after ``ln_vision`` ``[B, 1+N, D]``; from
        :attr:`vision_cache` for images it holds (``model.vit_feature_cache_mb``)."""
        def tower(pixels: torch.Tensor) -> torch.Tensor:
            return self.ln_vision(self.visual_encoder(pixels.to(self.device)))

        if self.vision_cache is None:
            return tower(image)
        context = (weights_state([*self.visual_encoder.parameters(), *self.visual_encoder.buffers(),
                                  *self.ln_vision.parameters()]), autocast_state(self.device.type))
        return self.vision_cache.features(image, tower, context)

    def text_embedding_norm(self) -> float:
        """Mean L2 norm of the LLM's input token embeddings (frozen: computed once)."""
        if getattr(self, "_text_norm", None) is None:
            with torch.no_grad():
                self._text_norm = float(self.llama_model.get_input_embeddings().weight.float().norm(dim=-1).mean())
        return self._text_norm

    def image_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features after ``ln_vision`` → the tokens ``llama_proj`` takes (the connector's output)."""
        return self.connector.tokens(self, feats)

    def embed_with_images(self, input_ids: torch.Tensor, img_embeds: Optional[torch.Tensor]) -> torch.Tensor:
        """Embed ``input_ids`` ``[B, L]`` and write ``img_embeds`` into the image slots with one scatter.

        ``img_embeds`` is ``[B, N, H]`` with row ``i``'s image for row ``i`` (a row whose condition was cut at
        ``max_context_len`` holds the first embeddings of its image only), or ``[1, M, H]`` for one row holding
        several images in order (chat). The slot count must match; the error names both numbers.
        """
        input_ids = input_ids.to(self.device)
        slots = input_ids == IMAGE_SLOT_ID  # (B, L)
        embeds = self.embed_tokens(input_ids.masked_fill(slots, self.tokenizer.pad_id))  # (B, L, H)
        n_slots = int(slots.sum())
        if img_embeds is None:
            if n_slots:
                raise PromptError(f"the token ids hold {n_slots} image slot(s) but no image was given")
            return embeds
        per_row = slots.sum(dim=1)  # (B,)
        if img_embeds.shape[0] != input_ids.shape[0] or int(per_row.max()) > img_embeds.shape[1]:
            raise PromptError(
                f"the token ids hold {n_slots} image slot(s) ({per_row.tolist()} per row) but the images give "
                f"{img_embeds.shape[0]} x {img_embeds.shape[1]} embeddings; encode the batch with this model's "
                f"sample encoder ({self.num_image_tokens} tokens per image)"
            )
        keep = torch.arange(img_embeds.shape[1], device=per_row.device)[None] < per_row[:, None]  # (B, N)
        source = img_embeds[keep.to(img_embeds.device)].to(embeds.dtype)  # (sum of slots, H)
        return embeds.masked_scatter(slots.unsqueeze(-1).expand_as(embeds), source)

    # ------------------------------------------------------------------ training
    def encode_batch(self, samples: Dict[str, Any]) -> Dict[str, Any]:
        """``samples`` with token inputs: an encoded batch as it is, a raw one through :attr:`sample_encoder`."""
        return samples if "input_ids" in samples else self.sample_encoder.encode_batch(samples)

    def build_llm_inputs(self, samples: Dict[str, Any]) -> LLMInputs:
        """Everything the LLM gets for a training batch (encoded or raw): embeddings, mask, labels, layout."""
        batch = self.encode_batch(samples)
        if batch.get("image") is not None and batch.get("image_tokens", self.num_image_tokens) != \
                self.num_image_tokens:
            raise PromptError(f"the batch was encoded for {batch['image_tokens']} tokens per image but this model "
                              f"makes {self.num_image_tokens}; encode it with this model's sample_encoder")
        img_embeds = self.encode_img(batch["image"])[0] if batch.get("image") is not None else None
        ids = batch["input_ids"].to(self.device)
        embeds = self.embed_with_images(ids, img_embeds)
        self._count_truncation(batch.get("truncation") or {})
        return LLMInputs(embeds, batch["attention_mask"].to(self.device), batch["labels"].to(self.device), ids,
                         [int(n) for n in batch["input_lens"]], img_embeds)

    def forward(self, samples: Dict[str, Any], align_words: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
        """Training step: ``{"loss": mean cross-entropy over answer tokens}`` (unknown batch keys are ignored).

        With ``model.word_align_weight`` > 0 the word-alignment loss of the image tokens is added
        (:mod:`minigpt4.models.word_align`); ``answer_loss`` and ``word_align_loss`` are then returned as well.
        With ``align_words`` (``[V]`` word weights) the step is :meth:`word_align_step` instead (no LLM layer runs);
        it goes through ``forward`` so that DDP and FSDP wrappers see it.
        """
        if align_words is not None:
            return self.word_align_step(samples, align_words)
        inputs = self.build_llm_inputs(samples)
        token_losses, targets, rows = self.answer_token_losses(inputs)  # (T,) each
        loss = token_losses.mean()
        weight = float(self.cfg.get("word_align_weight", 0.0))
        if weight <= 0 or inputs.image_embeds is None:
            return {"loss": loss}
        batch = inputs.labels.shape[0]
        images = inputs.image_embeds.reshape(batch, -1, inputs.image_embeds.shape[-1])  # (B, N, H)
        table = self.llama_model.get_input_embeddings().weight  # (V, H)
        words = answer_word_weights(rows, targets, token_losses.detach(), batch, table.shape[0],
                                    self.tokenizer.special_ids)  # (B, V)
        align = word_align_loss(images, words, table, float(self.cfg.get("word_align_temperature", 0.05)))
        return {"loss": loss + weight * align, "answer_loss": loss.detach(), "word_align_loss": align.detach()}

    def word_align_step(self, samples: Dict[str, Any], word_weights: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Connector alignment without the LLM (``run.task: image_text_align``): the word-alignment loss of the
        image tokens against the row's answer tokens, each weighted by ``word_weights[id]`` (``[V]``, e.g.
        :func:`~minigpt4.models.word_align.document_frequency_weights` over the training answers) or
        ``word_weights[row, id]`` (``[B, V]``, each row's own weights, :class:`~minigpt4.models.word_align.
        AnswerWordWeights`), the softmax over the words with weight; with ``image_token_space: word_mixture``,
        :func:`~minigpt4.models.word_mixture.word_mixture_loss` over the image vocabulary. Only the tower and the
        projection get gradient; the LLM runs no layer (its input embedding table is read)."""
        batch = self.encode_batch(samples)
        if batch.get("image") is None:
            raise ValueError("image_text_align trains the image tokens: the batch has no images")
        images = self.project_image(batch["image"])  # (B, N, H); the loss compares directions (cosine) only
        labels = batch["labels"].to(images.device)  # (B, L)
        rows, cols = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)  # (T,) each
        ids = labels[rows, cols]  # (T,)
        table = self.llama_model.get_input_embeddings().weight  # (V, H)
        if word_weights.shape not in ((table.shape[0],), (images.shape[0], table.shape[0])):
            raise ValueError(f"word_weights has shape {tuple(word_weights.shape)}; expected ({table.shape[0]},) or "
                             f"({images.shape[0]}, {table.shape[0]}) (the LLM's vocabulary, per row of the batch)")
        present = answer_word_weights(rows, ids, torch.ones(ids.shape, device=ids.device), images.shape[0],
                                      table.shape[0], self.tokenizer.special_ids) > 0  # (B, V)
        per_row = word_weights.to(images.device).float().expand(images.shape[0], -1)  # (V,) or (B, V) -> (B, V)
        words = present.float() * per_row  # (B, V): each word of a row's answers once, at its weight
        if self.word_mixture:  # the tokens' word distributions against the answers' words, over the vocabulary
            vocab = self.image_vocabulary().to(images.device)  # (W,)
            logits, targets = self.image_word_logits(images), words[:, vocab]  # (B, N, W), (B, W)
            loss = word_mixture_loss(logits, targets)
            if self.word_group_count:  # and each question's words told apart within their group
                loss = loss + group_mixture_loss(logits, targets, self.word_groups())
            return {"loss": loss}
        vocab = torch.nonzero((per_row > 0).any(dim=0))[:, 0]  # (W,): the words some answer weighs
        # the softmax runs over the answers' own words: the image picks its words among the data's, and a step
        # costs [B·N, H] x [H, W] instead of the whole vocabulary
        loss = word_align_loss(images, words[:, vocab], table[vocab],
                               float(self.cfg.get("word_align_temperature", 0.05)))  # (B, W), (W, H)
        return {"loss": loss}

    def answer_token_losses(self, inputs: LLMInputs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per answer token: ``(cross-entropy, target id, row)``, each ``[T]``.

        The same values as the LLM's own ``labels=`` loss (fp32 logits, shift by one), but the LM head runs only at
        the positions where some row of the batch predicts an answer token (``logits_to_keep``): the head (vocab x
        hidden) is the largest matmul of a small LLM and its logits (positions x vocab, fp32) the largest
        activation of a large one.
        """
        targets = inputs.labels[:, 1:]  # (B, L-1): position t predicts token t+1
        keep = targets != IGNORE_INDEX  # (B, L-1)
        positions = torch.nonzero(keep.any(dim=0))[:, 0]  # (K,): positions where some row predicts an answer token
        out = self.llama_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                               logits_to_keep=positions, return_dict=True)  # through forward: hooks, autocast, FSDP
        chosen = keep[:, positions]  # (B, K)
        logits = out.logits[chosen].float()  # (B, K, V) -> (T, V)
        ids = targets[:, positions][chosen]  # (T,)
        rows = torch.nonzero(chosen)[:, 0]  # (T,): the row of each answer token
        return F.cross_entropy(logits, ids, reduction="none"), ids, rows

    def _count_truncation(self, counts: Dict[str, Any]) -> None:
        """Add a batch's truncation counts to :attr:`truncation_stats`; log the first cut of each kind once."""
        for key in TRUNCATION_KEYS:
            self.truncation_stats[key] += int(counts.get(key, 0))
        limits = {"answers_truncated": ("answer block(s)", "max_txt_len", self.cfg.max_txt_len),
                  "contexts_truncated": ("condition block(s)", "max_context_len", self.cfg.max_context_len)}
        for key, (what, name, limit) in limits.items():
            if int(counts.get(key, 0)) > 0:
                log_once(logger, f"truncation:{key}:{self._instance}",
                         "%d %s longer than %s=%d tokens were cut; counted in model.truncation_stats (totals logged "
                         "at the end): %s", int(counts[key]), what, name, limit, self.truncation_stats)

    def log_truncation_summary(self) -> Dict[str, int]:
        """Log (once per call, e.g. at the end of a run) and return the truncation totals."""
        logger.info("truncation totals: %s", self.truncation_stats)
        return dict(self.truncation_stats)

    # ------------------------------------------------------------------ weights
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Trainable parameters under upstream's key names (see :mod:`minigpt4.models.checkpoint`)."""
        from minigpt4.models.checkpoint import trainable_state_dict

        return trainable_state_dict(self)

    def load_checkpoint(self, path: str, partial: bool = False) -> Any:
        """Load a MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint with strict key accounting; returns the LoadReport."""
        from minigpt4.models.checkpoint import load_model_checkpoint

        return load_model_checkpoint(self, path, partial=partial)

    def count_parameters(self) -> Dict[str, int]:
        """Total and trainable parameter counts (also on ``meta``)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}
