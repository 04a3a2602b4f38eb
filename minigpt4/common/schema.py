"""Typed schema of FaceGPT configs: the single home of every default.

The YAML layout is upstream MiniGPT-4's (``model:``, ``datasets:``, ``run:``, ``preprocess:``), so its
configs keep working; every key upstream's train and eval YAMLs use is a field here.
:mod:`minigpt4.common.config` loads YAML + ``--options`` into these dataclasses and reports every
problem at once (unknown key with its closest match, wrong type, required path unset or missing).

Components may extend a schema: a model class sets ``config_schema`` to a subclass of
:class:`ModelConfig`, a builder sets it to a subclass of :class:`DatasetConfig`, a processor to a
subclass of :class:`ProcessorConfig`. The loader finds them through the registry.

Field metadata used by the validator:

* ``path``: ``"file"``, ``"dir"`` or ``"any"`` — the value names something on disk that must exist
  when set;
* ``many``: the value may also be a list of such paths (each is checked);
* ``check``: a callable ``check(path) -> problem or None`` run on each existing path (e.g. the JSON layout);
* ``required``: an empty/unset value is an error (a ``???`` in YAML is always "unset");
* ``choices``: the allowed values;
* ``registry``: the value is a registry name of that kind (``"task"``, ``"lr_scheduler"``, ...);
* ``help``: one line shown in error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from omegaconf import MISSING


def path_field(default: Any = "", kind: str = "any", required: bool = False, help: str = "", many: bool = False,
               check: Optional[Callable[[str], Optional[str]]] = None) -> Any:
    """A config field that names a file or folder (``many``: or a list of them).

    ``check(path)`` runs on each existing path when the config is loaded and returns a problem (or None), e.g.
    "holds a JSON list, this dataset reads a JSON object".
    """
    meta: Dict[str, Any] = {"path": kind, "required": required, "help": help, "many": many}
    if check is not None:
        meta["check"] = check
    return field(default=default, metadata=meta)


def choice_field(default: Any, choices: List[Any], help: str = "") -> Any:
    """A config field restricted to ``choices``."""
    return field(default=default, metadata={"choices": list(choices), "help": help})


def registry_field(default: Any, kind: str, help: str = "") -> Any:
    """A config field naming a registry entry of ``kind``."""
    return field(default=default, metadata={"registry": kind, "help": help})


# --------------------------------------------------------------------------------------- model


@dataclass
class VitConfig:
    """EVA vision tower dimensions (FaceGPT addition; defaults = upstream's EVA-ViT-g)."""

    embed_dim: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_ratio: float = 4.3637
    patch_size: int = 14
    norm_eps: float = 1e-6


@dataclass
class QFormerConfig:
    """BLIP-2 Q-Former (BERT) dimensions (FaceGPT addition; defaults = bert-base-uncased as BLIP-2 used it)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


@dataclass
class ModelConfig:
    """``model:`` section. Upstream's keys keep their names and meaning; FaceGPT additions are marked."""

    arch: str = registry_field(MISSING, "model", help="registered model: minigpt4 or minigpt_v2")
    model_type: str = field(default=MISSING, metadata={"help": "preset of the arch, e.g. pretrain_vicuna0"})

    # vision tower
    vit_model: str = choice_field("eva_clip_g", ["eva_clip_g"], help="vision tower family")
    vit_config: VitConfig = field(default_factory=VitConfig)  # FaceGPT: sizes, so tiny towers share the code
    vit_ckpt: Optional[str] = path_field(
        None, "file", help="eva_vit_g.pth (upstream downloaded it from a URL); null = random init"
    )  # FaceGPT: a local path instead of upstream's hard-coded URL
    image_size: int = 224
    drop_path_rate: float = 0.0
    use_grad_checkpoint: bool = False
    vit_precision: str = choice_field(
        "fp16", ["fp16", "bf16", "fp32"],
        help="storage of a frozen tower: fp32, or half (fp16/bf16 = the run's autocast dtype); compute: run.precision",
    )  # FaceGPT: upstream's key, now storage only (common/precision.py)
    freeze_vit: bool = True
    # FaceGPT: the tower's random initialisation drawn from this seed (independent of run.seed), so that a frozen
    # tower without weights (random features, as the CPU demo uses) is the same in training, evaluation and chat;
    # null = from the run's random state
    vit_init_seed: Optional[int] = None
    # FaceGPT: features of the frozen tower (after ln_vision) kept per image, keyed by its pixels, up to this many MB
    # (0 = off); a repeated image (several questions per image, several epochs) skips the tower (models/feature_cache.py)
    vit_feature_cache_mb: int = 0

    # FaceGPT: without a Q-Former, consecutive patch tokens (raster order) merged into one LLM token; upstream's 4
    merge_tokens: int = 4

    # Q-Former (MiniGPT-4 with Vicuna)
    has_qformer: bool = True
    freeze_qformer: bool = True
    num_query_token: int = 32
    q_former_model: Optional[str] = path_field(None, "file", help="blip2_pretrained_flant5xxl.pth")
    qformer_config: QFormerConfig = field(default_factory=QFormerConfig)  # FaceGPT

    # language model
    llama_model: str = path_field(
        MISSING, "any", required=True, help="HF LLaMA folder (config.json + tokenizer) or a local .gguf file"
    )
    llm_precision: str = choice_field(
        "fp16", ["fp16", "bf16", "fp32"],
        help="storage of the frozen LLM: fp32, or half (fp16/bf16 = the run's autocast dtype); compute: run.precision",
    )  # FaceGPT: upstream always loaded fp16 and autocast fp16; storage only now (common/precision.py)
    attn_implementation: Optional[str] = choice_field(
        None,
        [None, "sdpa", "eager"],
        help="attention kernels of EVA, Q-Former and LLM: null = library defaults (fused kernels); "
        "eager = upstream's explicit attention math everywhere (closest to upstream's numbers, slower)",
    )  # FaceGPT
    low_resource: bool = False  # upstream: True loads the LLM in 8-bit (the same as llm_quantization: 8bit)
    llm_quantization: str = choice_field(
        "none", ["none", "8bit", "4bit"],
        help="bitsandbytes storage of the LLM's linear layers: 4bit = NF4 + double quantization (QLoRA), "
        "8bit = LLM.int8(); needs pip install -e .[quant]",
    )  # FaceGPT
    device_8bit: int = 0
    use_grad_checkpoint_llm: bool = False
    freeze_llm: bool = True  # FaceGPT: False = full fine-tune of the LLM (every weight trains; LoRA optional)
    pad_token: Optional[str] = None  # FaceGPT: null = "$$" for LLaMA vocabularies, else tokenizer pad/eos
    prompt_format: str = choice_field(
        "upstream", ["upstream", "tokenizer_chat_template"], help="how instructions are wrapped"
    )  # FaceGPT: SmolLM2 and other chat models use their tokenizer's own template
    # FaceGPT: the system turn for tokenizer_chat_template; null/empty = the chat template's own default
    system_prompt: Optional[str] = None

    # FaceGPT: the scale of the projected image tokens; match_text rescales each to the mean norm of the LLM's token
    # embeddings (no parameters; none = upstream)
    image_token_scale: str = choice_field("none", ["none", "match_text"], help="scale of the projected image tokens")
    # FaceGPT: what the LLM receives in the image slots; free = the projection's output (upstream); word_mixture =
    # each token a softmax mixture of the LLM's input embeddings of the image vocabulary (the training answers'
    # distinguishing words, chosen by run.task=image_text_align and saved in the checkpoint), at the text norm,
    # sharpened by word_align_temperature (models/word_mixture.py)
    image_token_space: str = choice_field("free", ["free", "word_mixture"], help="what the image slots receive")
    # FaceGPT: with word_mixture, this many more image tokens, one per word group (the words that tell apart the
    # answers to one question, chosen by run.task=image_text_align and saved with the vocabulary), each the image's
    # word distribution restricted to its group (models/word_mixture.py); 0 = off
    word_group_tokens: int = 0
    # FaceGPT: weight of the word-alignment loss on the image tokens (0 = off, upstream's loss only): each image is
    # asked to name the words of its answers with its tokens, compared to the LLM's own token embeddings and weighted
    # by the LLM's loss on each answer token (models/word_align.py); its gradient reaches the tower and projection only
    word_align_weight: float = 0.0
    word_align_temperature: float = 0.05  # FaceGPT: softmax temperature of the cosine similarities

    # LoRA (MiniGPT-v2)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    # prompting and labels
    prompt: str = ""  # accepted for upstream configs; unused there too
    prompt_path: str = path_field("", "file", help="file of instruction prompts (v1 stage 2)")
    prompt_template: str = ""
    chat_template: bool = False
    max_txt_len: int = 32
    max_context_len: int = 3800
    end_sym: Optional[str] = field(
        default=None,
        metadata={"help": "text appended to every answer; null = '\\n' (upstream's default) with prompt_format "
                  "upstream, the tokenizer's end-of-turn token with tokenizer_chat_template"},
    )

    # weights
    ckpt: Optional[str] = path_field("", "file", help="MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint (.pth)")
    ckpt_partial: bool = False  # FaceGPT: let ckpt lack trainable weights (they keep their init; listed in the log)


# ------------------------------------------------------------------------------------ datasets


@dataclass
class ProcessorConfig:
    """One processor entry (``vis_processor.train`` etc.); processors may declare a richer schema."""

    name: str = registry_field(MISSING, "processor")


@dataclass
class ProcessorPair:
    """``train``/``eval`` processors of one dataset or model preset (either may be absent)."""

    train: Optional[Dict[str, Any]] = None
    eval: Optional[Dict[str, Any]] = None


@dataclass
class DatasetConfig:
    """One entry under ``datasets:``. Builders extend it (``build_info`` and their own options)."""

    data_type: str = "images"
    type: str = "default"
    batch_size: int = 1
    sample_ratio: float = 1.0
    vis_processor: ProcessorPair = field(default_factory=ProcessorPair)
    text_processor: ProcessorPair = field(default_factory=ProcessorPair)
    build_info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    """Top-level ``preprocess:`` (from the model preset): the processors chat and eval use."""

    vis_processor: ProcessorPair = field(default_factory=ProcessorPair)
    text_processor: ProcessorPair = field(default_factory=ProcessorPair)


# ------------------------------------------------------------------------------------------ run


@dataclass
class RunConfig:
    """``run:`` section: upstream's keys plus FaceGPT's training options."""

    task: str = registry_field("image_text_pretrain", "task")
    runner: str = registry_field("runner_base", "runner")
    lr_sched: str = registry_field("linear_warmup_cosine_lr", "lr_scheduler")
    init_lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = -1.0
    warmup_steps: int = 0
    lr_decay_rate: Optional[float] = None
    weight_decay: float = 0.05
    beta2: float = 0.999
    max_epoch: int = 1
    iters_per_epoch: Optional[int] = None
    num_workers: int = 4
    batch_size_train: Optional[int] = None
    batch_size_eval: Optional[int] = None
    accum_grad_iters: int = 1
    log_freq: int = 50
    seed: int = 42
    output_dir: str = "output"
    amp: bool = True  # upstream's switch: False = fp32 whatever run.precision says
    resume_ckpt_path: Optional[str] = None  # null, "auto" (newest complete checkpoint of the job) or a path
    evaluate: bool = False
    train_splits: List[str] = field(default_factory=lambda: ["train"])
    valid_splits: List[str] = field(default_factory=list)
    test_splits: List[str] = field(default_factory=list)
    use_dist_eval_sampler: bool = True
    device: str = "cuda"
    world_size: int = 1
    dist_url: str = "env://"
    distributed: bool = True
    gpu: Optional[int] = None
    rank: Optional[int] = None
    wandb_log: bool = False
    job_name: str = "facegpt"
    # ---- FaceGPT training additions (minigpt4/runners, minigpt4/tasks; README "Training")
    run_id: Optional[str] = None  # run folder under output_dir/job_name; null = start time (YYYYmmddHHMMSS)
    precision: str = choice_field(
        "auto", ["auto", "bf16", "fp16", "fp32"],
        help="the run's one precision policy (training, validation, chat, evaluation): auto = bf16 on CUDA with "
        "bf16, fp16 (+GradScaler) on other CUDA, fp32 on CPU",
    )
    scale_loss_by_accum: bool = True  # divide the loss by accum_grad_iters (upstream did not: set False)
    # learning-rate multiplier per module prefix, e.g. {visual_encoder: 10} (a tower trained from scratch)
    lr_scale: Dict[str, float] = field(default_factory=dict)
    max_grad_norm: Optional[float] = None  # clip the gradient norm; null = no clipping (upstream)
    max_nonfinite_steps: int = 20  # stop after this many optimizer steps in a row skipped for a NaN/inf loss
    save_every_iters: int = 0  # also checkpoint every N iterations (multiple of accum_grad_iters); 0 = epoch ends
    keep_last_k: int = 3  # checkpoints (weights + trainer state) kept in the run folder; 0 = keep all
    val_every_iters: int = 0  # validation loss every N iterations (needs valid_splits); 0 = at epoch ends only
    val_max_batches: Optional[int] = None  # cap on validation batches per dataset and rank; null = whole split
    find_unused_parameters: bool = True  # DDP option (upstream passed True)
    strategy: str = choice_field(
        "ddp", ["ddp", "fsdp"],
        help="how torchrun processes share the model: ddp = a full replica per process (gradients all-reduced); "
        "fsdp = PyTorch FSDP2, parameters, gradients and optimizer state sharded per LLM decoder layer",
    )  # FaceGPT (minigpt4/runners/fsdp.py)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (bit-exact resume; slower)
    progress_bar: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # write TensorBoard scalars when the tensorboard package is installed
    wandb_project: str = "minigptv"  # wandb project (upstream's name)
    plot_curves: bool = True  # loss_curve.png in the run folder at the end of each epoch
    dist_backend: Optional[str] = choice_field(None, [None, "nccl", "gloo"], help="null = nccl on CUDA, gloo on CPU")
    dist_timeout_minutes: int = 60  # collective timeout (checkpoint writes on rank 0 must fit in it)
    # benchmark evaluation configs (upstream minigptv2_benchmark_evaluation.yaml)
    name: Optional[str] = None
    save_path: Optional[str] = None


# ----------------------------------------------------------------------------------------- root


@dataclass
class RootConfig:
    """The whole resolved config."""

    model: Any = None
    datasets: Dict[str, Any] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    evaluation_datasets: Dict[str, Any] = field(default_factory=dict)
