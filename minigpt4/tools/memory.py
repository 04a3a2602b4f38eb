"""Memory planner: the expected accelerator memory of one training step, from a config, without weight files.

    python -m minigpt4.tools.memory --cfg-path train_configs/minigptv2_finetune_gpt4vision.yaml \\
        --batch-size 4 --max-len 1024 --gpu-gb 24 [--llm-arch llama2-7b] [--options model.llm_quantization=4bit]

The model is built on the ``meta`` device with the same construction code as training (no memory, no files), so
the parameter counts, which parts train and the storage dtypes are the real ones; the precision policy
(:mod:`minigpt4.common.precision`) decides the frozen weights' storage and the compute dtype. The LLM's
architecture comes from ``model.llama_model``'s ``config.json`` (or ``.gguf`` header) when that exists, else from
a built-in table (``--llm-arch``); the output says which.

Terms (bytes):

* weights: every parameter in its storage dtype; trainable ones in fp32; quantized linear layers of the LLM at
  :func:`~minigpt4.models.llm.quantized_bytes_per_param` (with LoRA, k-bit preparation keeps the LLM's other
  weights in fp32);
* autocast copies: weights stored in another dtype than the compute dtype (fp32 weights under bf16 autocast)
  are cast by every linear layer, and autograd keeps each copy for the backward pass;
* gradients: fp32, one per trainable parameter; optimizer: AdamW's two fp32 moments per trainable parameter;
* activations: the tensors autograd keeps for the backward pass, per LLM decoder layer and token (see
  :func:`llm_layer_bytes_per_token`), the logits and loss, a trainable vision tower and the projection; with LLM
  activation checkpointing only each layer's input is kept, plus one layer recomputed during backward.

Sequence length = image tokens + ``--max-len`` text tokens (default ``model.max_txt_len``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from minigpt4.common.errors import entry_point
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import DTYPES, PrecisionPolicy, apply_frozen_storage, resolve_precision_name

logger = get_logger(__name__)

GIB = 1024**3
#: full-size LLM dimensions for configs whose ``llama_model`` folder is not on this machine
LLM_ARCHS: Dict[str, Dict[str, Any]] = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "vicuna-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048),
    "llama2-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096),
    "vicuna-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=2048),
}
#: the table entry used when neither ``config.json`` nor ``--llm-arch`` says (by preset)
DEFAULT_ARCH = {"pretrain_vicuna0": "vicuna-7b"}
FALLBACK_ARCH = "llama2-7b"


#: stands in for weight paths a config leaves unset (``???``): the planner reads no weights
NO_FILE = "(not needed by the planner)"
PATH_KEYS = ("llama_model", "vit_ckpt", "q_former_model", "ckpt")


class MemoryPlanError(ValueError):
    """A user mistake in the planner's arguments or config (one line)."""


def fill_unset_paths(cfg_path: str, options: Sequence[str]) -> List[str]:
    """``options`` plus a stand-in for each weight path the YAML leaves unset, so that a config meant for another
    machine (``???`` placeholders) can be planned; a path given in the YAML or ``--options`` is kept."""
    from omegaconf import OmegaConf

    path = Path(cfg_path)
    if not path.is_file():
        raise MemoryPlanError(f"--cfg-path {cfg_path}: no such file")
    model = OmegaConf.load(path).get("model") or {}
    given = {o.split("=", 1)[0].strip() for o in options}
    extra = []
    for key in PATH_KEYS:
        if f"model.{key}" in given:
            continue
        unset = key not in model or OmegaConf.is_missing(model, key) or model.get(key) is None
        if unset:
            extra.append(f"model.{key}={NO_FILE}" if key == "llama_model" else f"model.{key}=null")
    return [*options, *extra]


# ------------------------------------------------------------------------------------------ LLM architecture
def llm_config_for(model_cfg: Any, llm_arch: Optional[str]) -> Tuple[Any, str]:
    """The transformers config of the LLM and where it came from (``--llm-arch``, the folder, or the table)."""
    from transformers import AutoConfig, LlamaConfig

    if llm_arch:
        if llm_arch not in LLM_ARCHS:
            raise MemoryPlanError(f"--llm-arch {llm_arch!r} is not one of {', '.join(LLM_ARCHS)}")
        return LlamaConfig(**LLM_ARCHS[llm_arch], tie_word_embeddings=False), f"--llm-arch {llm_arch} (built-in table)"
    value = model_cfg.get("llama_model") if not _missing(model_cfg, "llama_model") else None
    value = None if value == NO_FILE else value
    path = Path(str(value)).expanduser() if value else None
    if path is not None and path.suffix == ".gguf" and path.is_file():
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name), f"{path} (GGUF header)"
    if path is not None and (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path)), f"{path / 'config.json'}"
    arch = DEFAULT_ARCH.get(str(model_cfg.get("model_type")), FALLBACK_ARCH)
    reason = "model.llama_model is not set" if path is None else f"{path} has no config.json"
    return (LlamaConfig(**LLM_ARCHS[arch], tie_word_embeddings=False),
            f"built-in {arch} table ({reason}; choose another with --llm-arch)")


