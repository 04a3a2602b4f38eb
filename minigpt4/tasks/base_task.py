"""The task: builds datasets and the model from a config, and runs the explicit inner training loop.

One epoch is ``iters_per_epoch`` iterations. Each iteration:

1. takes the next batch from the (mixing) loader and moves its tensors to the device;
2. sets the learning rate for ``(epoch, iteration)`` *before* the step (upstream's order);
3. runs ``model(samples)["loss"]`` under the run's precision policy (bf16 / fp16 autocast, or none for fp32;
   :mod:`minigpt4.common.precision`);
4. back-propagates ``loss / accum_grad_iters`` (``run.scale_loss_by_accum: False`` restores upstream's
   undivided loss), through the policy's GradScaler for fp16; under DDP, gradients are only all-reduced on the last
   micro-batch of an accumulation window (``no_sync``);
5. after every ``accum_grad_iters`` iterations (and at the last iteration of an epoch, so no gradient is carried
   into the next epoch): optional clipping to ``max_grad_norm``, optimizer step, ``zero_grad``.

A non-finite loss anywhere in a window (on any rank) skips that window's optimizer step: gradients are zeroed,
the skip is counted and logged, and ``max_nonfinite_steps`` skipped windows in a row stop the run with
:class:`NonFiniteLossError`.

A batch whose every image was skipped (missing, undecodable or outside the image root; the collater drops
skipped records, so batches shrink) is passed over: the iteration still counts (so an epoch never reaches into
the next pass and every record is used at most once per epoch), it is counted in ``skipped_batches``, and
``max_empty_batches`` such batches in a row stop the run with :class:`NoReadableImagesError`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from minigpt4.common.dist_utils import all_reduce_tensor, current_device
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import PrecisionPolicy, configure_model_precision
from minigpt4.common.registry import registry
from minigpt4.datasets.identity import HeldOutReport, hold_out_across_datasets

logger = get_logger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row were skipped because the loss was NaN or infinite."""


class NoReadableImagesError(ValueError):
    """``max_empty_batches`` batches in a row held no readable image (a data fault: reported as a user error)."""


@dataclass
class LoopCounters:
    """Running totals of one process (the runner sums them over ranks for the summary)."""

    samples_seen: int = 0
    skipped_images: int = 0
    optimizer_steps: int = 0
    nonfinite_steps: int = 0
    nonfinite_in_a_row: int = 0
    scaler_skipped_steps: int = 0
    skipped_batches: int = 0  # iterations whose batch was empty (every image skipped) on some rank
    empty_in_a_row: int = 0

    def as_dict(self) -> Dict[str, int]:
        return dict(self.__dict__)


@dataclass
class IterationInfo:
    """What happened in one iteration; handed to the runner's hook."""

    epoch: int
    step: int  # iterations completed in this epoch, counting this one (1-based)
    loss: float
    lr: float
    batch_size: int
    window_closed: bool  # this iteration ended an accumulation window
    grad_norm: Optional[float] = None  # set when an optimizer step was taken
    step_skipped: bool = False  # the window was skipped for a non-finite loss


@dataclass
class LoopContext:
    """Everything the inner loop needs; built by the runner."""

    model: nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    data_loader: Iterator[Dict[str, Any]]
    device: torch.device
    precision: PrecisionPolicy  # autocast of the forward; ``scaler`` must exist exactly when it says fp16
    iters_per_epoch: int
    accum_grad_iters: int = 1
    scale_loss_by_accum: bool = True
    max_grad_norm: Optional[float] = None
    max_nonfinite_steps: int = 20
    max_empty_batches: int = 200  # this many empty batches in a row: no image is readable, stop with a message
    scaler: Optional[Any] = None
    distributed: bool = False
    prepare: Callable[[Any], Any] = lambda samples: samples
    on_iteration: Callable[[IterationInfo], None] = lambda info: None
    counters: LoopCounters = field(default_factory=LoopCounters)

    def __post_init__(self) -> None:
        if (self.scaler is not None) != self.precision.uses_grad_scaler:
            given = "given" if self.scaler is not None else "not given"
            raise ValueError(f"precision {self.precision} but a GradScaler was {given}: use precision.grad_scaler()")


