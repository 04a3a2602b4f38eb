"""Checkpoint atomicity and lookup; the deterministic sampler and the ``sample_ratio`` mixing loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minigpt4.runners import checkpointing as ck
from minigpt4.runners.loaders import MixingLoader, ResumableLoader, ShardedSampler
from train_doubles import RegressionDataset, RegressionModel


def _state(step: int) -> dict:
    return {"next_epoch": 0, "next_step": step, "payload": torch.full((4,), float(step))}


def _save(manager: ck.CheckpointManager, model: RegressionModel, step: int) -> dict:
    return manager.save(model, _state(step), epoch=0, iters=step, global_step=step, extra={})


class _DiskFull(RuntimeError):
    pass


def _crashing_save(obj: object, fh: object) -> None:
    """Stands in for a torch.save interrupted half-way: some bytes reach the file, then the write fails."""
    fh.write(b"partial checkpoint bytes")  # type: ignore[attr-defined]
    raise _DiskFull("no space left on device")


@pytest.mark.parametrize("crash_in", ["weights", "trainer_state"])
def test_crash_during_save_leaves_previous_checkpoint_latest_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    crash_in: str) -> None:
    model = RegressionModel()
    manager = ck.CheckpointManager(tmp_path, keep_last_k=3)
    first = _save(manager, model, 2)
    calls = {"n": 0}
    real_save = torch.save

    def flaky(obj: object, fh: object) -> None:
        calls["n"] += 1
        crash = (crash_in == "weights" and calls["n"] == 1) or (crash_in == "trainer_state" and calls["n"] == 2)
        return _crashing_save(obj, fh) if crash else real_save(obj, fh)

    monkeypatch.setattr(ck.torch, "save", flaky)
    with pytest.raises(_DiskFull):
        _save(manager, model, 4)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert json.loads((tmp_path / ck.LATEST).read_text())["weights"] == first["weights"]
    target = ck.find_auto_resume(tmp_path.parent, tmp_path.name)
    assert target is not None and target.weights.name == "checkpoint_0_000002.pth"
    assert torch.load(target.trainer_state, weights_only=True)["next_step"] == 2
    assert not (tmp_path / "trainer_state_0_000004.pt").exists(), "no partial file under the final name"
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name], "temporary files are removed"
    if crash_in == "weights":
        assert not (tmp_path / "checkpoint_0_000004.pth").exists()


def test_keep_last_k_prunes_oldest_pairs_and_orphans(tmp_path: Path) -> None:
    model = RegressionModel()
    manager = ck.CheckpointManager(tmp_path, keep_last_k=2)
    (tmp_path / "trainer_state_0_000001.pt").write_bytes(b"orphan of a crashed save")
    for step in (2, 4, 6):
        pointer = _save(manager, model, step)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint_0_000004.pth", "checkpoint_0_000006.pth", "checkpoint_latest.json",
                     "trainer_state_0_000004.pt", "trainer_state_0_000006.pt"]
    assert [h["weights"] for h in pointer["history"]] == ["checkpoint_0_000004.pth", "checkpoint_0_000006.pth"]


def test_saved_weights_are_upstream_style_and_reload(tmp_path: Path) -> None:
    model = RegressionModel()
    ck.save_weights(model, tmp_path / "w.pth", {"epoch": 3})
    raw = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(raw) == {"model", "epoch"} and set(raw["model"]) == {"norm.weight", "norm.bias", "head.weight",
                                                                     "head.bias"}
    other = RegressionModel()
    ck.load_weights(other, tmp_path / "w.pth")
    assert torch.equal(other.head.weight, model.head.weight)
    torch.save({"model": {"head.weight": model.head.weight}}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"missing \['head.bias', 'norm.bias', 'norm.weight'\]"):
        ck.load_weights(other, tmp_path / "bad.pth")


def test_rng_states_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = ck.capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.random(), np.random.rand(), torch.rand(())
    ck.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_resolve_resume_forms(tmp_path: Path) -> None:
    run_dir = tmp_path / "job" / "r1"
    run_dir.mkdir(parents=True)
    _save(ck.CheckpointManager(run_dir, 0), RegressionModel(), 3)
    by_dir = ck.resolve_resume(str(run_dir), tmp_path / "job", None)
    by_pointer = ck.resolve_resume(str(run_dir / ck.LATEST), tmp_path / "job", None)
    by_state = ck.resolve_resume(str(run_dir / "trainer_state_0_000003.pt"), tmp_path / "job", None)
    assert by_dir == by_pointer and by_dir.run_dir == run_dir
    assert by_state.weights.name == "checkpoint_0_000003.pth" and by_state.run_dir is None
    assert ck.resolve_resume(None, tmp_path, None) is None
    assert ck.resolve_resume("auto", tmp_path / "nothing", None) is None
    with pytest.raises(ck.ResumeError, match="no such file or folder"):
        ck.resolve_resume(str(tmp_path / "missing.pth"), tmp_path, None)


def test_sharded_sampler_union_of_ranks_is_the_single_process_batch() -> None:
    single = list(ShardedSampler(20, rank=0, world_size=1, seed=5, pass_index=3, shuffle=True))
    ranks = [list(ShardedSampler(20, rank=r, world_size=2, seed=5, pass_index=3, shuffle=True)) for r in (0, 1)]
    for k in range(5):  # global batch 4 = 2 ranks x 2
        union = sorted(ranks[0][2 * k:2 * k + 2] + ranks[1][2 * k:2 * k + 2])
        assert union == sorted(single[4 * k:4 * k + 4])
    other_pass = list(ShardedSampler(20, rank=0, world_size=1, seed=5, pass_index=4, shuffle=True))
    assert other_pass != single and sorted(other_pass) == sorted(single)
    assert list(ShardedSampler(20, rank=0, world_size=1, seed=5, pass_index=3, shuffle=True, start=7)) == single[7:]
    padded = [list(ShardedSampler(5, rank=r, world_size=2, seed=0, pass_index=0, shuffle=False)) for r in (0, 1)]
    assert padded == [[0, 2, 4], [1, 3, 0]], "padded DistributedSampler-style to equal shares"


def _loader(name: str, n: int, batch: int, seed: int) -> ResumableLoader:
    ds = RegressionDataset(n, seed)
    return ResumableLoader(name, ds, batch_size=batch, num_workers=0, seed=seed, rank=0, world_size=1,
                           collate_fn=ds.collater)


def _take(mix: MixingLoader, n: int) -> list:
    out = []
    for _ in range(n):
        batch = next(mix)
        out.append((mix.last_name, batch["index"]))
    return out


def test_mixing_loader_follows_ratios_and_resumes_exactly() -> None:
    make = lambda: MixingLoader([_loader("a", 9, 2, 1), _loader("b", 7, 3, 2)], [3.0, 1.0], seed=11)  # noqa: E731
    mix = make()
    picks = [mix.choose(step) for step in range(4000)]
    assert 0.72 < picks.count(0) / 4000 < 0.78, "loader a is chosen with probability 3/4"
    head = _take(mix, 25)
    assert head == _take(make(), 25), "the sequence depends only on the seeds"
    a_batches = [idx for name, idx in head if name == "a"]
    assert all(len(b) == 2 for b in a_batches) and len(set(sum(a_batches[:4], []))) == 8, "a pass has no repeats"
    state = json.loads(json.dumps(mix.state()))  # survives serialisation
    tail = _take(mix, 15)
    again = make()
    again.load_state(state)
    assert _take(again, 15) == tail
    with pytest.raises(ValueError, match="sample_ratio values must be >= 0 with a positive sum"):
        MixingLoader([_loader("a", 9, 2, 1)], [0.0], seed=0)
