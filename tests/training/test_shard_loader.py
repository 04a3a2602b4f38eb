"""Shard datasets under the runner's loaders: every sample once per pass across ranks and workers, and resume.

The shards are packed by the real command's function from a face data root whose records have unique ids, and
read by the real builder, loader (DataLoader worker processes included) and runner.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from minigpt4.runners.loaders import ResumableLoader
from shard_support import FaceDouble, pack_root, shard_builder, shard_spec, write_face_root
from train_doubles import make_config, run_double

CONSTANT_LR = {"init_lr": 0.01, "min_lr": 0.01, "warmup_lr": -1.0, "warmup_steps": 0}


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, Dict[str, Any]]:
    """31 records with unique ids (11 ShareGPT + 2 sections x 10), two per shard (one in the last)."""
    base = tmp_path_factory.mktemp("shards")
    root = write_face_root(base / "data", n_share=11, n_per_section=10)
    manifest = pack_root(root, base / "out", shard_size="8KB")
    return shard_spec(base / "out", manifest), manifest


def _pass_ids(spec: str, *, rank: int, world_size: int, workers: int, batch: int, pass_index: int = 0
              ) -> List[List[str]]:
    ds = shard_builder(spec).build_datasets()["train"]
    loader = ResumableLoader("faces", ds, batch_size=batch, num_workers=workers, seed=7, rank=rank,
                             world_size=world_size, collate_fn=ds.collater)
    loader.pass_index = pass_index
    return [next(loader)["image_id"] for _ in range(len(loader))]


def test_two_ranks_times_two_workers_see_every_sample_once_per_pass_padding_below_slots(shard_set) -> None:
    spec, manifest = shard_set
    total = manifest["records"]
    ranks = [_pass_ids(spec, rank=r, world_size=2, workers=2, batch=3) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]), "every rank takes the same number of steps per pass"
    counts = Counter(i for batches in ranks for batch in batches for i in batch)
    all_ids = {f"s{k}" for k in range(11)} | {f"g{s}_{k}" for s in (0, 1) for k in range(10)}
    assert set(counts) == all_ids and len(all_ids) == total == 31
    padded = 4 * -(-total // 4) - total  # slots x ceil(N / slots) - N
    assert sum(counts.values()) == total + padded and padded == 1
    assert sorted(n for n in counts.values() if n > 1) == [2], "the one padding sample is the only repeat"


def test_each_pass_has_a_new_seeded_order_with_the_same_samples(shard_set) -> None:
    spec, manifest = shard_set
    first = [i for b in _pass_ids(spec, rank=0, world_size=1, workers=0, batch=4) for i in b]
    again = [i for b in _pass_ids(spec, rank=0, world_size=1, workers=0, batch=4) for i in b]
    second = [i for b in _pass_ids(spec, rank=0, world_size=1, workers=0, batch=4, pass_index=1) for i in b]
    assert first == again, "the order is a function of seed and pass"
    assert second != first and sorted(second) == sorted(first) and len(first) == manifest["records"]


def _trained(runner: Any) -> List[str]:
    return [i for batch in runner.unwrapped_model.seen for i in batch]


def test_resume_continues_at_the_shard_position_without_opening_finished_shards(shard_set, tmp_path: Path) -> None:
    """One pass = one epoch (iters_per_epoch from the manifest); killed after iteration 4, resumed: the resumed
    epoch trains exactly the samples the uninterrupted run trained after iteration 4, in the same order."""
    shutil.copytree(Path(shard_set[0]).parent, tmp_path / "shards")  # this test damages shards
    spec, manifest = str(tmp_path / "shards" / Path(shard_set[0]).name), shard_set[1]
    splits = lambda: {"faces": {"train": shard_builder(spec).build_datasets()["train"]}}  # noqa: E731
    cfg = make_config(tmp_path, {"faces": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=None, num_workers=2,
                      save_every_iters=4, keep_last_k=10, **CONSTANT_LR)
    full, summary = run_double(cfg, splits(), model=FaceDouble())
    assert summary["iters_per_epoch"] == 2 * math.ceil(math.ceil(31 / 2) / 2)  # workers x batches per worker slot
    trained = _trained(full)
    assert len(set(trained)) == 31 and len(trained) == 32  # 2 slots x 16: one padding sample

    ds = shard_builder(spec).build_datasets()["train"]
    ds.configure(rank=0, world_size=1, num_workers=2, seed=full.train_loader.loaders[0].seed, pass_index=0)
    parts = [ds.parts(w, 2) for w in range(2)]
    n_done = [len(_finished_parts(ds, slot=w, slots=2, done=4)) for w in range(2)]
    still_read = {p.shard for w in range(2) for p in parts[w][n_done[w]:]}
    unused = {p.shard for w in range(2) for p in parts[w][:n_done[w]]} - still_read
    assert unused, "the test needs a shard that was finished before the checkpoint"
    for shard in unused:  # garbage: resuming must never open these
        Path(ds.shards.paths[shard]).write_bytes(b"\0" * 1024)

    state = next(full.run_dir.glob("trainer_state_0_000004*"))
    resumed_cfg = make_config(tmp_path, {"faces": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=None,
                              num_workers=2, resume_ckpt_path=str(state), run_id="r1", **CONSTANT_LR)
    resumed, _ = run_double(resumed_cfg, splits(), model=FaceDouble())
    assert full.unwrapped_model.seen[4:] == resumed.unwrapped_model.seen
    assert Counter(trained[:8] + _trained(resumed)) == Counter(trained), "no sample twice beyond the padding"


def _finished_parts(ds: Any, slot: int, slots: int, done: int) -> List[Any]:
    """Parts of ``slot`` wholly consumed after ``done`` batches of 2 (round robin over 2 workers)."""
    consumed = -(-(done - slot) // 2) * 2
    out = []
    for part in ds.parts(slot, slots):
        if part.size > consumed:
            break
        consumed -= part.size
        out.append(part)
    return out


def test_resume_with_another_worker_count_restarts_the_pass_and_says_so(shard_set, tmp_path: Path, caplog) -> None:
    spec, _ = shard_set
    ds = shard_builder(spec).build_datasets()["train"]
    loader = ResumableLoader("faces", ds, batch_size=2, num_workers=0, seed=3, rank=0, world_size=1,
                             collate_fn=ds.collater)
    first = [next(loader)["image_id"] for _ in range(3)]
    state = loader.state()
    other = ResumableLoader("faces", ds, batch_size=2, num_workers=2, seed=3, rank=0, world_size=1,
                            collate_fn=ds.collater)
    other.load_state(state)
    assert other.batches == 0 and "starts again from its beginning" in caplog.text
    same = ResumableLoader("faces", ds, batch_size=2, num_workers=0, seed=3, rank=0, world_size=1,
                           collate_fn=ds.collater)
    same.load_state(state)
    rest = [next(same)["image_id"] for _ in range(len(same) - 3)]
    fresh = ResumableLoader("faces", ds, batch_size=2, num_workers=0, seed=3, rank=0, world_size=1,
                            collate_fn=ds.collater)
    assert first + rest == [next(fresh)["image_id"] for _ in range(len(fresh))]


@pytest.mark.slow  # two torchrun processes with two loader workers each: about 40 s on 2 cores
def test_torchrun_two_gloo_ranks_two_workers_train_every_sample_once_per_epoch(shard_set, tmp_path: Path) -> None:
    spec, manifest = shard_set
    worker = Path(__file__).with_name("shard_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path), spec]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    seen = [json.loads((tmp_path / f"seen_{r}.json").read_text()) for r in (0, 1)]
    for epoch in (0, 1):
        ids = [i for rank in seen for batch in rank[epoch] for i in batch]
        counts = Counter(ids)
        assert len(counts) == manifest["records"] == 31
        assert len(ids) == 32 and list(counts.values()).count(2) == 1, "31 samples + 1 padding sample per epoch"
    assert seen[0][0] != seen[0][1], "shards are reshuffled each epoch"
    summary = json.loads(next(tmp_path.glob("*/*/summary.json")).read_text())
    assert summary["ranks_in_sync"] is True and summary["samples_seen"] == 64
