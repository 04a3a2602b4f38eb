"""Learning-rate schedules (upstream MiniGPT-4 formulas) and AdamW parameter groups.

Both schedulers are registered under upstream's names and keep upstream's arithmetic, quirks included:

* ``linear_warmup_cosine_lr``: with ``t = cur_epoch * iters_per_epoch + cur_step``, while ``t < warmup_steps``
  the rate ramps linearly from ``warmup_start_lr`` to ``init_lr`` using the step *within the epoch*
  (``cur_step``, not ``t``: a warmup longer than an epoch starts again from ``warmup_start_lr`` at the next
  epoch); afterwards it follows a cosine from ``init_lr`` to ``min_lr`` measured over the *whole run*
  (``t / (max_epoch * iters_per_epoch)``), so the cosine does not restart after warmup.
* ``linear_warmup_step_lr``: epoch 0 warms up the same way; epoch ``e >= 1`` uses
  ``max(min_lr, init_lr * decay_rate ** e)``. Upstream crashed when ``lr_decay_rate`` was unset; here an
  unset rate means 1.0 (constant ``init_lr`` after epoch 0).

``warmup_start_lr < 0`` means "start at ``init_lr``" (no warmup ramp), as upstream.

Weight decay: parameters with fewer than two dimensions (biases, norm scales, scalars) or whose name ends in
``bias`` get no weight decay; all other trainable parameters get ``weight_decay``. Upstream also matched
any name *containing* ``"ln"`` or ``"bn"``, which could catch unrelated 2-D weights by accident; every norm
weight is 1-D, so the ``ndim`` rule covers what that heuristic was for.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry

logger = get_logger(__name__)


# ----------------------------------------------------------------------------------- formulas


def warmup_lr(step: int, warmup_steps: int, warmup_start_lr: float, init_lr: float) -> float:
    """Linear ramp from ``warmup_start_lr`` to ``init_lr`` over ``warmup_steps``, capped at ``init_lr``."""
    return min(init_lr, warmup_start_lr + (init_lr - warmup_start_lr) * step / max(warmup_steps, 1))


def cosine_lr(t: int, total: int, init_lr: float, min_lr: float) -> float:
    """Half-cosine from ``init_lr`` at ``t = 0`` to ``min_lr`` at ``t = total``."""
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / total)) + min_lr


def step_lr(epoch: int, init_lr: float, min_lr: float, decay_rate: float) -> float:
    """Exponential decay per epoch, floored at ``min_lr``."""
    return max(min_lr, init_lr * decay_rate**epoch)


# --------------------------------------------------------------------------------- schedulers


class _EpochStepScheduler(abc.ABC):
    """Shared part: sets the rate of every param group from ``(cur_epoch, cur_step)``; stateless otherwise."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_epoch: int,
        iters_per_epoch: int,
        min_lr: float,
        init_lr: float,
        warmup_steps: int,
        warmup_start_lr: float,
        decay_rate: Optional[float] = None,
    ) -> None:
        if max_epoch < 1 or iters_per_epoch < 1:
            raise ValueError(f"LR schedule needs max_epoch >= 1 and iters_per_epoch >= 1, got {max_epoch}, "
                             f"{iters_per_epoch} (run.max_epoch / run.iters_per_epoch)")
        self.optimizer = optimizer
        self.max_epoch = max_epoch
        self.iters_per_epoch = iters_per_epoch
        self.min_lr = min_lr
        self.init_lr = init_lr
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = warmup_start_lr if warmup_start_lr >= 0 else init_lr
        self.decay_rate = 1.0 if decay_rate is None else decay_rate
        self.last_position: Tuple[int, int] = (-1, -1)

    @abc.abstractmethod
    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        """The rate for iteration ``cur_step`` of epoch ``cur_epoch`` (0-based)."""

    def step(self, cur_epoch: int, cur_step: int) -> float:
        """Set the rate of every param group for this iteration; returns it."""
        lr = self.lr_at(cur_epoch, cur_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # run.lr_scale multipliers (FaceGPT)
        self.last_position = (cur_epoch, cur_step)
        return lr

    def state_dict(self) -> Dict[str, Any]:
        """The schedule is a pure function of the position; only the last position is recorded."""
        return {"last_epoch": self.last_position[0], "last_step": self.last_position[1]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_position = (int(state["last_epoch"]), int(state["last_step"]))


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(_EpochStepScheduler):
    """Upstream's default: linear warmup (in-epoch step), then cosine over the whole run."""

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        t = cur_epoch * self.iters_per_epoch + cur_step
        if t < self.warmup_steps:
            return warmup_lr(cur_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return cosine_lr(t, self.max_epoch * self.iters_per_epoch, self.init_lr, self.min_lr)


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(_EpochStepScheduler):
    """Linear warmup during epoch 0, then ``init_lr * decay_rate ** epoch`` (floored at ``min_lr``)."""

    def lr_at(self, cur_epoch: int, cur_step: int) -> float:
        if cur_epoch == 0:
            return warmup_lr(cur_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return step_lr(cur_epoch, self.init_lr, self.min_lr, self.decay_rate)


def build_lr_scheduler(run_cfg: Any, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> _EpochStepScheduler:
    """The scheduler named by ``run.lr_sched``, configured from the ``run`` section."""
    cls = registry.get_lr_scheduler_class(run_cfg.lr_sched)
    return cls(
        optimizer,
        max_epoch=int(run_cfg.max_epoch),
        iters_per_epoch=int(iters_per_epoch),
        min_lr=float(run_cfg.min_lr),
        init_lr=float(run_cfg.init_lr),
        warmup_steps=int(run_cfg.warmup_steps),
        warmup_start_lr=float(run_cfg.warmup_lr),
        decay_rate=None if run_cfg.lr_decay_rate is None else float(run_cfg.lr_decay_rate),
    )


# -------------------------------------------------------------------------------- param groups


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases and every parameter with fewer than two dimensions (norm scales, scalars)."""
    return param.ndim < 2 or name.endswith("bias")


def _scale_of(name: str, lr_scale: Dict[str, float]) -> float:
    """The multiplier of the longest ``lr_scale`` prefix that names ``name``'s module (1.0 when none does)."""
    best, scale = -1, 1.0
    for prefix, value in lr_scale.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, scale = len(prefix), float(value)
    return scale


def param_groups(named_params: Iterable[Tuple[str, nn.Parameter]], weight_decay: float,
                 lr_scale: Optional[Dict[str, float]] = None) -> List[Dict[str, Any]]:
    """AdamW groups of the trainable parameters: ``[decayed, not decayed]`` (upstream's order), then the same pair
    for every learning-rate multiplier of ``lr_scale`` (module prefix → multiplier, ``run.lr_scale``).

    Each group carries a ``names`` list, so a checkpoint's optimizer state can be matched to parameters, and its
    ``lr_scale``, which the schedulers apply.
    """
    lr_scale = dict(lr_scale or {})
    buckets: Dict[Tuple[float, bool], Dict[str, List[Any]]] = {}
    used = set()
    for name, param in named_params:
        if not param.requires_grad:
            continue
        scale = _scale_of(name, lr_scale)
        used.update(p for p in lr_scale if name == p or name.startswith(p + "."))
        bucket = buckets.setdefault((scale, not no_weight_decay(name, param)), {"params": [], "names": []})
        bucket["params"].append(param)
        bucket["names"].append(name)
    unused = sorted(set(lr_scale) - used)
    if unused:
        raise ValueError(f"run.lr_scale names modules with no trainable parameters: {unused}; use module prefixes "
                         "such as visual_encoder, llama_proj or llama_model")
    groups = []
    for scale in [1.0] + sorted({s for s, _ in buckets} - {1.0}):
        for decayed in (True, False):
            bucket = buckets.get((scale, decayed), {"params": [], "names": []})
            if scale != 1.0 and not bucket["params"]:
                continue
            groups.append({"params": bucket["params"], "names": bucket["names"], "lr_scale": scale,
                           "decayed": decayed, "weight_decay": float(weight_decay) if decayed else 0.0})
    return groups


def build_optimizer(model: nn.Module, run_cfg: Any) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` (pass the unwrapped model, not the DDP wrapper)."""
    groups = param_groups(model.named_parameters(), run_cfg.weight_decay, dict(run_cfg.lr_scale or {}))
    n_decay = sum(p.numel() for g in groups if g["decayed"] for p in g["params"])
    n_plain = sum(p.numel() for g in groups if not g["decayed"] for p in g["params"])
    if n_decay + n_plain == 0:
        raise ValueError("the model has no trainable parameters (every requires_grad is False): nothing to train. "
                         "Check the model's freeze_* / lora_r settings.")
    logger.info("trainable parameters: %d (%d tensors with weight decay %.3g: %d values; %d without: %d values)",
                n_decay + n_plain, len(groups[0]["params"]), run_cfg.weight_decay, n_decay,
                len(groups[1]["params"]), n_plain)
    scaled: Dict[float, int] = {}
    for group in groups:
        if group["lr_scale"] != 1.0:
            scaled[group["lr_scale"]] = scaled.get(group["lr_scale"], 0) + len(group["params"])
    for scale, count in scaled.items():
        logger.info("learning rate x%g for %d tensors (run.lr_scale)", scale, count)
    for group in groups:
        for name in group["names"]:
            logger.debug("trainable: %s (weight_decay=%g, lr x%g)", name, group["weight_decay"], group["lr_scale"])
    return torch.optim.AdamW(groups, lr=float(run_cfg.init_lr), weight_decay=float(run_cfg.weight_decay),
                             betas=(0.9, float(run_cfg.beta2)))
