"""Batches whose every image was skipped: the loop passes over them, counts them, and never reuses a record.

The dataset double returns the real skip marker (:class:`SkippedSample`) for its "missing" records and is
collated by the real :func:`collate_samples`, so the batch shrinks or comes out empty as with real images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable

import pytest

from minigpt4.datasets.datasets.collate import SkippedSample, collate_samples
from minigpt4.runners.loaders import ShardedSampler, mix_seed
from minigpt4.tasks.base_task import NoReadableImagesError
from train_doubles import RegressionDataset, make_config, run_double

CONSTANT_LR = {"init_lr": 0.02, "min_lr": 0.02, "warmup_lr": -1.0, "warmup_steps": 0}


class MissingImagesDataset(RegressionDataset):
    """Regression items, except that the records in ``present``'s complement have no readable image."""

    def __init__(self, n: int, present: Iterable[int]) -> None:
        super().__init__(n, seed=5)
        self.present = set(present)

    def __getitem__(self, i: int) -> Any:
        if i not in self.present:
            return SkippedSample("missing", i, f"{i}.jpg", "image file not found")
        item = super().__getitem__(i)
        item["target"] = item["target"].reshape(1)[0]
        return item

    def collater(self, items: list) -> Dict[str, Any]:
        return collate_samples(items)


def test_all_skipped_batches_are_passed_over_counted_and_no_record_repeats(tmp_path: Path) -> None:
    """8 records, batch 2, only record 0 readable: each pass has 1 real batch and 3 empty ones."""
    cfg = make_config(tmp_path, {"a": {"batch_size": 2}}, max_epoch=2, iters_per_epoch=4, **CONSTANT_LR)
    runner, summary = run_double(cfg, {"a": {"train": MissingImagesDataset(8, present=[0])}})
    assert runner.unwrapped_model.seen == [[0], [0]], "record 0 trains once per epoch, nothing else"
    assert summary["skipped_batches"] == 6 and summary["skipped_images"] == 14
    assert summary["samples_seen"] == 2 and summary["optimizer_steps"] == 2
    assert json.loads((runner.run_dir / "summary.json").read_text())["skipped_batches"] == 6
    assert "every image of the batch was skipped" in (runner.run_dir / "train.log").read_text()


def test_a_window_ending_on_an_empty_batch_still_steps_with_what_it_accumulated(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"a": {"batch_size": 4}}, max_epoch=1, iters_per_epoch=2, accum_grad_iters=2,
                      **CONSTANT_LR)
    seed = mix_seed(cfg.run.seed, 0, 0)  # the runner's seed of its first train loader
    order = ShardedSampler(8, rank=0, world_size=1, seed=seed, pass_index=0, shuffle=True).order()
    present = order[:4]  # the first batch is whole, the second (closing the window) is empty
    runner, summary = run_double(cfg, {"a": {"train": MissingImagesDataset(8, present=present)}})
    assert runner.unwrapped_model.seen == [present]
    assert summary["skipped_batches"] == 1 and summary["optimizer_steps"] == 1


def test_no_readable_image_at_all_stops_with_one_line(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"a": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=250, **CONSTANT_LR)
    with pytest.raises(NoReadableImagesError, match=r"200 batches in a row had no readable image"):
        run_double(cfg, {"a": {"train": MissingImagesDataset(8, present=[])}})


@pytest.mark.slow  # two torchrun processes: about 45 s on 2 cores
def test_ddp_ranks_pass_over_an_iteration_together_when_one_rank_has_an_empty_batch(tmp_path: Path) -> None:
    """2 gloo processes: rank 0's first batch is empty, rank 1's is not; both pass over iteration 0 (no hang,
    same calls on both ranks), both train iteration 1, and the replicas stay identical."""
    worker = Path(__file__).with_name("ddp_empty_batch_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    ranks = [json.loads((tmp_path / f"seen_{r}.json").read_text()) for r in (0, 1)]
    order = ranks[0]["order"]
    assert ranks[0]["seen"] == [[order[4], order[6]]] and ranks[1]["seen"] == [[order[5], order[7]]]
    summary = json.loads(next(tmp_path.glob("*/*/summary.json")).read_text())
    assert summary["ranks_in_sync"] is True and summary["rank_param_max_abs_diff"] == 0.0
    assert summary["skipped_batches"] == 1 and summary["skipped_images"] == 2
    assert summary["optimizer_steps"] == 1 and summary["samples_seen"] == 4


def test_the_run_folder_keeps_the_held_out_report(tmp_path: Path) -> None:
    """What the cross-dataset held-out step removed is written next to config.yaml, as the task built it."""
    import torch

    from minigpt4.datasets.identity import DatasetRemoval, HeldOutReport
    from minigpt4.runners.runner_base import RunnerBase
    from train_doubles import RegressionModel
    from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

    cfg = make_config(tmp_path, {"a": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=1, **CONSTANT_LR)
    task = ImageTextPretrainTask()
    task.heldout_report = HeldOutReport(held_out_images={"b": 3}, removed={
        "a": DatasetRemoval(records_before=8, records_removed=2, images_removed=1, by_content=1, held_out_by={"b": 1})})
    torch.manual_seed(0)
    runner = RunnerBase(cfg, task, RegressionModel(), {"a": {"train": RegressionDataset(8, seed=5)}}, job_id="job")
    runner.train()
    saved = json.loads((runner.run_dir / "heldout_report.json").read_text())
    assert saved == json.loads(json.dumps(task.heldout_report.as_dict()))
    assert saved["records_removed"] == 2 and saved["removed"]["a"]["held_out_by"] == {"b": 1}
