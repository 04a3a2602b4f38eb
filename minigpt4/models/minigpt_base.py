"""``MiniGPTBase``: what MiniGPT-4 (v1) and MiniGPT-v2 share — LLM, vision tower, prompts, labels, generation.

Sequence layout in training (upstream §7.6, token for token)::

    [BOS][prompt before <ImageHere>][image embeddings][prompt after][answer + end_sym][answer pad][prompt pad]

Labels are −100 everywhere but the answer tokens and ``end_sym``. Text around ``<ImageHere>`` is tokenized
segment by segment (each segment gets SentencePiece's leading ``▁``), the answer block on its own. The answer
block is capped at ``max_txt_len`` tokens, the image + instruction block at ``max_context_len``; unlike upstream,
every cut is counted in ``truncation_stats`` and logged.

Prompt formats (``model.prompt_format``):

* ``upstream`` — instructions are wrapped with ``prompt_template`` (``'[INST] {} [/INST]'``, ...); one BOS
  embedding is prepended; conversations insert ``<s>`` + the formatted question before every later turn.
* ``tokenizer_chat_template`` (FaceGPT, for chat models such as SmolLM2) — instructions are rendered with the
  tokenizer's own chat template (system prompt, user turn, generation prompt); no extra BOS is prepended (the
  template carries its begin tokens); ``end_sym`` null means the tokenizer's end-of-turn (EOS) token, e.g.
  ``<|im_end|>``; in conversations the text the template puts between an answer's end-of-turn and the next answer
  (next user turn + generation prompt) is inserted unsupervised, so the labels cover ``answer + end-of-turn``.

Whether single-turn ``instruction_input`` is wrapped at all is upstream's ``chat_template`` switch (v2 training
sets it; v1 datasets bring pre-formatted prompts or use ``prompt_path``); conversation questions are always wrapped.
"""

from __future__ import annotations

import itertools
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from minigpt4.common.config import LIBRARY_ROOT, resolve_library_path
from minigpt4.common.logger import get_logger, log_once
from minigpt4.common.schema import ModelConfig
from minigpt4.models.eva_vit import init_vision_encoder
from minigpt4.models.generation import StopOnSequences, clean_answer, stop_sequences_for
from minigpt4.models.llm import (
    DTYPES,
    add_lora,
    build_llm_from_config,
    enable_llm_activation_checkpointing,
    freeze_llm,
    llm_path_error,
    load_llm,
)
from minigpt4.models.tokenizer import LLMTokenizer, load_tokenizer

logger = get_logger(__name__)

IMAGE_PLACEHOLDER = "<ImageHere>"
IGNORE_INDEX = -100
#: in token layouts (``LLMInputs.token_ids``, :meth:`MiniGPTBase.context_layout`): an image-embedding position
IMAGE_POSITION = -1
#: upstream's class default for ``end_sym``
UPSTREAM_DEFAULT_END_SYM = "\n"
#: consecutive patch tokens merged into one LLM token in the models without Q-Former
MERGE_TOKENS = 4
_ANSWER_SENTINEL = "<<FACEGPT_ANSWER_{}>>"
_INSTANCE_IDS = itertools.count()  # for once-per-model log keys


class ModelConfigError(ValueError):
    """The model config asks for something impossible; the message names the key and the fix."""


class PromptError(ValueError):
    """A prompt or conversation sample does not fit the model (placeholders, templates, turn counts)."""


@dataclass
class LLMInputs:
    """What the LLM receives for one batch (plus the token layout, for tests and debugging)."""

    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside answers
    token_ids: torch.Tensor  # (B, L) long: token id per position, IMAGE_POSITION for image embeddings
    input_lens: List[int]  # length of each condition block (without the BOS)


