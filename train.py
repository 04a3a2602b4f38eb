"""Fine-tune MiniGPT-4 / MiniGPT-v2 (FaceGPT).

One process:   python train.py --cfg-path train_configs/minigptv2_finetune_gpt4vision.yaml --options k=v ...
DDP (1 node):  torchrun --nproc_per_node N train.py --cfg-path ... --options ...
Multi-node:    torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT \
                   --rdzv_id JOB train.py --cfg-path ...   (same command on every node)

Nothing happens at import time; :func:`main` returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from minigpt4.common.config import add_config_args

    parser = argparse.ArgumentParser(description="Train MiniGPT-4 / MiniGPT-v2 on face data (FaceGPT).")
    add_config_args(parser)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Train; returns 0 (completed), 1 (stopped by non-finite losses; a programming error raises with its
    traceback) or 2 (a fault in the config or the data: one line on stderr, from rank 0 under torchrun)."""
    from minigpt4.common.errors import run_main

    return run_main(_train, argv, prog="train.py")


def _train(argv: Optional[List[str]]) -> int:
    """Load the config and train; user errors (config, data) propagate to :func:`main`'s handler."""
    args = parse_args(argv)
    import minigpt4  # noqa: F401  (registers builders, models, processors, tasks, runners, schedulers)
    from minigpt4.common.config import load_config
    from minigpt4.common.logger import get_logger, setup_logging
    from minigpt4.runners.launch import run_training
    from minigpt4.tasks.base_task import NonFiniteLossError

    setup_logging()
    logger = get_logger("train")
    cfg = load_config(args.cfg_path, args.options)
    try:
        summary = run_training(cfg)
    except NonFiniteLossError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    logger.info("done: %s", summary["run_dir"])
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
