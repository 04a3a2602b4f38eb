"""Process-group helpers that work with and without ``torch.distributed`` initialised."""

from __future__ import annotations

import functools
import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)


def is_dist_avail_and_initialized() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when distributed, a no-op otherwise."""
    if is_dist_avail_and_initialized():
        dist.barrier()


def main_process(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` on rank 0 only (returns None elsewhere)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return fn(*args, **kwargs)
        return None

    return wrapper


# ------------------------------------------------------------------------- process-group setup


@dataclass
class DistInfo:
    """How this process takes part in training (what :func:`init_distributed_mode` decided)."""

    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    backend: Optional[str]
    device: torch.device


def _launcher_env() -> Optional[Tuple[int, int, int, str]]:
    """``(rank, world_size, local_rank, launcher)`` from torchrun's or SLURM's variables, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")), "torchrun"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")), "SLURM"
    return None


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"run.device is {device!r} but no CUDA device is visible (torch.cuda.is_available() is False). "
            "Train on CPU with --options run.device=cpu, or check CUDA_VISIBLE_DEVICES and the torch build."
        )


def init_distributed_mode(run_cfg: Any) -> DistInfo:
    """Start the process group when launched by torchrun (or SLURM srun) and ``run.distributed`` is True.

    * ``run.distributed: False`` → one process (an error if torchrun started several);
    * ``run.distributed: True`` without a launcher → one process, with a warning saying so (upstream fell back
      silently);
    * otherwise ``init_process_group`` with NCCL on CUDA and gloo on CPU (``run.dist_backend`` overrides), each
      process on ``cuda:LOCAL_RANK``. ``rank``, ``world_size``, ``gpu`` and ``distributed`` are written back
      into ``run_cfg`` as upstream did.
    """
    _check_device(str(run_cfg.device))
    launch = _launcher_env()
    if not run_cfg.distributed or launch is None:
        if launch is not None and launch[1] > 1:
            raise RuntimeError(
                f"{launch[3]} started {launch[1]} processes but run.distributed is False: each would train alone "
                "and write the same files. Set --options run.distributed=True, or run `python train.py ...`."
            )
        device = torch.device(run_cfg.device)
        if run_cfg.distributed:
            logger.warning(
                "run.distributed=True but no torchrun/SLURM launcher variables (RANK, WORLD_SIZE) are set: "
                "training in ONE process on %s. For DDP start it with `torchrun --nproc_per_node N train.py ...`.",
                device)
        else:
            logger.info("Not using distributed mode (run.distributed=False): one process on %s", device)
        _write_back(run_cfg, False, 0, 1, device.index)
        return DistInfo(False, 0, 1, 0, None, device)
    rank, world_size, local_rank, launcher = launch
    use_cuda = str(run_cfg.device).startswith("cuda")
    backend = run_cfg.dist_backend or ("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device(run_cfg.device)
    if use_cuda:
        torch.cuda.set_device(device)
    kwargs: Dict[str, Any] = {"device_id": device} if use_cuda else {}
    dist.init_process_group(backend, init_method=run_cfg.dist_url, world_size=world_size, rank=rank,
                            timeout=timedelta(minutes=int(run_cfg.dist_timeout_minutes)), **kwargs)
    barrier()
    node = os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "0"))  # torchrun's node rank, or SLURM's
    logger.info("Distributed mode (%s): rank %d of %d, local rank %d on node %s (%s), backend %s, device %s",
                launcher, rank, world_size, local_rank, node, socket.gethostname(), backend, device)
    _write_back(run_cfg, True, rank, world_size, local_rank if use_cuda else None)
    return DistInfo(True, rank, world_size, local_rank, backend, device)


def _write_back(run_cfg: Any, distributed: bool, rank: int, world_size: int, gpu: Optional[int]) -> None:
    run_cfg.distributed = distributed
    run_cfg.rank = rank
    run_cfg.world_size = world_size
    run_cfg.gpu = gpu


def destroy_distributed() -> None:
    """Tear the process group down (end of a run); a no-op when none exists."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def current_device(run_cfg: Any) -> torch.device:
    """The device of this process: ``cuda:<current>`` inside a CUDA process group, else ``run.device``."""
    if str(run_cfg.device).startswith("cuda") and is_dist_avail_and_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(run_cfg.device)


def setup_seeds(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed ``random``, numpy and torch with ``seed + rank`` (upstream); cuDNN in deterministic mode.

    ``deterministic=True`` also calls ``torch.use_deterministic_algorithms(True)`` (an error is raised by any
    op without a deterministic implementation), for bit-exact comparisons and resume checks.
    """
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


# ------------------------------------------------------------------------------- collectives


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the object itself when not distributed)."""
    if not is_dist_avail_and_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, indexed by rank (``[obj]`` when not distributed)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_tensor(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``/``max``/``min``) returning ``values``; unchanged when not distributed."""
    if is_dist_avail_and_initialized():
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(values, op=ops[op])
    return values
