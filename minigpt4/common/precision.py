"""The one precision policy of a run: autocast dtype and whether a GradScaler exists.

Training (the runner and the train loop), chat and evaluation all take their policy from the config's
``run.precision`` (``auto`` | ``bf16`` | ``fp16`` | ``fp32``) through :func:`policy_from_run_config`; the model
never opens an autocast of its own. ``auto`` means bf16 on a CUDA device that supports it, fp16 (with a
GradScaler) on other CUDA devices, and fp32 on CPU. A GradScaler exists exactly for fp16.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import torch

#: resolved precision names and their torch dtypes
DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision_name(requested: str, device: torch.device, amp: bool = True) -> str:
    """``requested`` (``auto``/``bf16``/``fp16``/``fp32``) resolved for ``device``; ``amp=False`` means fp32."""
    requested = str(requested)
    if requested not in ("auto", *DTYPES):
        raise ValueError(f"run.precision={requested!r} is not one of auto, bf16, fp16, fp32")
    if not amp:
        return "fp32"
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@dataclass(frozen=True)
class PrecisionPolicy:
    """Autocast dtype on one device type, and whether gradients go through a GradScaler (fp16 only)."""

    name: str  # resolved: "bf16" | "fp16" | "fp32"
    device_type: str  # "cuda" | "cpu" | ...

    @property
    def dtype(self) -> torch.dtype:
        """The autocast (compute) dtype; float32 means no autocast."""
        return DTYPES[self.name]

    @property
    def uses_grad_scaler(self) -> bool:
        """True exactly for fp16: bf16 and fp32 have the range of fp32 and need no loss scaling."""
        return self.name == "fp16"

    def autocast(self) -> ContextManager[Any]:
        """A fresh autocast context of this policy (a null context for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A GradScaler for fp16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.uses_grad_scaler else None

    def __str__(self) -> str:
        scaler = " + GradScaler" if self.uses_grad_scaler else ""
        return f"{self.name} autocast on {self.device_type}{scaler}" if self.name != "fp32" else \
            f"fp32 on {self.device_type} (no autocast)"


def policy_from_run_config(run_cfg: Any, device: torch.device) -> PrecisionPolicy:
    """The policy of a ``run`` config section (``precision``, ``amp``) on ``device``.

    ``run_cfg`` may be None (a chat config without a ``run`` section): then ``auto`` applies.
    """
    requested = "auto" if run_cfg is None else str(run_cfg.get("precision", "auto"))
    amp = True if run_cfg is None else bool(run_cfg.get("amp", True))
    return PrecisionPolicy(resolve_precision_name(requested, device, amp), device.type)
