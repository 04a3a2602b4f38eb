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
    """Load the config, train, and return 0 (completed), 1 (stopped by non-finite losses) or 2 (bad config)."""
    args = parse_args(argv)
    import minigpt4  # noqa: F401  (registers builders, models, processors, tasks, runners, schedulers)
    from minigpt4.common.config import ConfigError, load_config
    from minigpt4.common.logger import get_logger, setup_logging
    from minigpt4.runners.launch import run_training
    from minigpt4.tasks.base_task import NonFiniteLossError

    setup_logging()
    logger = get_logger("train")
    try:
        cfg = load_config(args.cfg_path, args.options)
    except ConfigError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 2
    try:
        summary = run_training(cfg)
    except NonFiniteLossError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    logger.info("done: %s", summary["run_dir"])
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
