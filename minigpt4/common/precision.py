"""The one precision policy of a run: autocast dtype, GradScaler, and the storage dtype of frozen weights.

Training (the runner and the train loop), chat and evaluation all take their policy from the config's
``run.precision`` (``auto`` | ``bf16`` | ``fp16`` | ``fp32``) and ``run.amp`` through
:func:`policy_from_run_config`; the model never opens an autocast of its own. ``auto`` means bf16 on a CUDA device
that supports it, fp16 (with a GradScaler) on other CUDA devices, and fp32 on CPU. A GradScaler exists exactly
for fp16. ``run.amp: False`` (upstream's switch) means fp32.

Storage of frozen weights. Upstream's model keys ``llm_precision`` and ``vit_precision`` are still read, but they
no longer choose a compute dtype; they only say whether the frozen LLM and the frozen vision tower are *stored* in
half precision or in fp32 (:func:`storage_precision`):

* ``fp32`` keeps fp32 storage under any policy (e.g. the CPU demo: bf16 autocast over fp32 weights);
* ``fp16`` or ``bf16`` means "half precision, in the run's compute dtype": bf16 under bf16 autocast (fp16 storage
  under bf16 compute would lose precision for nothing), fp16 under fp16 autocast, and fp32 when the run computes
  in fp32 (half weights cannot run without autocast);
* a trainable vision tower (``freeze_vit: False``) is stored in fp32, as upstream, and so is a fully trained LLM
  (``freeze_llm: False``); trainable parameters (the projection, LoRA, a trainable tower) are always fp32 (the
  runner casts them).

:func:`configure_model_precision` applies that rule: given a config and the device, it returns the policy and
rewrites ``model.llm_precision`` / ``model.vit_precision`` to the storage they resolve to (with a note in the log
when a value changes), so the model loads its frozen weights in the dtype the policy computes in and the saved
config records what was used. The task calls it before building the model; the chat factory and the evaluation
tools call it too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import torch

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: resolved precision names and their torch dtypes
DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: the values ``run.precision`` accepts
REQUESTS = ("auto", *DTYPES)
#: upstream's model keys that now only choose the storage of frozen weights
MODEL_PRECISION_KEYS = ("llm_precision", "vit_precision")


def resolve_precision_name(requested: str, device: torch.device, amp: bool = True) -> str:
    """``requested`` (``auto``/``bf16``/``fp16``/``fp32``) resolved for ``device``; ``amp=False`` means fp32.

    An explicit ``bf16`` on a CUDA device without bf16 support is an error (autocast would fail there).
    """
    requested = str(requested)
    if requested not in REQUESTS:
        raise ValueError(f"run.precision={requested!r} is not one of {', '.join(REQUESTS)}")
    if not amp:
        return "fp32"
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if bf16_ok else "fp16"
        if requested == "bf16" and not bf16_ok:
            raise ValueError(f"run.precision=bf16 but {device} ({torch.cuda.get_device_name(device)}) does not "
                             "support bf16; set --options run.precision=auto (fp16 with a GradScaler here)")
        return requested
    return "fp32" if requested == "auto" else requested


@dataclass(frozen=True)
class PrecisionPolicy:
    """Autocast dtype on one device type, and whether gradients go through a GradScaler (fp16 only)."""

    name: str  # resolved: "bf16" | "fp16" | "fp32"
    device_type: str  # "cuda" | "cpu" | ...

    def __post_init__(self) -> None:
        if self.name not in DTYPES:
            raise ValueError(f"precision {self.name!r} is not one of {', '.join(DTYPES)} (resolve 'auto' first)")

    @property
    def dtype(self) -> torch.dtype:
        """The autocast (compute) dtype; float32 means no autocast."""
        return DTYPES[self.name]

    @property
    def uses_autocast(self) -> bool:
        """True for bf16 and fp16."""
        return self.name != "fp32"

    @property
    def uses_grad_scaler(self) -> bool:
        """True exactly for fp16: bf16 and fp32 have the range of fp32 and need no loss scaling."""
        return self.name == "fp16"

    def autocast(self) -> ContextManager[Any]:
        """A fresh autocast context of this policy (a null context for fp32)."""
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A GradScaler for fp16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.uses_grad_scaler else None

    def __str__(self) -> str:
        if not self.uses_autocast:
            return f"fp32 on {self.device_type} (no autocast, no GradScaler)"
        scaler = "with a GradScaler" if self.uses_grad_scaler else "no GradScaler"
        return f"{self.name} autocast on {self.device_type} ({scaler})"


def policy_from_run_config(run_cfg: Any, device: torch.device) -> PrecisionPolicy:
    """The policy of a ``run`` config section (``precision``, ``amp``) on ``device``.

    ``run_cfg`` may be None (a chat config without a ``run`` section): then ``auto`` applies.
    """
    requested = "auto" if run_cfg is None else str(run_cfg.get("precision", "auto"))
    amp = True if run_cfg is None else bool(run_cfg.get("amp", True))
    if not amp and requested not in ("auto", "fp32"):
        logger.warning("run.amp is False: computing in fp32 (run.precision=%s ignored)", requested)
    return PrecisionPolicy(resolve_precision_name(requested, device, amp), device.type)


# ---------------------------------------------------------------------------------------- frozen-weight storage
def storage_precision(requested: str, policy: PrecisionPolicy) -> str:
    """Storage dtype name of frozen weights whose upstream key (``llm_precision``/``vit_precision``) says
    ``requested``: fp32 stays fp32; a half value follows the policy's half dtype (fp32 when it computes in fp32)."""
    requested = str(requested)
    if requested not in DTYPES:
        raise ValueError(f"precision key value {requested!r} is not one of {', '.join(DTYPES)}")
    if requested == "fp32" or not policy.uses_autocast:
        return "fp32"
    return policy.name


