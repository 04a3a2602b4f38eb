"""``runner_base``: DDP or FSDP, loaders, optimizer, epochs, validation, checkpoints, resume, what a researcher watches.

Upstream's constructor ``RunnerBase(cfg, task, model, datasets, job_id)`` and ``train()`` are kept. A run writes
into ``<output_dir>/<job_name>/<run_id>/`` (a relative ``output_dir`` is resolved against the current working
directory — upstream put it inside the installed package folder):

* ``config.yaml`` — the resolved config; ``train.log`` — the log of rank 0;
* ``heldout_report.json`` — what the cross-dataset held-out step removed from each training split
  (:mod:`minigpt4.datasets.identity`);
* ``checkpoint_<e>.pth`` / ``checkpoint_<e>_<iter>.pth`` + ``trainer_state_*.pt`` + ``checkpoint_latest.json``
  (see :mod:`minigpt4.runners.checkpointing`), ``checkpoint_best.pth`` (lowest validation loss);
* ``metrics.jsonl`` (one JSON line per logged step / validation), ``loss_curve.png``, ``tensorboard/``;
* ``summary.json`` — the end-of-run report (also logged).

``run.strategy`` chooses how torchrun's processes share the model: ``ddp`` (a replica per process) or ``fsdp``
(PyTorch FSDP2, :mod:`minigpt4.runners.fsdp`). Checkpoints and trainer states have the same form under both: FSDP
gathers the trainable weights and the optimizer state on rank 0 before writing, and shards them again on resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from minigpt4.common import dist_utils as du
from minigpt4.common.logger import get_logger
from minigpt4.common.metrics import (CURVE_FILE, SUMMARY_FILE, MetricsWriter, format_summary, peak_memory,
                                     plot_loss_curves, read_metrics, truncate_metrics)
from minigpt4.common.optims import build_lr_scheduler, build_optimizer
from minigpt4.common.precision import PrecisionPolicy, policy_from_run_config
from minigpt4.common.registry import registry
from minigpt4.common.checkpoint_io import read_weights
from minigpt4.runners import fsdp
from minigpt4.runners.checkpointing import (BEST, LATEST, RESUME_KEY, CheckpointManager, ResumeTarget,
                                            atomic_write_json, capture_rng, load_weights, resolve_resume, restore_rng)
from minigpt4.runners.loaders import (MixingLoader, ResumableLoader, batch_collater, mix_seed, move_to_device,
                                      validation_loader)
from minigpt4.runners.progress import Progress, WindowMeter
from minigpt4.runners.settings import RunConfigError, check_run_settings, output_root
from minigpt4.tasks.base_task import LoopContext, LoopCounters

logger = get_logger(__name__)
TRAINER_STATE_FORMAT = 1


@registry.register_runner("runner_base")
class RunnerBase:
    """Trains ``model`` on ``datasets`` as configured by ``cfg.run``; ``train()`` returns the run summary."""

    def __init__(self, cfg: Any, task: Any, model: nn.Module, datasets: Dict[str, Dict[str, Any]],
                 job_id: str) -> None:
        self.config, self.run_cfg, self.task, self.datasets, self.job_id = cfg, cfg.run, task, datasets, job_id
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.device = du.current_device(self.run_cfg)
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.use_distributed = du.is_dist_avail_and_initialized()
        self.is_main = self.rank == 0
        # the one precision policy of the run: autocast of training and validation, and the GradScaler (fp16)
        self.policy: PrecisionPolicy = policy_from_run_config(self.run_cfg, self.device)
        self.precision = self.policy.name
        check_run_settings(self.run_cfg)
        self.sharded = str(self.run_cfg.strategy) == "fsdp" and self.use_distributed
        if str(self.run_cfg.strategy) == "fsdp" and not self.use_distributed:
            logger.warning("run.strategy=fsdp in ONE process: nothing to shard, training unsharded. Start it with "
                           "`torchrun --nproc_per_node N train.py ...` to shard the model over N processes.")
        self.unwrapped_model = self._prepare_model(model)
        # FSDP shards in _setup, after resume weights are loaded into the full model (DDP wraps now, as before)
        self.model = self.unwrapped_model if self.sharded else self._wrap(self.unwrapped_model)
        self.counters = LoopCounters()
        self.best_val_loss = math.inf
        self.last_val_loss: Optional[float] = None
        self.resumed_from: Optional[str] = None
        self._pending_rng: Optional[Dict[str, Any]] = None
        self._meter = WindowMeter()
        self._progress: Optional[Progress] = None
        self._file_handler: Optional[logging.Handler] = None
        self._saved_log_level = logging.NOTSET
        self._last_grad_norm: Optional[float] = None

    # ------------------------------------------------------------------------------ setup
    def _prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device and keep every trainable weight in fp32 (upstream issue #213)."""
        model = model.to(self.device)
        cast = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
        for name, param in model.named_parameters():
            if name in cast:
                param.data = param.data.float()
        if cast:
            logger.info("cast %d trainable tensors to fp32 (e.g. %s)", len(cast), cast[0])
        return model

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.use_distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids,
                                       find_unused_parameters=bool(self.run_cfg.find_unused_parameters))

    def _setup(self) -> None:
        """Run folder, loaders, optimizer, scheduler, scaler, sinks; then restore a checkpoint if asked."""
        target, self.run_dir = self._choose_run_dir()
        self._open_log_file()
        self.ckpt = CheckpointManager(self.run_dir, self.run_cfg.keep_last_k)
        self.train_loader, self.val_loaders = self._build_loaders()
        self.iters_per_epoch = int(self.run_cfg.iters_per_epoch or self.train_loader.batches_per_pass())
        if self.iters_per_epoch < 1:
            raise RunConfigError("run.iters_per_epoch is not set and the train datasets have no length; set it")
        if target is not None:
            self._restore_weights(target)
        if self.sharded:  # the optimizer must see the sharded parameters
            self.model = fsdp.shard_model(self.unwrapped_model, self.policy, self.device, self.world_size)
        self.optimizer = build_optimizer(self.unwrapped_model, self.run_cfg)
        self.lr_scheduler = build_lr_scheduler(self.run_cfg, self.optimizer, self.iters_per_epoch)
        self.scaler = fsdp.grad_scaler(self.policy) if self.sharded else self.policy.grad_scaler()
        if target is not None:
            self._restore_state(target)
        self._open_sinks()
        logger.info("run folder %s | %d process(es) on %s, %s | precision: %s | %d epochs x %d iterations | "
                    "accum_grad_iters %d", self.run_dir, self.world_size, self.device,
                    "FSDP2" if self.sharded else "DDP" if self.use_distributed else "no DDP/FSDP", self.policy,
                    self.run_cfg.max_epoch, self.iters_per_epoch, self.run_cfg.accum_grad_iters)

    def _choose_run_dir(self) -> Tuple[Optional[ResumeTarget], Path]:
        """Rank 0 resolves ``resume_ckpt_path`` and the run folder; every rank gets the same answer."""
        job_dir = output_root(self.run_cfg.output_dir) / self.run_cfg.job_name
        answer: Any = None
        if self.is_main:
            try:
                target = resolve_resume(self.run_cfg.resume_ckpt_path, job_dir, self.run_cfg.run_id)
                run_dir = target.run_dir if target is not None and target.run_dir is not None \
                    else self._new_run_dir(job_dir)
                answer = (target, run_dir)
            except (OSError, ValueError) as err:
                answer = err
        answer = du.broadcast_object(answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _new_run_dir(self, job_dir: Path) -> Path:
        """``<job_dir>/<run.run_id or job_id>``; a timestamp id that is taken gets a ``_<n>`` suffix."""
        name = self.run_cfg.run_id or self.job_id
        run_dir = job_dir / name
        if (run_dir / LATEST).exists():
            if self.run_cfg.run_id:
                raise RunConfigError(f"run folder {run_dir} already holds checkpoints: continue it with --options "
                                 "run.resume_ckpt_path=auto, or pick another run.run_id")
            n = 1
            while (job_dir / f"{name}_{n}").exists():
                n += 1
            run_dir = job_dir / f"{name}_{n}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    def _build_loaders(self) -> Tuple[MixingLoader, Dict[str, Any]]:
        """One resumable loader per (dataset, train split), mixed by ``sample_ratio``; validation loaders."""
        run, train, ratios, val = self.run_cfg, [], [], {}
        pin = self.device.type == "cuda"
        for k, (name, splits) in enumerate(self.datasets.items()):
            dcfg = self.config.datasets[name]
            for split in run.train_splits:
                if split in splits:
                    label = name if len(run.train_splits) == 1 else f"{name}/{split}"
                    train.append(ResumableLoader(
                        label, splits[split], batch_size=dcfg.batch_size, num_workers=run.num_workers,
                        seed=mix_seed(run.seed, k, len(train)), rank=self.rank, world_size=self.world_size,
                        collate_fn=batch_collater(splits[split], self.unwrapped_model), pin_memory=pin))
                    ratios.append(float(dcfg.sample_ratio))
            for split in run.valid_splits:
                if split in splits:
                    label = name if len(run.valid_splits) == 1 else f"{name}/{split}"
                    val[label] = validation_loader(
                        splits[split], batch_size=dcfg.batch_size, num_workers=run.num_workers, rank=self.rank,
                        world_size=self.world_size, collate_fn=batch_collater(splits[split], self.unwrapped_model),
                        pin_memory=pin, seed=run.seed)
        if self.world_size > 1 and any(ld.iterable for ld in train):
            logger.warning("iterable (streaming) train datasets are not sharded by the runner: each must split "
                           "itself by rank (webdataset: nodesplitter=wds.split_by_node), else ranks see the same data")
        if not train:
            raise RunConfigError(f"no dataset has a split named in run.train_splits={list(run.train_splits)}; "
                             f"splits found: { {n: sorted(s) for n, s in self.datasets.items()} }")
        if run.valid_splits and not val:
            raise RunConfigError(f"run.valid_splits={list(run.valid_splits)} but no dataset built such a split "
                             f"(found: { {n: sorted(s) for n, s in self.datasets.items()} }); enable the held-out "
                             "split in the dataset's config or set run.valid_splits=[]")
        return MixingLoader(train, ratios, seed=mix_seed(run.seed, 4242)), val

    def _open_log_file(self) -> None:
        """``train.log`` in the run folder: everything rank 0 logs from here on (appended on resume)."""
        if not self.is_main:
            return
        self._file_handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
        self._file_handler.setLevel(logging.INFO)
        package_logger = get_logger()
        package_logger.addHandler(self._file_handler)
        # train.log always holds the INFO record of the run, whatever level the console was set to (e.g. -q)
        self._saved_log_level = package_logger.level
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)

    def _open_sinks(self) -> None:
        run = self.run_cfg
        wandb_init = None
        if run.wandb_log and self.is_main:
            wandb_init = {"project": run.wandb_project, "name": f"{run.job_name}/{self.run_dir.name}",
                          "id": f"{run.job_name}-{self.run_dir.name}".replace("/", "-"), "resume": "allow",
                          "dir": str(self.run_dir), "config": self.config.to_dict()}
        self.metrics = MetricsWriter(self.run_dir, enabled=self.is_main, tensorboard=run.tensorboard,
                                     wandb_init=wandb_init)
        if not self.is_main:
            return
        config_path = self.run_dir / "config.yaml"
        if config_path.exists():
            config_path.replace(self.run_dir / f"config.before_{time.strftime('%Y%m%d%H%M%S')}.yaml")
        self.config.to_yaml(config_path)
        heldout = getattr(self.task, "heldout_report", None)
        if heldout is not None:
            atomic_write_json(heldout.as_dict(), self.run_dir / "heldout_report.json")
        if self.resumed_from is not None:
            dropped = truncate_metrics(self.run_dir / "metrics.jsonl", self.global_step)
            if dropped:
                logger.info("dropped %d metrics lines written after the resumed checkpoint", dropped)

    # ---------------------------------------------------------------------- checkpoints
    def _trainer_state(self, next_epoch: int, next_step: int) -> Dict[str, Any]:
        """Everything but the weights; gathers every rank's RNG states and counters (a collective)."""
        per_rank = du.all_gather_object({"rng": capture_rng(), "counters": self.counters.as_dict()})
        optimizer = fsdp.full_optimizer_state(self.model, self.optimizer) if self.sharded \
            else self.optimizer.state_dict()
        return {
            "format": TRAINER_STATE_FORMAT, "next_epoch": next_epoch, "next_step": next_step,
            "global_step": self.global_step, "iters_per_epoch": self.iters_per_epoch,
            "max_epoch": int(self.run_cfg.max_epoch), "world_size": self.world_size,
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict(), "data": self.train_loader.state(),
            "best_val_loss": self.best_val_loss, "per_rank": per_rank,
            "param_names": [n for g in self.optimizer.param_groups for n in g["names"]],
        }

    def save_checkpoint(self, epoch: int, iters: Optional[int]) -> None:
        """Checkpoint after ``iters`` iterations of ``epoch`` (``None`` = end of the epoch). All ranks call it."""
        next_epoch, next_step = (epoch + 1, 0) if iters is None else (epoch, iters)
        state = self._trainer_state(next_epoch, next_step)
        weights = self._gathered_weights()
        if self.is_main:
            extra = {"config": self.config.to_dict()}
            self.ckpt.save(self.unwrapped_model, state, epoch=epoch, iters=iters, global_step=self.global_step,
                           extra=extra, weights=weights)
        du.barrier()

    def _gathered_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """FSDP: the full trainable weights on rank 0 (a collective: all ranks call it); DDP: None (rank 0's
        replica is complete and is read directly)."""
        return fsdp.gather_trainable_weights(self.model) if self.sharded else None

    def _restore_weights(self, target: ResumeTarget) -> None:
        """Every rank loads the checkpoint's weights into its full model (before FSDP shards it)."""
        load_weights(self.unwrapped_model, target.weights)
        self.resumed_from = str(target.weights)

    def _restore_state(self, target: ResumeTarget) -> None:
        """Optimizer, scaler, schedule, data position, counters and RNG of ``target`` (its weights are loaded)."""
        if target.trainer_state is None:
            ckpt = read_weights(target.weights, "a checkpoint {'model': {...}}", RESUME_KEY, mmap=True)
            epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
            self.start_epoch = int(epoch) + 1 if isinstance(epoch, int) else 0
            self.global_step = self.start_epoch * self.iters_per_epoch
            logger.warning("resumed WEIGHTS ONLY from %s (no trainer_state file beside it): optimizer, scaler and "
                           "data order start fresh at epoch %d", target.weights, self.start_epoch)
            return
        state = read_weights(target.trainer_state, "a trainer state", RESUME_KEY)
        self._check_resumable(state, target)
        if self.sharded:
            fsdp.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"], self.rank)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.train_loader.load_state(state["data"])
        self.start_epoch, self.start_step = int(state["next_epoch"]), int(state["next_step"])
        self.global_step = int(state["global_step"])
        self.best_val_loss = float(state["best_val_loss"])
        if int(state["world_size"]) == self.world_size:
            mine = state["per_rank"][self.rank]
            self.counters = LoopCounters(**{k: int(v) for k, v in mine["counters"].items()})
            self._pending_rng = mine["rng"]
        else:
            logger.warning("checkpoint was written by %d processes, this run has %d: data order and random "
                           "streams continue approximately, not exactly", state["world_size"], self.world_size)
        logger.info("resumed from %s at epoch %d, iteration %d (global iteration %d)", target.trainer_state,
                    self.start_epoch, self.start_step, self.global_step)

    def _check_resumable(self, state: Dict[str, Any], target: ResumeTarget) -> None:
        names = [n for g in self.optimizer.param_groups for n in g["names"]]
        if state.get("format") != TRAINER_STATE_FORMAT:
            raise RunConfigError(f"{target.trainer_state}: unknown trainer state format {state.get('format')!r}")
        if int(state["iters_per_epoch"]) != self.iters_per_epoch:
            raise RunConfigError(f"{target.trainer_state} was written with iters_per_epoch={state['iters_per_epoch']}, "
                             f"this run has {self.iters_per_epoch}: the schedule position would be wrong. Resume "
                             f"with --options run.iters_per_epoch={state['iters_per_epoch']}")
        if list(state["param_names"]) != names:
            missing = sorted(set(state["param_names"]) ^ set(names))[:8]
            raise RunConfigError(f"{target.trainer_state}: trainable parameters differ from this model's "
                             f"(e.g. {missing}); the optimizer state cannot be restored")

    # --------------------------------------------------------------------------- training
    def train(self) -> Dict[str, Any]:
        """Run every remaining epoch; returns (and writes) the summary."""
        started = time.time()
        try:
            self._setup()
            if self.run_cfg.evaluate:
                self.validate(self.start_epoch, 0)
            else:
                self._train_epochs()
            return self._finish("completed", started)
        except BaseException as err:
            self._write_failure(err, started)
            raise
        finally:
            self._close()

    def _train_epochs(self) -> None:
        ctx = LoopContext(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
            data_loader=self.train_loader, device=self.device, precision=self.policy,
            iters_per_epoch=self.iters_per_epoch, accum_grad_iters=int(self.run_cfg.accum_grad_iters),
            scale_loss_by_accum=bool(self.run_cfg.scale_loss_by_accum), max_grad_norm=self.run_cfg.max_grad_norm,
            max_nonfinite_steps=int(self.run_cfg.max_nonfinite_steps), scaler=self.scaler,
            distributed=self.use_distributed, prepare=lambda s: move_to_device(s, self.device),
            on_iteration=self._on_iteration, counters=self.counters)
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None
        self._session_start = (time.time(), self.global_step)
        for epoch in range(self.start_epoch, int(self.run_cfg.max_epoch)):
            start_step = self.start_step if epoch == self.start_epoch else 0
            self._progress = Progress(epoch, int(self.run_cfg.max_epoch), self.iters_per_epoch, start_step,
                                      enabled=self.is_main and bool(self.run_cfg.progress_bar))
            with self._progress:
                stats = self.task.train_epoch(epoch, ctx, start_step)
            self._end_of_epoch(epoch, stats)

    def _on_iteration(self, info: Any) -> None:
        run = self.run_cfg
        self.global_step = info.epoch * self.iters_per_epoch + info.step
        self._meter.add(info.loss)
        if info.grad_norm is not None:
            self._last_grad_norm = info.grad_norm
        if info.step_skipped:
            self.metrics.log({"type": "nonfinite", "epoch": info.epoch, "step": info.step,
                              "global_step": self.global_step, "loss": info.loss,
                              "in_a_row": self.counters.nonfinite_in_a_row, "total": self.counters.nonfinite_steps})
        if self._progress is not None:
            self._progress.update(info.loss, info.lr, self._eta())
        last = info.step == self.iters_per_epoch
        if info.step % run.log_freq == 0 or last:
            self._log_train(info)
        if run.val_every_iters and info.step % run.val_every_iters == 0 and not last:
            self.validate(info.epoch, info.step)
        if run.save_every_iters and info.step % run.save_every_iters == 0 and not last:
            self.save_checkpoint(info.epoch, info.step)

    def _eta(self) -> float:
        start_time, start_step = self._session_start
        done = self.global_step - start_step
        remaining = int(self.run_cfg.max_epoch) * self.iters_per_epoch - self.global_step
        return (time.time() - start_time) / done * remaining if done > 0 else math.nan

    def _log_train(self, info: Any) -> None:
        loss, n_iters, seconds = self._meter.take()
        if self.use_distributed:
            loss = float(du.all_reduce_tensor(torch.tensor([loss], device=self.device), "sum").item()) / self.world_size
        record = {"type": "train", "epoch": info.epoch, "step": info.step, "global_step": self.global_step,
                  "loss": loss, "lr": info.lr, "grad_norm": self._last_grad_norm,
                  "samples_seen": self.counters.samples_seen * self.world_size,
                  "it_per_s": n_iters / seconds if seconds > 0 else None,
                  "time_s": time.time() - self._session_start[0]}
        self.metrics.log(record)
        logger.info("epoch %d/%d iter %d/%d | loss %.4f | lr %.3g | grad_norm %s | %.2f it/s | ETA %s",
                    info.epoch + 1, self.run_cfg.max_epoch, info.step, self.iters_per_epoch, loss, info.lr,
                    "n/a" if self._last_grad_norm is None else f"{self._last_grad_norm:.3g}",
                    record["it_per_s"] or 0.0, Progress.format_eta(self._eta()))

    def _end_of_epoch(self, epoch: int, stats: Dict[str, float]) -> None:
        if self.val_loaders:
            self.validate(epoch, self.iters_per_epoch)
        self.save_checkpoint(epoch, None)
        self.metrics.log({"type": "epoch", "epoch": epoch, "global_step": self.global_step,
                          "mean_loss": stats["loss"], "lr": stats["lr"]})
        logger.info("epoch %d/%d done: mean train loss %.4f (rank 0), lr %.3g", epoch + 1, self.run_cfg.max_epoch,
                    stats["loss"], stats["lr"])
        if self.is_main and self.run_cfg.plot_curves:
            plot_loss_curves(self.run_dir / "metrics.jsonl", self.run_dir / CURVE_FILE,
                             f"{self.run_cfg.job_name}/{self.run_dir.name}")

    # ------------------------------------------------------------------------- validation
    def validate(self, epoch: int, step: int) -> Optional[float]:
        """Validation loss over every validation loader (all ranks); keeps ``checkpoint_best.pth``."""
        if not self.val_loaders:
            return None
        # FSDP: the whole model gathered once, so ranks with more validation batches than others need no peer
        with fsdp.unsharded(self.model) if self.sharded else contextlib.nullcontext():
            parts = self.task.validation_loss(self.unwrapped_model, self.val_loaders, self.device, self.policy,
                                              lambda s: move_to_device(s, self.device),
                                              self.run_cfg.val_max_batches)
        names = list(parts)
        sums = torch.tensor([[parts[n][0], parts[n][1]] for n in names], dtype=torch.float64, device=self.device)
        sums = du.all_reduce_tensor(sums, "sum")  # (datasets, 2): loss x samples, samples
        total, count = float(sums[:, 0].sum()), float(sums[:, 1].sum())
        val_loss = total / count if count else math.nan
        record: Dict[str, Any] = {"type": "val", "epoch": epoch, "step": step, "global_step": self.global_step,
                                  "val_loss": val_loss, "val_samples": int(count)}
        for i, name in enumerate(names):
            record[f"val_loss_{name}"] = float(sums[i, 0] / sums[i, 1]) if sums[i, 1] > 0 else None
        improved = math.isfinite(val_loss) and val_loss < self.best_val_loss
        record["best"] = improved
        self.last_val_loss = val_loss
        if improved:  # the same decision on every rank (val_loss is all-reduced)
            self.best_val_loss = val_loss
            if not self.run_cfg.evaluate:
                weights = self._gathered_weights()
                if self.is_main:
                    self.ckpt.save_best(self.unwrapped_model, val_loss=val_loss, epoch=epoch, iters=step,
                                        global_step=self.global_step, extra={"config": self.config.to_dict()},
                                        weights=weights)
        self.metrics.log(record)
        logger.info("validation at epoch %d iter %d: loss %.4f over %d samples%s", epoch + 1, step, val_loss,
                    int(count), " (best so far)" if improved else "")
        du.barrier()
        return val_loss

    # ----------------------------------------------------------------------------- summary
    def _finish(self, status: str, started: float) -> Dict[str, Any]:
        totals = du.all_reduce_tensor(torch.tensor([self.counters.samples_seen, self.counters.skipped_images],
                                                   dtype=torch.float64, device=self.device), "sum")
        memory, memory_kind = peak_memory(self.device)
        memory = float(du.all_reduce_tensor(torch.tensor([memory], device=self.device), "max").item())
        in_sync, max_diff = self._rank_sync()
        summary = {
            "status": status, "job_name": self.run_cfg.job_name, "run_id": self.run_dir.name,
            "run_dir": str(self.run_dir), "world_size": self.world_size, "precision": self.precision,
            "max_epoch": int(self.run_cfg.max_epoch), "iters_per_epoch": self.iters_per_epoch,
            "epochs_done": self.global_step // self.iters_per_epoch, "global_step": self.global_step,
            "optimizer_steps": self.counters.optimizer_steps, "samples_seen": int(totals[0]),
            "skipped_images": int(totals[1]), "skipped_batches": self.counters.skipped_batches,  # same on all ranks
            "nonfinite_steps": self.counters.nonfinite_steps,
            "scaler_skipped_steps": self.counters.scaler_skipped_steps, "truncation": self._truncation(),
            "vision_feature_cache": self._vision_cache(),
            "final_train_loss": self._final_train_loss(), "last_val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "time_s": time.time() - started, "peak_memory_mb": memory, "memory_kind": memory_kind,
            "checkpoint_latest": str(self.run_dir / LATEST) if (self.run_dir / LATEST).exists() else None,
            "checkpoint_best": str(self.run_dir / BEST) if (self.run_dir / BEST).exists() else None,
            "resumed_from": self.resumed_from, "ranks_in_sync": in_sync, "rank_param_max_abs_diff": max_diff,
        }
        if self.is_main:
            atomic_write_json(summary, self.run_dir / SUMMARY_FILE)
            logger.info("summary (%s):\n%s", self.run_dir / SUMMARY_FILE, format_summary(summary))
        return summary

    def _final_train_loss(self) -> Optional[float]:
        if not self.is_main:
            return None
        losses = [r["loss"] for r in read_metrics(self.run_dir / "metrics.jsonl")
                  if r.get("type") == "train" and r.get("loss") is not None]
        return losses[-1] if losses else None

    def _truncation(self) -> Optional[Dict[str, int]]:
        return self._summed_over_ranks(getattr(self.unwrapped_model, "truncation_stats", None))

    def _vision_cache(self) -> Optional[Dict[str, int]]:
        """The frozen tower's feature-cache counters (``model.vit_feature_cache_mb``), summed over ranks."""
        cache = getattr(self.unwrapped_model, "vision_cache", None)
        return self._summed_over_ranks(cache.stats() if cache is not None else None)

    @staticmethod
    def _summed_over_ranks(stats: Optional[Dict[str, int]]) -> Optional[Dict[str, int]]:
        gathered = du.all_gather_object(dict(stats) if stats else None)
        merged: Dict[str, int] = {}
        for part in gathered:
            for key, value in (part or {}).items():
                merged[key] = merged.get(key, 0) + int(value)
        return merged or None

    def _rank_sync(self) -> Tuple[Optional[bool], Optional[float]]:
        """Under DDP: are the trainable weights identical on every rank? (max |difference| to rank 0). None when
        not distributed, and under FSDP (each rank holds a different shard by design)."""
        if not self.use_distributed or self.sharded:
            return None, None
        params: List[torch.Tensor] = [p.detach().float().reshape(-1) for p in self.unwrapped_model.parameters()
                                      if p.requires_grad]
        flat = torch.cat(params)  # (total trainable values,)
        reference = flat.clone()
        torch.distributed.broadcast(reference, src=0)
        diff = du.all_reduce_tensor((flat - reference).abs().max().reshape(1), "max")
        return bool(diff.item() == 0.0), float(diff.item())

    def _write_failure(self, err: BaseException, started: float) -> None:
        if not self.is_main or not hasattr(self, "run_dir"):
            return
        summary = {"status": f"failed: {type(err).__name__}: {err}", "job_name": self.run_cfg.job_name,
                   "run_id": self.run_dir.name, "run_dir": str(self.run_dir), "global_step": self.global_step,
                   "counters": self.counters.as_dict(), "time_s": time.time() - started}
        atomic_write_json(summary, self.run_dir / SUMMARY_FILE)

    def _close(self) -> None:
        if hasattr(self, "metrics"):
            self.metrics.close()
        if self._file_handler is not None:
            get_logger().setLevel(self._saved_log_level)
            get_logger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
