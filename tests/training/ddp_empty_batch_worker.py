"""Run under ``torchrun --nproc_per_node 2``: rank 0's first batch has no readable image, rank 1's has two.

Used by ``test_empty_batches.py``; writes each rank's ``seen`` indices to ``<out>/seen_<rank>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from minigpt4.common.dist_utils import init_distributed_mode  # noqa: E402
from minigpt4.runners.loaders import ShardedSampler, mix_seed  # noqa: E402
from test_empty_batches import CONSTANT_LR, MissingImagesDataset  # noqa: E402
from train_doubles import make_config, run_double  # noqa: E402


def main(out: Path) -> None:
    cfg = make_config(out, {"a": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=2, distributed=True,
                      **CONSTANT_LR)
    info = init_distributed_mode(cfg.run)
    order = ShardedSampler(8, rank=0, world_size=2, seed=mix_seed(cfg.run.seed, 0, 0), pass_index=0,
                           shuffle=True).order()
    missing = {order[0], order[2]}  # rank 0 takes order[0::2]: its first batch is order[0], order[2]
    dataset = MissingImagesDataset(8, present=[i for i in range(8) if i not in missing])
    runner, _ = run_double(cfg, {"a": {"train": dataset}})
    (out / f"seen_{info.rank}.json").write_text(json.dumps({"seen": runner.unwrapped_model.seen, "order": order}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
