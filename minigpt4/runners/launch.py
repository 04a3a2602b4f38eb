"""From a loaded config to a finished run: process group, seeds, task, datasets, model, runner.

``train.py`` is a thin command-line front end over :func:`run_training`; other front ends (a demo, a notebook)
call it directly with a :class:`~minigpt4.common.config.Config` and get the run summary back.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch

from minigpt4.common import dist_utils as du
from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.tasks import setup_task

logger = get_logger(__name__)


def build_runner(cfg: Any) -> Any:
    """Seeds, task, datasets, model and the configured runner, ready for ``runner.train()``.

    Call inside an initialised process group (or none); :func:`run_training` does that around it.
    """
    rank = du.get_rank()
    du.setup_seeds(cfg.run.seed, rank, bool(cfg.run.deterministic))
    job_id = du.broadcast_object(cfg.run.run_id or time.strftime("%Y%m%d%H%M%S"))
    task = setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner_cls = registry.get_runner_class(cfg.run.runner)
    return runner_cls(cfg=cfg, task=task, model=model, datasets=datasets, job_id=job_id)


def run_training(cfg: Any, keep: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train as ``cfg`` says (one process or one rank of a torchrun job); returns the summary dict.

    The process group is created here and destroyed at the end; the global deterministic-algorithms switch is
    restored afterwards, so calling this twice in one process is safe. Pass a dict as ``keep`` to get the
    finished runner back under ``keep["runner"]`` (its ``unwrapped_model`` holds the final weights).
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    du.init_distributed_mode(cfg.run)
    try:
        runner = build_runner(cfg)
        if keep is not None:
            keep["runner"] = runner
        return runner.train()
    finally:
        du.destroy_distributed()
        torch.use_deterministic_algorithms(was_deterministic)