def _missing(section: Any, key: str) -> bool:
    from omegaconf import OmegaConf

    return bool(OmegaConf.is_missing(section, key)) if hasattr(section, "_get_node") else section.get(key) is None


# ------------------------------------------------------------------------------------------ weights
def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _quantized_linear_names(llm: nn.Module) -> set:
    """Weights bitsandbytes would quantize: every frozen ``nn.Linear`` of the LLM except the output head."""
    names = set()
    for name, module in llm.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head") and not module.weight.requires_grad:
            names.add(f"{name}.weight")
    return names


def weight_bytes(model: nn.Module, quantization: str, lora: bool, storage: Dict[str, str]) -> Dict[str, float]:
    """Bytes of the parameters by kind: ``trainable fp32``, ``<dtype> frozen``, ``<kind> quantized``."""
    from minigpt4.models.llm import quantized_bytes_per_param

    quantized = _quantized_linear_names(model.llama_model) if quantization != "none" else set()
    kbit_rest = "fp32" if (quantization != "none" and lora) else storage["llm"]  # k-bit preparation casts to fp32
    out: Dict[str, float] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key, size = "trainable fp32", 4.0
        elif name.startswith("llama_model.") and name[len("llama_model."):] in quantized:
            key, size = f"LLM {quantization} (bitsandbytes)", quantized_bytes_per_param(quantization)
        elif name.startswith("llama_model."):
            dtype = kbit_rest if quantization != "none" else storage["llm"]
            key, size = f"LLM frozen {dtype}", float(_itemsize(DTYPES[dtype]))
        else:
            key, size = f"vision frozen {storage['vit']}", float(_itemsize(DTYPES[storage["vit"]]))
        out[key] = out.get(key, 0.0) + param.numel() * size
    return out


def autocast_copy_bytes(model: nn.Module, policy: PrecisionPolicy, quantization: str,
                        storage: Dict[str, str]) -> float:
    """Bytes of the compute-dtype copies autocast makes of weights stored in another dtype (e.g. fp32 weights
    under bf16 autocast). Each linear layer's copy is kept for the backward pass (the input gradient needs it), so
    they all live at once; bitsandbytes layers dequantize per call and keep none. Independent of the batch."""
    if not policy.uses_autocast:
        return 0.0
    compute = _itemsize(policy.dtype)
    quantized = _quantized_linear_names(model.llama_model) if quantization != "none" else set()
    total = 0.0
    for prefix, module in (("llama_model", model.llama_model), ("visual_encoder", model.visual_encoder),
                           ("llama_proj", model.llama_proj)):
        for name, sub in module.named_modules():
            if not isinstance(sub, nn.Linear) or name + ".weight" in quantized:
                continue
            trainable = sub.weight.requires_grad
            dtype = "fp32" if trainable else (storage["llm"] if prefix == "llama_model" else storage["vit"])
            if quantization != "none" and prefix == "llama_model" and not trainable and int(model.cfg.lora_r) > 0:
                dtype = "fp32"  # k-bit preparation cast the rest of the LLM to fp32
            if _itemsize(DTYPES[dtype]) != compute:
                total += sub.weight.numel() * compute
    return total


