"""How close an fp32 tensor must come to upstream's recording.

The parity fixtures were recorded on one CPU; the same fp32 math on another CPU (AVX2 instead of AVX-512 GEMM
kernels, other blocking of the sums) rounds differently by a few units in the last place (ulp) at the tensor's
scale: on an AMD EPYC (AVX2) machine EVA's ``ln_vision_out`` (|x| up to 3.5) differs by 1.55e-6, 6.5 ulps. The
bound is therefore 1e-6 or 8 ulps at the reference's largest magnitude, whichever is larger. Real mistakes are
far outside it: a LayerNorm eps of 1e-5 instead of 1e-6 moves ``ln_vision_out`` by 2e-5 (over 10x the bound) and
the tanh GELU by ~1e-4.
"""

from __future__ import annotations

import math

import torch

BASE_ATOL = 1e-6
ULPS = 8


def fp32_tolerance(reference: torch.Tensor, base: float = BASE_ATOL, ulps: int = ULPS) -> float:
    """``max(base, ulps * ulp(max |reference|))`` with the fp32 ulp (2**-23 relative to the power of two below)."""
    absmax = float(reference.detach().abs().max()) if reference.numel() else 0.0
    if absmax == 0.0:
        return base
    ulp = torch.finfo(torch.float32).eps * 2.0 ** math.floor(math.log2(absmax))
    return max(base, ulps * ulp)