def _trainable(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def total_grad_norm(params: List[torch.Tensor], max_norm: Optional[float]) -> torch.Tensor:
    """L2 norm of all gradients; clips them to ``max_norm`` in place when it is set."""
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, float(max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class BaseTask:
    """Upstream's task interface (``setup_task``, ``build_model``, ``build_datasets``, ``train_step``,
    ``train_epoch``) with an explicit, documented inner loop."""

    def __init__(self) -> None:
        self.cfg: Any = None
        self.heldout_report: Optional[HeldOutReport] = None  # set by build_datasets

    @classmethod
    def setup_task(cls, cfg: Any = None, **kwargs: Any) -> "BaseTask":
        return cls()

    # ---------------------------------------------------------------------------- building
    def build_model(self, cfg: Any) -> nn.Module:
        """``registry.get_model_class(model.arch).from_config(model)``, frozen weights stored as the run's
        precision policy says (``model.llm_precision`` / ``vit_precision`` rewritten, see common/precision)."""
        self.cfg = cfg
        configure_model_precision(cfg, current_device(cfg.run))
        model_cls = registry.get_model_class(cfg.model.arch)
        return model_cls.from_config(cfg.model)

    def build_datasets(self, cfg: Any) -> Dict[str, Dict[str, Any]]:
        """``{dataset name: {split: dataset}}``: each ``datasets.<name>`` entry names a registered builder.

        After every builder has built its splits, the records whose image equals (by path, else by content) a
        held-out image of any dataset of the run are removed from every training split
        (:func:`~minigpt4.datasets.identity.hold_out_across_datasets`); what was removed is logged and kept in
        :attr:`heldout_report`.
        """
        self.cfg = cfg
        if not cfg.datasets:
            raise ValueError(f"{getattr(cfg, 'source', 'config')}: the datasets section is empty; name at least one "
                             f"registered dataset builder ({', '.join(registry.list_datasets())})")
        datasets: Dict[str, Dict[str, Any]] = {}
        for name, dataset_cfg in cfg.datasets.items():
            builder = registry.get_builder_class(name)(dataset_cfg)
            datasets[name] = builder.build_datasets()
        self.heldout_report = hold_out_across_datasets(datasets)
        for name, splits in datasets.items():
            sizes = ", ".join(f"{split}={len(ds)}" for split, ds in splits.items() if hasattr(ds, "__len__"))
            logger.info("dataset %s: %s", name, sizes or "(iterable)")
        return datasets

    # ------------------------------------------------------------------------------- steps
    def train_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        return model(samples)["loss"]

    def valid_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        return model(samples)["loss"]

    def backward(self, loss: torch.Tensor, ctx: LoopContext) -> None:
        """Back-propagate this micro-batch's share of the window's loss."""
        scaled = loss / ctx.accum_grad_iters if ctx.scale_loss_by_accum else loss
        if ctx.scaler is not None:
            ctx.scaler.scale(scaled).backward()
        else:
            scaled.backward()

    def optimizer_step(self, ctx: LoopContext, window_nonfinite: bool, where: str) -> Tuple[Optional[float], bool]:
        """Close an accumulation window; returns ``(grad_norm, skipped)``."""
        bad = window_nonfinite
        if ctx.distributed:  # every rank must take the same decision
            flag = torch.tensor([1.0 if bad else 0.0], device=ctx.device)
            bad = bool(all_reduce_tensor(flag, "max").item() > 0)
        norm: Optional[torch.Tensor] = None
        if not bad:
            if ctx.scaler is not None:
                ctx.scaler.unscale_(ctx.optimizer)
            norm = total_grad_norm(_trainable(ctx.optimizer), ctx.max_grad_norm)
            # fp16 overflow is the GradScaler's business (it skips and lowers the scale); otherwise skip here
            bad = ctx.scaler is None and not bool(torch.isfinite(norm))
        if bad:
            ctx.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(ctx, where)
            return None, True
        ctx.counters.nonfinite_in_a_row = 0
        if ctx.scaler is not None:
            scale_before = ctx.scaler.get_scale()
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
            if ctx.scaler.get_scale() < scale_before:
                ctx.counters.scaler_skipped_steps += 1
        else:
            ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.counters.optimizer_steps += 1
        return float(norm), False  # type: ignore[arg-type]

    def _count_nonfinite(self, ctx: LoopContext, where: str) -> None:
        ctx.counters.nonfinite_steps += 1
        ctx.counters.nonfinite_in_a_row += 1
        logger.warning("non-finite loss or gradient at %s: optimizer step skipped (%d in a row, %d in total)",
                       where, ctx.counters.nonfinite_in_a_row, ctx.counters.nonfinite_steps)
        if ctx.counters.nonfinite_in_a_row >= ctx.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{ctx.counters.nonfinite_in_a_row} optimizer steps in a row had a NaN/inf loss or gradient "
                f"(last at {where}); stopping (run.max_nonfinite_steps={ctx.max_nonfinite_steps}). Try a lower "
                "run.init_lr, run.precision=bf16 or fp32 instead of fp16, run.max_grad_norm=1.0, and check the "
                "data (answers masked away entirely, broken images) and the LLM weights.")

    # ---------------------------------------------------------------------------- the loop
    def train_epoch(self, epoch: int, ctx: LoopContext, start_step: int = 0) -> Dict[str, float]:
        """Iterations ``start_step .. iters_per_epoch - 1`` of ``epoch``; returns the epoch's mean loss and lr."""
        ctx.model.train()
        accum = max(1, int(ctx.accum_grad_iters))
        window_nonfinite, window_backwards = False, 0
        loss_sum, loss_n, lr = 0.0, 0, 0.0
        for i in range(start_step, ctx.iters_per_epoch):
            samples = ctx.prepare(next(ctx.data_loader))
            if isinstance(samples, dict):
                samples.update({"epoch": epoch, "num_iters_per_epoch": ctx.iters_per_epoch, "iters": i})
            lr = ctx.lr_scheduler.step(cur_epoch=epoch, cur_step=i)
            closes = (i + 1) % accum == 0 or i + 1 == ctx.iters_per_epoch
            where = f"epoch {epoch} iteration {i}"
            empty = self.batch_is_empty(ctx, samples, where)
            value = math.nan if empty else self._forward_backward(ctx, samples, closes)
            window_nonfinite |= not empty and not math.isfinite(value)
            window_backwards += not empty
            info = IterationInfo(epoch, i + 1, value, lr, 0 if empty else batch_size_of(samples), closes)
            if closes:
                if window_backwards and not (empty and ctx.distributed):
                    info.grad_norm, info.step_skipped = self.optimizer_step(ctx, window_nonfinite, where)
                elif window_backwards:  # DDP deferred this window's gradient sync to the (empty) last batch
                    ctx.optimizer.zero_grad(set_to_none=True)
                    logger.warning("%s: the accumulation window ended on an empty batch; its %d micro-batch(es) "
                                   "are dropped (their gradients were never synchronised across ranks)", where,
                                   window_backwards)
                window_nonfinite, window_backwards = False, 0
            if math.isfinite(value):
                loss_sum, loss_n = loss_sum + value, loss_n + 1
            ctx.counters.samples_seen += info.batch_size
            ctx.counters.skipped_images += skipped_count(samples)
            ctx.on_iteration(info)
        return {"loss": loss_sum / loss_n if loss_n else float("nan"), "lr": lr}

    def _forward_backward(self, ctx: LoopContext, samples: Any, closes: bool) -> float:
        """Forward and backward of one micro-batch (DDP gradient sync deferred inside a window); its loss."""
        no_sync = getattr(ctx.model, "no_sync", None)
        defer_sync = ctx.distributed and not closes and no_sync is not None
        sync_ctx = no_sync() if defer_sync else contextlib.nullcontext()
        with sync_ctx:
            with ctx.precision.autocast():
                loss = self.train_step(ctx.model, samples)
            self.backward(loss, ctx)
        return float(loss.detach().float().item())

    def batch_is_empty(self, ctx: LoopContext, samples: Any, where: str) -> bool:
        """Whether this iteration is passed over because a batch holds no sample (every image was skipped).

        Under DDP the ranks agree (one all-reduce): when any rank's batch is empty, every rank passes over the
        iteration, so all ranks run the same forward/backward calls and keep the same loader positions.
        """
        empty = batch_size_of(samples) == 0
        if ctx.distributed:
            flag = torch.tensor([1.0 if empty else 0.0], device=ctx.device)
            empty = bool(all_reduce_tensor(flag, "max").item() > 0)
        if not empty:
            ctx.counters.empty_in_a_row = 0
            return False
        ctx.counters.skipped_batches += 1
        ctx.counters.empty_in_a_row += 1
        if math.log10(ctx.counters.skipped_batches).is_integer():  # 1st, 10th, 100th, ...
            logger.warning("%s: every image of the batch was skipped (missing, undecodable or outside the image "
                           "root); iteration passed over (%d such batch(es) so far)", where,
                           ctx.counters.skipped_batches)
        if ctx.counters.empty_in_a_row >= ctx.max_empty_batches:
            raise NoReadableImagesError(
                f"{ctx.counters.empty_in_a_row} batches in a row had no readable image (last at {where}); stopping. "
                "Check datasets.<name>.build_info.image_path and the images (facegpt-data validate --root DIR).")
        return True

    @torch.no_grad()
    def validation_loss(self, model: nn.Module, loaders: Dict[str, Any], device: torch.device,
                        precision: PrecisionPolicy, prepare: Callable[[Any], Any],
                        max_batches: Optional[int] = None) -> Dict[str, Tuple[float, int]]:
        """Per dataset: ``(sum of per-batch loss x batch size, samples)`` on this rank (the runner reduces)."""
        was_training = model.training
        model.eval()
        out: Dict[str, Tuple[float, int]] = {}
        for name, loader in loaders.items():
            total, count = 0.0, 0
            for b, batch in enumerate(loader):
                if max_batches is not None and b >= max_batches:
                    break
                samples = prepare(batch)
                if batch_size_of(samples) == 0:  # every image of the batch was skipped
                    continue
                with precision.autocast():
                    loss = self.valid_step(model, samples)
                n = batch_size_of(samples)
                value = float(loss.float().item())
                if math.isfinite(value):
                    total, count = total + value * n, count + n
            out[name] = (total, count)
        model.train(was_training)
        return out

    def evaluation(self, model: nn.Module, data_loader: Any, cuda_enabled: bool = True) -> None:
        """Upstream's benchmark hook; the image-text tasks have none (validation loss is the runner's)."""
        return None


def skipped_count(samples: Any) -> int:
    """The batch's ``skipped`` total (records passed over for missing/broken images); 0 when absent."""
    value = samples.get("skipped", 0) if isinstance(samples, dict) else getattr(samples, "skipped", 0)
    if isinstance(value, torch.Tensor):
        return int(value.sum().item())
    if isinstance(value, (list, tuple)):
        return int(sum(value))
    return int(value or 0)


def batch_size_of(samples: Any) -> int:
    """Number of samples in a collated batch (length of its ``image`` tensor, else of its first list)."""
    if isinstance(samples, dict):
        image = samples.get("image")
        if isinstance(image, torch.Tensor):
            return int(image.shape[0])
        for value in samples.values():
            if isinstance(value, (torch.Tensor, list)) and len(value) > 0:
                return len(value)
    return 0