# ------------------------------------------------------------------------------------------ activations
@dataclass
class Shapes:
    """What the activation estimate needs to know about the LLM and the run."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    lora_modules: Dict[str, int]  # target module name -> its input width
    lora_r: int
    lora_dropout: float
    compute_bytes: int  # 2 under bf16/fp16 autocast, 4 in fp32
    residual_bytes: int  # dtype of the residual stream (the LLM's storage dtype, fp32 under k-bit + LoRA)


def llm_layer_bytes_per_token(s: Shapes) -> float:
    """Bytes autograd keeps per token in one LLaMA decoder layer (frozen base, LoRA on ``lora_modules``).

    Frozen linear layers keep no input (their weight gradient is not needed), so what stays is: the residual
    stream twice (after attention and the layer output) and the normalised hidden states of both RMSNorms (fp32
    statistics plus the normalised copy), the projected q, k, v and the attention output with its log-sum-exp,
    the MLP's gate, up and activation outputs, and for each LoRA module the (dropped-out) input and the rank-r
    middle; dropout masks are one byte per element.
    """
    c, res = s.compute_bytes, s.residual_bytes
    head_dim = s.hidden // s.heads
    attention = c * (s.hidden + 2 * s.kv_heads * head_dim + s.hidden) + 4 * s.heads  # q, k, v, output, lse
    mlp = c * 3 * s.intermediate  # gate, up, act(gate)
    norms = 2 * (4 + res * s.hidden)  # rsqrt statistic + normalised hidden, for both norms
    residual = 2 * res * s.hidden
    lora = 0.0
    for width in s.lora_modules.values():
        lora += c * (width + s.lora_r) + (width if s.lora_dropout > 0 else 0)
    return attention + mlp + norms + residual + lora


def logits_bytes_per_token(s: Shapes) -> float:
    """The loss's peak over the vocabulary: the saved fp32 log-softmax, and when backward starts the fp32 gradients
    with respect to the log-probabilities and to the logits (in the forward, logits + fp32 copy + log-softmax is
    no more than that)."""
    return s.vocab * (4 + 4 + 4)


def vit_bytes_per_image(vit_cfg: Any, image_size: int, compute_bytes: int, trainable: bool) -> float:
    """Bytes a vision tower keeps per image: nothing when frozen (no gradient flows into it); when trained, per
    block and token the two LayerNorm inputs and outputs, q/k/v, attention output, MLP hidden before and after
    GELU, the block output."""
    if not trainable:
        return 0.0
    tokens = (image_size // int(vit_cfg.patch_size)) ** 2 + 1
    e = int(vit_cfg.embed_dim)
    m = int(e * float(vit_cfg.mlp_ratio))
    per_token = compute_bytes * (3 * e + e + 2 * m + e) + 4 * (2 * e + 2 * e) + 4 * int(vit_cfg.num_heads)
    return float(int(vit_cfg.depth) * tokens * per_token)


@dataclass
class Plan:
    """The planner's figures (bytes) for one configuration."""

    batch_size: int
    seq_len: int
    image_tokens: int
    precision: str
    quantization: str
    llm_source: str
    weights: Dict[str, float]
    trainable_params: int
    gradients: float
    optimizer: float
    activations: float
    activations_checkpointed: float
    checkpointing_on: bool
    cast_copies: float = 0.0  # autocast's compute-dtype copies of weights stored in another dtype
    notes: List[str] = field(default_factory=list)

    @property
    def weights_total(self) -> float:
        return sum(self.weights.values())

    def total(self, checkpointed: Optional[bool] = None) -> float:
        """Peak of a training step: weights + gradients + optimizer state + activations."""
        ckpt = self.checkpointing_on if checkpointed is None else checkpointed
        act = self.activations_checkpointed if ckpt else self.activations
        return self.weights_total + self.cast_copies + self.gradients + self.optimizer + act


def _shapes(llm_config: Any, model_cfg: Any, policy: PrecisionPolicy, storage_llm: str, quantization: str) -> Shapes:
    hidden = int(llm_config.hidden_size)
    heads = int(llm_config.num_attention_heads)
    kv = int(getattr(llm_config, "num_key_value_heads", None) or heads)
    head_dim = hidden // heads
    widths = {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": hidden, "gate_proj": hidden,
              "up_proj": hidden, "down_proj": int(llm_config.intermediate_size)}
    lora_r = int(model_cfg.lora_r)
    targets = list(model_cfg.lora_target_modules) if lora_r > 0 else []
    unknown = [t for t in targets if t not in widths]
    if unknown:
        raise MemoryPlanError(f"model.lora_target_modules: {unknown} are not LLaMA projections "
                              f"({', '.join(widths)})")
    del head_dim
    compute = _itemsize(policy.dtype) if policy.uses_autocast else _itemsize(DTYPES[storage_llm])
    kbit_lora = quantization != "none" and lora_r > 0
    residual = 4 if kbit_lora else _itemsize(DTYPES[storage_llm])
    return Shapes(hidden=hidden, layers=int(llm_config.num_hidden_layers), heads=heads, kv_heads=kv,
                  intermediate=int(llm_config.intermediate_size), vocab=int(llm_config.vocab_size),
                  lora_modules={t: widths[t] for t in targets}, lora_r=lora_r,
                  lora_dropout=float(model_cfg.lora_dropout), compute_bytes=compute, residual_bytes=residual)


