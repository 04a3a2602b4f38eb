"""Run under ``torchrun --nproc_per_node 2``: two epochs over a shard set with two loader workers per rank.

Used by ``test_shard_loader.py``; writes each rank's trained ``image_id`` batches per epoch to
``<out>/seen_<rank>.json``. Arguments: ``OUT SHARD_SPEC``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from minigpt4.common.dist_utils import init_distributed_mode  # noqa: E402
from shard_support import FaceDouble, shard_builder  # noqa: E402
from test_shard_loader import CONSTANT_LR  # noqa: E402
from train_doubles import make_config, run_double  # noqa: E402


def main(out: Path, spec: str) -> None:
    cfg = make_config(out, {"faces": {"batch_size": 2}}, max_epoch=2, iters_per_epoch=None, num_workers=2,
                      distributed=True, **CONSTANT_LR)
    info = init_distributed_mode(cfg.run)
    splits = {"faces": {"train": shard_builder(spec).build_datasets()["train"]}}
    runner, _ = run_double(cfg, splits, model=FaceDouble())
    seen, per_epoch = runner.unwrapped_model.seen, runner.iters_per_epoch
    epochs = [seen[e * per_epoch:(e + 1) * per_epoch] for e in range(2)]
    (out / f"seen_{info.rank}.json").write_text(json.dumps(epochs))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