@dataclass(frozen=True)
class FrozenStorage:
    """Storage dtype names of the frozen LLM and the vision tower under one policy."""

    llm: str
    vit: str
    llm_quant: str = "none"  # ``8bit`` / ``4bit``: the LLM's linear layers are int8 / NF4, the rest in ``llm``

    def __str__(self) -> str:
        kind = {"8bit": "int8", "4bit": "nf4"}.get(self.llm_quant)
        llm = f"{kind} + {self.llm}" if kind else self.llm
        return f"LLM {llm}, vision tower {self.vit}"


def frozen_storage(model_cfg: Any, policy: PrecisionPolicy) -> FrozenStorage:
    """The storage of a model section's frozen weights under ``policy`` (see the module docstring)."""
    trainable_llm = not bool(_get(model_cfg, "freeze_llm", True))  # a full fine-tune: fp32 master weights
    llm = "fp32" if trainable_llm else storage_precision(_get(model_cfg, "llm_precision", "fp16"), policy)
    trainable_vit = not bool(_get(model_cfg, "freeze_vit", True))
    vit = "fp32" if trainable_vit else storage_precision(_get(model_cfg, "vit_precision", "fp16"), policy)
    from minigpt4.models.llm import resolve_quantization  # a model-side rule; imported late (no import cycle)

    quant = resolve_quantization(_get(model_cfg, "llm_quantization", None),
                                 bool(_get(model_cfg, "low_resource", False)))
    return FrozenStorage(llm=llm, vit=vit, llm_quant=quant)


def apply_frozen_storage(model_cfg: Any, policy: PrecisionPolicy) -> FrozenStorage:
    """Rewrite ``model_cfg.llm_precision`` / ``vit_precision`` to the storage ``policy`` implies; log each change."""
    storage = frozen_storage(model_cfg, policy)
    for key, value in (("llm_precision", storage.llm), ("vit_precision", storage.vit)):
        before = str(_get(model_cfg, key, "fp16"))
        if before != value:
            logger.info("model.%s=%s (upstream key) now only sets the storage of frozen weights: stored in %s under "
                        "%s", key, before, value, policy)
        model_cfg[key] = value
    return storage


def configure_model_precision(cfg: Any, device: torch.device) -> PrecisionPolicy:
    """The run's policy on ``device``; ``cfg.model``'s precision keys rewritten to their storage (logged once).

    Call it before the model is built (the task, the chat factory and the evaluation tools do).
    """
    policy = policy_from_run_config(_get(cfg, "run", None), device)
    storage = apply_frozen_storage(cfg.model, policy)
    logger.info("frozen weights stored as: %s (compute: %s); trainable weights fp32", storage, policy)
    return policy


def _get(section: Any, key: str, default: Any) -> Any:
    """``section[key]`` for a DictConfig, dict or attribute object; ``default`` when absent or None."""
    if section is None:
        return default
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value