def activation_bytes(s: Shapes, model: Any, model_cfg: Any, batch: int, seq_len: int) -> Tuple[float, float]:
    """(without, with) LLM activation checkpointing, for ``batch`` sequences of ``seq_len`` tokens."""
    tokens = batch * seq_len
    per_layer = llm_layer_bytes_per_token(s) * tokens
    head = logits_bytes_per_token(s) * tokens
    embeds = 4 * s.hidden * tokens  # the input embeddings (projection output merged in)
    trainable_vit = any(p.requires_grad for p in model.visual_encoder.parameters())
    vit = vit_bytes_per_image(model_cfg.vit_config, int(model_cfg.image_size), s.compute_bytes, trainable_vit) * batch
    proj_in = model.llama_proj.in_features
    projection = 4 * (proj_in + s.hidden) * batch * model.num_image_tokens
    rest = head + embeds + vit + projection
    full = s.layers * per_layer + rest
    checkpointed = s.layers * s.residual_bytes * s.hidden * tokens + per_layer + rest
    return full, checkpointed


# ------------------------------------------------------------------------------------------ the plan
def resolve_policy(cfg: Any, device: str, precision: Optional[str]) -> Tuple[PrecisionPolicy, str]:
    """The run's policy on ``device`` (``auto`` on CUDA is taken as bf16 when no GPU is here to ask)."""
    run = getattr(cfg, "run", None)
    requested = precision or (str(run.get("precision", "auto")) if run is not None else "auto")
    amp = True if run is None else bool(run.get("amp", True))
    if device == "cuda" and not torch.cuda.is_available():
        name = "fp32" if not amp else ("bf16" if requested == "auto" else requested)
        note = "auto -> bf16 (assumed: a GPU with bf16; --precision fp16 for older cards)" if requested == "auto" else ""
        if name not in DTYPES:
            raise MemoryPlanError(f"--precision {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return PrecisionPolicy(name, "cuda"), note
    try:
        return PrecisionPolicy(resolve_precision_name(requested, torch.device(device), amp), device), ""
    except ValueError as err:
        raise MemoryPlanError(str(err)) from None


def plan(cfg: Any, batch_size: int, max_len: Optional[int], device: str = "cuda", precision: Optional[str] = None,
         llm_arch: Optional[str] = None) -> Plan:
    """The memory plan of ``cfg`` (a loaded config with ``model`` and optionally ``run``)."""
    from minigpt4.common.registry import registry
    from minigpt4.models.llm import resolve_quantization

    if batch_size < 1:
        raise MemoryPlanError(f"--batch-size {batch_size}: must be at least 1")
    cls = registry.get_model_class(cfg.model.arch)
    model_cfg = cls.typed_config(cfg.model)
    policy, note = resolve_policy(cfg, device, precision)
    storage = apply_frozen_storage(model_cfg, policy)
    quantization = resolve_quantization(model_cfg.get("llm_quantization"), bool(model_cfg.low_resource))
    llm_config, source = llm_config_for(model_cfg, llm_arch)
    model = cls.build_on_meta(model_cfg, llm_config)
    shapes = _shapes(llm_config, model_cfg, policy, storage.llm, quantization)
    text = int(model_cfg.max_txt_len) if max_len is None else int(max_len)
    if text < 1:
        raise MemoryPlanError(f"--max-len {text}: must be at least 1 text token")
    seq_len = model.num_image_tokens + text
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    full, ckpt = activation_bytes(shapes, model, model_cfg, batch_size, seq_len)
    weights = weight_bytes(model, quantization, int(model_cfg.lora_r) > 0, {"llm": storage.llm, "vit": storage.vit})
    notes = [n for n in (note,) if n]
    return Plan(batch_size=batch_size, seq_len=seq_len, image_tokens=model.num_image_tokens, precision=str(policy),
                quantization=quantization, llm_source=source, weights=weights, trainable_params=trainable,
                gradients=4.0 * trainable, optimizer=8.0 * trainable, activations=full,
                activations_checkpointed=ckpt, checkpointing_on=bool(model_cfg.use_grad_checkpoint_llm),
                cast_copies=autocast_copy_bytes(model, policy, quantization, {"llm": storage.llm, "vit": storage.vit}),
                notes=notes)


def largest_batch(p: Plan, gpu_bytes: float, checkpointed: bool) -> int:
    """The largest batch (at ``p``'s sequence length) whose planned peak fits ``gpu_bytes``; 0 when none does.

    Activations are linear in the batch; weights, gradients and optimizer state are not."""
    fixed = p.weights_total + p.cast_copies + p.gradients + p.optimizer
    per_sample = (p.activations_checkpointed if checkpointed else p.activations) / p.batch_size
    if fixed + per_sample > gpu_bytes:
        return 0
    return int(math.floor((gpu_bytes - fixed) / per_sample))


# ------------------------------------------------------------------------------------------ command line
def _gib(value: float) -> str:
    return f"{value / GIB:8.2f} GiB"


def render(p: Plan, fits: Optional[Dict[str, int]] = None, gpu_gb: Optional[float] = None) -> str:
    """The plan as the table the command prints."""
    lines = [f"LLM architecture: {p.llm_source}",
             f"precision: {p.precision}; LLM quantization: {p.quantization}",
             f"batch {p.batch_size} x {p.seq_len} tokens ({p.image_tokens} image + {p.seq_len - p.image_tokens} text)",
             "weights:"]
    lines += [f"  {name:<28}{_gib(size)}" for name, size in sorted(p.weights.items())]
    lines += [f"  {'total':<28}{_gib(p.weights_total)}",
              f"trainable parameters: {p.trainable_params:,}",
              f"autocast weight copies        {_gib(p.cast_copies)}",
              f"gradients (fp32)              {_gib(p.gradients)}",
              f"optimizer (AdamW m+v fp32)    {_gib(p.optimizer)}",
              f"activations                   {_gib(p.activations)}",
              f"activations, LLM checkpointed {_gib(p.activations_checkpointed)}",
              f"peak of a training step       {_gib(p.total(False))}  (with LLM activation checkpointing: "
              f"{p.total(True) / GIB:.2f} GiB; the config has it {'on' if p.checkpointing_on else 'off'})"]
    if fits is not None and gpu_gb is not None:
        lines.append(f"largest batch on {gpu_gb:g} GiB at {p.seq_len} tokens: {fits['plain']} "
                     f"(with LLM activation checkpointing: {fits['checkpointed']})")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def _default_batch(cfg: Any) -> int:
    sizes = [int(d.get("batch_size", 1)) for d in (getattr(cfg, "datasets", None) or {}).values()
             if hasattr(d, "get")]
    return max(sizes) if sizes else 1


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.tools.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--cfg-path", required=True, help="training YAML")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the config's)")
    parser.add_argument("--max-len", type=int, default=None, help="text tokens per sequence (default: "
                        "model.max_txt_len); image tokens are added")
    parser.add_argument("--gpu-gb", type=float, default=None, help="memory of one GPU in GiB: print the largest batch")
    parser.add_argument("--llm-arch", choices=sorted(LLM_ARCHS), default=None,
                        help="LLM dimensions from the built-in table instead of model.llama_model's config.json")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where training runs (precision)")
    parser.add_argument("--precision", choices=["auto", *DTYPES], default=None, help="instead of run.precision")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--options", nargs="+", default=[], help="config overrides key=value")
    return parser.parse_args(argv)


@entry_point("python -m minigpt4.tools.memory")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the memory plan of a training config."""
    import minigpt4  # noqa: F401  (registers the models)
    from minigpt4.common.config import load_config

    args = parse_args(argv)
    if args.gpu_gb is not None and args.gpu_gb <= 0:
        raise MemoryPlanError(f"--gpu-gb {args.gpu_gb:g}: must be positive")
    options = fill_unset_paths(args.cfg_path, args.options)
    cfg = load_config(args.cfg_path, options, check_paths=False, check_dataset_paths=False, checkpoint_config=False)
    batch = args.batch_size if args.batch_size is not None else _default_batch(cfg)
    kwargs = dict(max_len=args.max_len, device=args.device, precision=args.precision, llm_arch=args.llm_arch)
    result = plan(cfg, batch, **kwargs)
    fits = None
    if args.gpu_gb is not None:
        fits = {"plain": largest_batch(result, args.gpu_gb * GIB, False),
                "checkpointed": largest_batch(result, args.gpu_gb * GIB, True)}
    if args.json:
        print(json.dumps({**asdict(result), "total": result.total(False), "total_checkpointed": result.total(True),
                          "largest_batch": fits}, indent=1))
    else:
        print(render(result, fits, args.gpu_gb))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