def _missing(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.is_missing(cfg, key)


def _optional_path(cfg: DictConfig, key: str, what: str) -> Optional[str]:
    """A path value of ``cfg``: None when null/empty; an error when left at the preset's ``???``."""
    if _missing(cfg, key):
        raise ModelConfigError(
            f"model.{key} is required by this preset but not set; it must name {what}. "
            f"Set it with --options model.{key}=/path/to/file (or null where the preset allows it)"
        )
    value = cfg[key]
    return str(value) if value not in (None, "") else None


class MiniGPTBase(nn.Module):
    """Shared MiniGPT model: ``visual_encoder`` → ``ln_vision`` → (``Qformer`` | merge 4) → ``llama_proj`` → LLM.

    Build with :meth:`from_config` (loads ``model.ckpt`` too) or, for architecture checks without files,
    :meth:`build_on_meta`. Training: ``model(samples) -> {"loss"}``; :meth:`build_llm_inputs` exposes what the LLM
    gets. Inference: :meth:`get_context_emb` + :meth:`generate_from_embeds` (chat), :meth:`generate` (batched).

    Prompt formats (``prompt_format``):

    * ``upstream``: ``prompt_template`` wraps instructions, one BOS embedding is prepended in training and
      ``get_context_emb`` adds BOS to the first segment; ``end_sym`` null means ``"\n"`` (upstream's default).
    * ``tokenizer_chat_template``: the tokenizer's chat template renders the user turn (with its system prompt and
      generation prompt); nothing is prepended (the template writes its own begin tokens); ``end_sym`` null means
      the tokenizer's EOS / end-of-turn token (``<|im_end|>`` for SmolLM2), so answers are supervised up to and
      including it; between turns, the template's own text from the end-of-turn to the next answer is inserted
      without labels. Stop rules (:meth:`stop_sequences`) follow from the same ``end_sym``.

    Pad positions always get attention 0 and label −100. Upstream also masked every token equal to the pad id
    (a literal ``$$``); that is kept only while the pad is not EOS or part of ``end_sym`` (with SmolLM2 the pad is
    ``<|im_end|>``, which must stay a target).
    """

    config_schema = ModelConfig
    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {}

    # ------------------------------------------------------------------ construction
    def __init__(self, cfg: DictConfig, llm_config: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.on_meta = llm_config is not None
        self.weight_sources: Dict[str, str] = {}  # key prefix -> file that provided those weights
        self.truncation_stats: Dict[str, int] = {"samples": 0, "answers_truncated": 0, "contexts_truncated": 0}
        self._instance = next(_INSTANCE_IDS)
        self.Qformer: Optional[nn.Module] = None
        self.query_tokens: Optional[nn.Parameter] = None
        self._init_llm(cfg, llm_config)
        self._init_vision(cfg)
        img_f_dim = self._init_image_adapter(cfg)
        self.llama_proj = nn.Linear(img_f_dim, self.llm_hidden_size)
        self._init_prompts(cfg)
        if cfg.use_grad_checkpoint_llm and not self.on_meta:
            enable_llm_activation_checkpointing(self.llama_model)

    @classmethod
    def typed_config(cls, cfg: Any) -> DictConfig:
        """``cfg`` (DictConfig, dict or schema instance) merged onto this class's schema."""
        if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is cls.config_schema:
            return cfg
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
    def default_config(cls, model_type: str, overrides: Optional[Dict[str, Any]] = None) -> DictConfig:
        """Typed model config of a preset (its YAML's ``model:`` section) with ``overrides`` applied."""
        preset = OmegaConf.load(cls.default_config_path(model_type))["model"]
        return OmegaConf.merge(OmegaConf.structured(cls.config_schema), preset, overrides or {})

    @classmethod
    def from_config(cls, cfg: Any) -> "MiniGPTBase":
        """Build the model from its typed config, then load ``model.ckpt`` (strict key accounting) if set."""
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

    def _init_llm(self, cfg: DictConfig, llm_config: Any) -> None:
        attn = "eager" if cfg.attn_implementation == "eager" else cfg.attn_implementation
        if self.on_meta:
            self.llama_tokenizer: Optional[LLMTokenizer] = None
            llm = build_llm_from_config(llm_config, precision=cfg.llm_precision, attn_implementation=attn)
        else:
            if _missing(cfg, "llama_model"):
                raise llm_path_error("???", "the preset leaves it unset")
            path = cfg.llama_model
            llm = load_llm(
                path, precision=cfg.llm_precision, attn_implementation=attn,
                low_resource=cfg.low_resource, device_8bit=cfg.device_8bit,
            )
            self.llama_tokenizer = load_tokenizer(path, pad_token=cfg.pad_token)
            if self.llama_tokenizer.vocab_size > llm.get_input_embeddings().num_embeddings:
                raise ModelConfigError(
                    f"model.llama_model={path}: the tokenizer has {self.llama_tokenizer.vocab_size} ids but the model "
                    f"only {llm.get_input_embeddings().num_embeddings} embeddings; the folder mixes two models"
                )
            self.weight_sources["llama_model."] = str(path)
        freeze_llm(llm)
        if cfg.lora_r > 0:
            llm = add_lora(
                llm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules), quantized=cfg.low_resource,
            )
        self.llama_model = llm
        self.llm_hidden_size = int(llm.config.hidden_size)

    def _init_vision(self, cfg: DictConfig) -> None:
        vit_ckpt = None
        if not self.on_meta:
            vit_ckpt = _optional_path(cfg, "vit_ckpt", "EVA-ViT-g weights (eva_vit_g.pth)")
            if vit_ckpt is None and cfg.freeze_vit:
                raise ModelConfigError(
                    "model.vit_ckpt is null but model.freeze_vit is True: a frozen, randomly initialised vision tower "
                    "never learns. Set --options model.vit_ckpt=/path/to/eva_vit_g.pth, or model.freeze_vit=False to "
                    "train the tower from scratch"
                )
        self.visual_encoder, self.ln_vision, _ = init_vision_encoder(
            cfg.vit_config, cfg.image_size, cfg.drop_path_rate, cfg.use_grad_checkpoint,
            cfg.vit_precision, cfg.freeze_vit, vit_ckpt,
        )
        self.visual_encoder.exact_attention = cfg.attn_implementation == "eager"
        if vit_ckpt:
            self.weight_sources["visual_encoder."] = vit_ckpt

    def _init_image_adapter(self, cfg: DictConfig) -> int:
        """Input width of ``llama_proj``; the base class merges 4 consecutive patch tokens (no Q-Former)."""
        return int(self.visual_encoder.num_features) * MERGE_TOKENS

    def _init_prompts(self, cfg: DictConfig) -> None:
        self.prompt_format = cfg.prompt_format
        self.system_prompt = cfg.system_prompt
        self.prompt_template = cfg.prompt_template
        self.chat_template = bool(cfg.chat_template)
        self.max_txt_len = int(cfg.max_txt_len)
        self.max_context_len = int(cfg.max_context_len)
        self.add_bos = self.prompt_format == "upstream"
        self.end_sym = self._resolve_end_sym(cfg.end_sym)
        self.prompt_list: List[str] = []
        if cfg.prompt_path and not self.on_meta:
            path = resolve_library_path(cfg.prompt_path)
            if not path.is_file():
                raise ModelConfigError(f"model.prompt_path={cfg.prompt_path!r}: no such file (looked in the working "
                                       f"directory and under {LIBRARY_ROOT})")
            lines = [line for line in path.read_text().splitlines() if IMAGE_PLACEHOLDER in line]
            self.prompt_list = [self.wrap_instruction(line) for line in lines]
            logger.info("%d training prompts from %s, e.g. %r", len(self.prompt_list), path, self.prompt_list[:1])

    def _resolve_end_sym(self, end_sym: Optional[str]) -> str:
        if end_sym is not None:
            return str(end_sym)
        if self.prompt_format == "tokenizer_chat_template" and self.llama_tokenizer is not None:
            if not self.llama_tokenizer.eos_token:
                raise ModelConfigError("model.end_sym is null and the tokenizer has no EOS token; set model.end_sym")
            return self.llama_tokenizer.eos_token
        return UPSTREAM_DEFAULT_END_SYM

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

    def maybe_autocast(self, dtype: Optional[torch.dtype] = None) -> ContextManager:
        """Autocast to the LLM's precision on CUDA; a null context on CPU or in fp32."""
        dtype = dtype or DTYPES[self.cfg.llm_precision]
        if self.device.type != "cuda" or dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """LLM input embeddings of token ids (plain or peft-wrapped model)."""
        return self.llama_model.get_input_embeddings()(ids)

    @property
    def _mask_pad_id(self) -> bool:
        """Upstream also masked every pad id in targets/attention; only safe when pad is not EOS / end_sym."""
        tok = self.tokenizer
        return tok.pad_id != tok.eos_id and tok.pad_id not in tok.encode(self.end_sym)

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(ids), dtype=torch.long, device=self.device)

    def _count_truncation(self, kind: str, count: int, detail: str) -> None:
        if count <= 0:
            return
        self.truncation_stats[kind] += count
        log_once(logger, f"truncation:{kind}:{self._instance}",
                 "%s; counted in model.truncation_stats (totals logged at the end): %s", detail, self.truncation_stats)

    def log_truncation_summary(self) -> Dict[str, int]:
        """Log (once per call, e.g. at the end of a run) and return the truncation totals."""
        logger.info("truncation totals: %s", self.truncation_stats)
        return dict(self.truncation_stats)

    # ------------------------------------------------------------------ images
    def encode_img(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, S, S]`` → LLM-space embeddings ``[B, N, H]`` and their attention ``[B, N]``."""
        if image.dim() == 5:
            image = image.reshape(-1, *image.shape[-3:])  # (B, T, 3, S, S) -> (B*T, 3, S, S)
        image = image.to(self.device)
        with self.maybe_autocast():
            feats = self.ln_vision(self.visual_encoder(image))  # (B, 1+N, D)
            tokens = self.image_tokens(feats)
            embeds = self.llama_proj(tokens)  # (B, n, F) -> (B, n, H)
        atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)  # (B, n)
        return embeds, atts

    def image_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """Vision features after ``ln_vision`` → the tokens ``llama_proj`` takes (Q-Former output or merged patches)."""
        from minigpt4.models.qformer import run_qformer

        if self.Qformer is not None:
            return run_qformer(self.Qformer, self.query_tokens, feats)  # (B, 1+N, D) -> (B, Q, hidden)
        patches = feats[:, 1:, :]  # drop CLS: (B, 1+N, D) -> (B, N, D)
        batch, n, dim = patches.shape
        if n % MERGE_TOKENS:
            raise ModelConfigError(f"{n} patch tokens cannot be merged in groups of {MERGE_TOKENS}; check image_size")
        return patches.reshape(batch, n // MERGE_TOKENS, dim * MERGE_TOKENS)  # (B, N, D) -> (B, N/4, 4D), raster

    # ------------------------------------------------------------------ prompts
    def _system_turn(self) -> List[Dict[str, str]]:
        """``model.system_prompt`` as a system message (null or empty: the chat template's own default applies)."""
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def wrap_instruction(self, text: str) -> str:
        """One instruction in the model's prompt format (``prompt_template`` or the tokenizer's chat template)."""
        if self.prompt_format == "tokenizer_chat_template":
            return self.tokenizer.apply_chat_template(self._system_turn() + [{"role": "user", "content": text}],
                                                      add_generation_prompt=True)
        if "{}" not in self.prompt_template:
            raise PromptError(
                f"model.prompt_template={self.prompt_template!r} has no '{{}}' where the instruction goes; set it, "
                "e.g. --options \"model.prompt_template=[INST] {} [/INST]\""
            )
        return self.prompt_template.format(text)

    def _instructions(self, samples: Dict[str, Any], batch: int) -> Optional[List[str]]:
        """Per-sample condition prompts of a single-turn batch (upstream §7.6.3 steps 2-3)."""
        if "instruction_input" in samples:
            instructions = list(samples["instruction_input"])
            if len(instructions) != batch:
                raise PromptError(f"{len(instructions)} instruction_input strings for a batch of {batch}")
            if self.chat_template:
                instructions = [self.wrap_instruction(text) for text in instructions]
            return instructions
        if self.prompt_list:
            return [random.choice(self.prompt_list)] * batch  # upstream: one prompt for the whole batch
        return None

    def _conversations(self, samples: Dict[str, Any]) -> Tuple[List[List[str]], List[List[str]]]:
        """``conv_q``/``conv_a`` as lists of turns (list-of-lists, or upstream's ``connect_sym``-joined strings)."""
        conv_q, conv_a = list(samples["conv_q"]), list(samples["conv_a"])
        if conv_q and isinstance(conv_q[0], str):
            if "connect_sym" not in samples:
                raise PromptError("conv_q holds joined strings but the batch has no connect_sym to split them")
            sym = samples["connect_sym"]
            sym = sym if isinstance(sym, str) else sym[0]
            conv_q = [q.split(sym) for q in conv_q]
            conv_a = [a.split(sym) for a in conv_a]
        for i, (qs, ans) in enumerate(zip(conv_q, conv_a)):
            if len(qs) != len(ans) or not qs:
                raise PromptError(f"conversation sample {i}: {len(qs)} questions but {len(ans)} answers")
        if len(conv_q) != len(conv_a):
            raise PromptError(f"{len(conv_q)} conv_q entries but {len(conv_a)} conv_a entries")
        return [list(q) for q in conv_q], [list(a) for a in conv_a]

    def _conversation_texts(self, questions: List[str], n_answers: int) -> Tuple[str, List[str]]:
        """Condition text (first question, wrapped) and the unsupervised text before each later answer."""
        if self.prompt_format == "upstream":
            bos = self.tokenizer.bos_token or ""
            return self.wrap_instruction(questions[0]), [bos + self.wrap_instruction(q) for q in questions[1:]]
        sentinels = [_ANSWER_SENTINEL.format(k) for k in range(n_answers)]
        messages: List[Dict[str, str]] = self._system_turn()
        for question, sentinel in zip(questions, sentinels):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": sentinel}]
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False)
        parts: List[str] = []
        for sentinel in sentinels:
            head, sep, rendered = rendered.partition(sentinel)
            if not sep:
                raise PromptError("the tokenizer's chat template rewrites assistant messages; it cannot be used for "
                                  "training conversations (use model.prompt_format: upstream)")
            parts.append(head)
        separators = []
        for part in parts[1:]:
            if not part.startswith(self.end_sym):
                raise PromptError(f"the chat template does not end an assistant turn with end_sym={self.end_sym!r} "
                                  f"(it writes {part[:20]!r}); set model.end_sym to the template's end-of-turn text")
            separators.append(part[len(self.end_sym):])
        return parts[0], separators

    # ------------------------------------------------------------------ embedding splice
    def _splice(self, prompt: str, image_block: torch.Tensor, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokenize ``prompt`` segment by segment around ``<ImageHere>`` and put ``image_block`` ``[N, H]`` there."""
        segments = prompt.split(IMAGE_PLACEHOLDER)
        if len(segments) - 1 != 1:
            raise PromptError(
                f"sample {index}: the prompt has {len(segments) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but 1 image "
                f"embedding block of {image_block.shape[0]} tokens was given; every instruction needs exactly one "
                f"'<Img><ImageHere></Img>'. Prompt: {prompt[:200]!r}"
            )
        dtype = self.llama_model.get_input_embeddings().weight.dtype
        embs: List[torch.Tensor] = []
        ids: List[torch.Tensor] = []
        for k, segment in enumerate(segments):
            seg_ids = self._ids(self.tokenizer.encode(segment))
            embs.append(self.embed_tokens(seg_ids))  # (n_k, H)
            ids.append(seg_ids)
            if k < len(segments) - 1:
                embs.append(image_block.to(dtype))  # (N, H)
                ids.append(torch.full((image_block.shape[0],), IMAGE_POSITION, dtype=torch.long, device=self.device))
        return torch.cat(embs, dim=0), torch.cat(ids, dim=0)  # (L, H), (L,)

    def _pad_right(self, pieces: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, ...]:
        """Right-pad condition blocks with the pad token's embedding to ``min(longest, max_context_len)``."""
        lengths = [emb.shape[0] for emb, _ in pieces]
        length = min(max(lengths), self.max_context_len)
        pad_id = self.tokenizer.pad_id
        pad_emb = self.embed_tokens(self._ids([pad_id]))  # (1, H)
        embs = pad_emb.expand(len(pieces), length, -1).clone()  # (B, L, H)
        atts = torch.zeros(len(pieces), length, dtype=torch.long, device=self.device)
        ids = torch.full((len(pieces), length), pad_id, dtype=torch.long, device=self.device)
        for i, (emb, seq) in enumerate(pieces):
            n = min(emb.shape[0], length)
            embs[i, :n] = emb[:n]
            atts[i, :n] = 1
            ids[i, :n] = seq[:n]
        cut = sum(n > self.max_context_len for n in lengths)
        self._count_truncation("contexts_truncated", cut, f"{cut} condition block(s) longer than "
                               f"max_context_len={self.max_context_len} were cut (longest {max(lengths)})")
        return embs, atts, ids

    def prompt_wrap(
        self, img_embeds: Optional[torch.Tensor], atts_img: Optional[torch.Tensor], prompts: Optional[Sequence[str]]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Condition block: embeddings ``[B, L, H]``, attention ``[B, L]`` and token layout ``[B, L]``."""
        if not prompts:
            if img_embeds is None:
                raise PromptError("a sample without image needs an instruction")
            ids = torch.full(img_embeds.shape[:2], IMAGE_POSITION, dtype=torch.long, device=img_embeds.device)
            return img_embeds, atts_img, ids
        if img_embeds is None:
            pieces = []
            for i, prompt in enumerate(prompts):
                if IMAGE_PLACEHOLDER in prompt:
                    raise PromptError(f"sample {i}: the prompt has {prompt.count(IMAGE_PLACEHOLDER)} "
                                      f"{IMAGE_PLACEHOLDER} placeholder(s) but the batch holds 0 images")
                seq = self._ids(self.tokenizer.encode(prompt))
                pieces.append((self.embed_tokens(seq), seq))
            return self._pad_right(pieces)
        if isinstance(prompts, str):
            prompts = [prompts] * img_embeds.shape[0]
        if len(prompts) != img_embeds.shape[0]:
            raise PromptError(f"{len(prompts)} prompts for {img_embeds.shape[0]} images")
        return self._pad_right([self._splice(p, img_embeds[i], i) for i, p in enumerate(prompts)])

    def _pad_ids(self, seqs: List[List[int]], fill: int, limit: int) -> torch.Tensor:
        """Right-pad id lists to ``min(longest, limit)`` with ``fill`` (longer lists are cut)."""
        length = min(max((len(s) for s in seqs), default=0), limit)
        out = torch.full((len(seqs), length), fill, dtype=torch.long, device=self.device)
        for i, seq in enumerate(seqs):
            n = min(len(seq), length)
            out[i, :n] = self._ids(seq[:n])
        return out

    def _answer_block(self, answers: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single-turn targets: ``answer + end_sym`` tokenized alone, cut at ``max_txt_len``, right-padded."""
        seqs = [self.tokenizer.encode(answer + self.end_sym) for answer in answers]
        ids = self._pad_ids(seqs, self.tokenizer.pad_id, self.max_txt_len)  # (B, T)
        positions = self._pad_ids([[1] * len(s) for s in seqs], 0, self.max_txt_len)  # (B, T)
        targets = ids.masked_fill(positions == 0, IGNORE_INDEX)
        if self._mask_pad_id:  # upstream: every pad id is masked, a literal "$$" in an answer too
            targets = targets.masked_fill(ids == self.tokenizer.pad_id, IGNORE_INDEX)
        cut = sum(len(s) > self.max_txt_len for s in seqs)
        self._count_truncation("answers_truncated", cut, f"{cut} answer(s) longer than max_txt_len="
                               f"{self.max_txt_len} tokens were cut (longest {max(len(s) for s in seqs)})")
        return ids, positions, targets

    def _conversation_block(
        self, answers: List[List[str]], separators: List[List[str]]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Multi-turn targets (§7.6.4): ``a1+end, sep2, a2+end, ...``; only the answers are supervised."""
        id_rows: List[List[int]] = []
        target_rows: List[List[int]] = []
        for turns, seps in zip(answers, separators):
            ids: List[int] = []
            targets: List[int] = []
            for k, answer in enumerate(turns):
                answer_ids = self.tokenizer.encode(answer + self.end_sym)
                ids += answer_ids
                targets += answer_ids
                if k < len(seps):
                    sep_ids = self.tokenizer.encode(seps[k])
                    ids += sep_ids
                    targets += [IGNORE_INDEX] * len(sep_ids)
            id_rows.append(ids)
            target_rows.append(targets)
        pad_id = self.tokenizer.pad_id
        ids_t = self._pad_ids(id_rows, pad_id, self.max_txt_len)  # (B, T)
        targets_t = self._pad_ids(target_rows, IGNORE_INDEX, self.max_txt_len)  # (B, T)
        atts = self._pad_ids([[1] * len(r) for r in id_rows], 0, self.max_txt_len)  # (B, T)
        if self._mask_pad_id:  # upstream: attention = (ids != pad id)
            atts = atts.masked_fill(ids_t == pad_id, 0)
        cut = sum(len(r) > self.max_txt_len for r in id_rows)
        self._count_truncation("answers_truncated", cut, f"{cut} conversation(s) longer than max_txt_len="
                               f"{self.max_txt_len} tokens were cut (longest {max(len(r) for r in id_rows)})")
        return ids_t, atts, targets_t

    def concat_emb_input_output(
        self,
        input_embs: torch.Tensor,
        input_atts: torch.Tensor,
        input_ids: torch.Tensor,
        output_embs: torch.Tensor,
        output_atts: torch.Tensor,
        output_ids: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[int]]:
        """Per sample: real condition tokens, the whole answer block, then the condition's padding (§7.6.5)."""
        embs, atts, ids, lens = [], [], [], []
        for i in range(input_embs.shape[0]):
            n = int(input_atts[i].sum())
            lens.append(n)
            embs.append(torch.cat([input_embs[i, :n], output_embs[i], input_embs[i, n:]]))  # (Lc+T, H)
            atts.append(torch.cat([input_atts[i, :n], output_atts[i], input_atts[i, n:]]))
            ids.append(torch.cat([input_ids[i, :n], output_ids[i], input_ids[i, n:]]))
        return torch.stack(embs), torch.stack(atts), torch.stack(ids), lens  # (B, Lc+T, H), (B, Lc+T) x2

    def build_llm_inputs(self, samples: Dict[str, Any]) -> LLMInputs:
        """Everything the LLM gets for a training batch: embeddings, attention mask, labels, token layout."""
        img_embeds, img_atts = self.encode_img(samples["image"]) if "image" in samples else (None, None)
        if "conv_q" in samples:
            questions, answers = self._conversations(samples)
            texts = [self._conversation_texts(q, len(a)) for q, a in zip(questions, answers)]
            prompts: Optional[List[str]] = [cond for cond, _ in texts]
            out_ids, out_atts, out_targets = self._conversation_block(answers, [seps for _, seps in texts])
        else:
            if "answer" not in samples:
                raise PromptError("a training batch needs 'answer' (single-turn) or 'conv_q' and 'conv_a' "
                                  f"(multi-turn); this one has {sorted(samples)}")
            batch = img_embeds.shape[0] if img_embeds is not None else len(samples["answer"])
            prompts = self._instructions(samples, batch)
            out_ids, out_atts, out_targets = self._answer_block(list(samples["answer"]))
        cond_embs, cond_atts, cond_ids = self.prompt_wrap(img_embeds, img_atts, prompts)
        out_embs = self.embed_tokens(out_ids)  # (B, T, H)
        embs, atts, ids, lens = self.concat_emb_input_output(
            cond_embs, cond_atts, cond_ids, out_embs, out_atts, out_ids
        )
        prefix = 0
        if self.add_bos:
            bos = torch.full((embs.shape[0], 1), self.tokenizer.bos_id, dtype=torch.long, device=self.device)
            embs = torch.cat([self.embed_tokens(bos), embs], dim=1)  # (B, L, H) -> (B, 1+L, H)
            atts = torch.cat([cond_atts[:, :1], atts], dim=1)
            ids = torch.cat([bos, ids], dim=1)
            prefix = 1
        labels = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long, device=self.device)
        for i, n in enumerate(lens):
            labels[i, n + prefix: n + prefix + out_targets.shape[1]] = out_targets[i]
        self.truncation_stats["samples"] += embs.shape[0]
        return LLMInputs(embs, atts, labels, ids, lens)

    def forward(self, samples: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Training step: ``{"loss": mean cross-entropy over answer tokens}`` (unknown batch keys are ignored)."""
        inputs = self.build_llm_inputs(samples)
        with self.maybe_autocast():
            out = self.llama_model(
                inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                labels=inputs.labels, return_dict=True,
            )
        return {"loss": out.loss}

    # ------------------------------------------------------------------ inference
    def _context_parts(self, prompt: str, img_list: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[int]]:
        segments = prompt.split(IMAGE_PLACEHOLDER)
        if len(segments) != len(img_list) + 1:
            raise PromptError(f"the prompt has {len(segments) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but "
                              f"{len(img_list)} image embedding(s) were given")
        dtype = self.llama_model.get_input_embeddings().weight.dtype
        embs: List[torch.Tensor] = []
        layout: List[int] = []
        for k, segment in enumerate(segments):
            seg_ids = self.tokenizer.encode(segment, add_bos=(k == 0 and self.add_bos))
            embs.append(self.embed_tokens(self._ids(seg_ids))[None])  # (1, n_k, H)
            layout += seg_ids
            if k < len(img_list):
                image = img_list[k].to(device=self.device, dtype=dtype)
                image = image if image.dim() == 3 else image[None]  # (N, H) -> (1, N, H)
                embs.append(image)
                layout += [IMAGE_POSITION] * image.shape[1]
        return torch.cat(embs, dim=1), layout  # (1, L, H)

    def get_context_emb(self, prompt: str, img_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inference context ``[1, L, H]``: segments around ``<ImageHere>`` tokenized alone, the first with BOS
        (upstream format), image embeddings spliced in order (§7.6.7)."""
        return self._context_parts(prompt, img_list)[0]

    def context_layout(self, prompt: str, img_list: Sequence[torch.Tensor]) -> List[int]:
        """Token ids of :meth:`get_context_emb`'s positions (``IMAGE_POSITION`` for image embeddings)."""
        return self._context_parts(prompt, img_list)[1]

    def stop_sequences(self) -> List[List[int]]:
        """Token-id sequences that end an answer: EOS and every tokenization of ``end_sym`` under this tokenizer."""
        return stop_sequences_for(self.tokenizer, self.end_sym)

    def generate_from_embeds(
        self,
        embs: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        streamer: Any = None,
        stop_sequences: Optional[List[List[int]]] = None,
        **gen_kwargs: Any,
    ) -> torch.Tensor:
        """Generate from spliced embeddings ``[B, L, H]`` (left padding in ``attention_mask``); returns only the new
        ids ``[B, T]``. Stops at :meth:`stop_sequences` (per row); ``streamer`` receives tokens as they come."""
        from transformers import StoppingCriteriaList

        if attention_mask is None:
            attention_mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)
        stops = self.stop_sequences() if stop_sequences is None else stop_sequences
        criteria = StoppingCriteriaList([StopOnSequences(stops)]) if stops else None
        tok = self.tokenizer
        with self.maybe_autocast():
            return self.llama_model.generate(
                inputs_embeds=embs, attention_mask=attention_mask, stopping_criteria=criteria, streamer=streamer,
                pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id, **gen_kwargs,
            )

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        num_beams: int = 1,
        max_new_tokens: int = 20,
        min_length: int = 1,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        temperature: float = 1.0,
        do_sample: bool = False,
    ) -> List[str]:
        """Upstream's batched inference (§7.6.8): one context per (image, text), left-padded; cleaned answers."""
        ids = self.generate_ids(images, texts, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                min_length=min_length, top_p=top_p, repetition_penalty=repetition_penalty,
                                length_penalty=length_penalty, temperature=temperature, do_sample=do_sample)
        tok = self.tokenizer
        cut_at = [s for s in (tok.eos_token, self.end_sym) if s]
        return [clean_answer(tok.decode(row, skip_special_tokens=True), cut_at, [tok.bos_token or ""]) for row in ids]

    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, texts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """New token ids ``[B, T]`` of :meth:`generate` (before decoding)."""
        embs, mask = self.batch_context(images, texts)
        if not kwargs.get("do_sample"):  # sampling knobs would only raise transformers warnings
            kwargs = {k: v for k, v in kwargs.items() if k not in ("top_p", "temperature")}
        return self.generate_from_embeds(embs, mask, **kwargs)

    def batch_context(self, images: torch.Tensor, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (zero vectors, attention 0) contexts ``[B, L, H]`` and mask ``[B, L]`` for a batch."""
        img_embeds, _ = self.encode_img(images)
        if len(texts) != img_embeds.shape[0]:
            raise PromptError(f"{len(texts)} texts for {img_embeds.shape[0]} images")
        contexts = [self.get_context_emb(text, [img_embeds[i:i + 1]]) for i, text in enumerate(texts)]
        length = max(c.shape[1] for c in contexts)
        embs = torch.zeros(len(contexts), length, contexts[0].shape[-1], dtype=contexts[0].dtype, device=self.device)
        mask = torch.zeros(len(contexts), length, dtype=torch.long, device=self.device)
        for i, ctx in enumerate(contexts):
            embs[i, length - ctx.shape[1]:] = ctx[0]
            mask[i, length - ctx.shape[1]:] = 1
        return embs, mask

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
