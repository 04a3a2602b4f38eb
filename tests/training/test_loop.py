"""The inner loop and runner with test doubles: accumulation, non-finite losses, resume, precision, metrics.

The runner and task are the code under test; the model/dataset doubles (``train_doubles.py``) make the loss
controllable (per-sample means that compose exactly, NaN on chosen calls, dropout that consumes the torch RNG).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.metrics import read_metrics
from minigpt4.runners.runner_base import RunnerBase
from minigpt4.tasks.base_task import NonFiniteLossError, total_grad_norm
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask
from train_doubles import RegressionDataset, RegressionModel, make_config, run_double, trainable

CONSTANT_LR = {"init_lr": 0.02, "min_lr": 0.02, "warmup_lr": -1.0, "warmup_steps": 0}


def _splits(n: int = 40, seed: int = 1, val: int = 0, skip_every: int = 0) -> dict:
    out = {"train": RegressionDataset(n, seed, skip_every)}
    if val:
        out["val"] = RegressionDataset(val, seed + 100)
    return out


def _records(runner: RunnerBase, kind: str) -> list:
    return [r for r in read_metrics(runner.run_dir / "metrics.jsonl") if r["type"] == kind]


def test_accumulation_of_8_micro_batches_equals_one_batch_of_8(tmp_path: Path) -> None:
    """Window k of 8 batch-of-1 iterations holds the same 8 samples as big batch k (same seeded permutation).

    The double's loss is a per-sample mean over equal-sized samples, so mean(loss_i)/8-summed gradients equal the
    batch-of-8 gradient; the learning rate is constant so both runs step with the same rate. (With the real
    model's per-token mean, samples of different lengths would weight tokens differently.)
    """
    big_runner, _ = run_double(make_config(tmp_path / "big", {"a": {"batch_size": 8}}, max_epoch=1,
                                           iters_per_epoch=3, **CONSTANT_LR), {"a": _splits()})
    small_runner, summary = run_double(make_config(tmp_path / "small", {"a": {"batch_size": 1}}, max_epoch=1,
                                                   iters_per_epoch=24, accum_grad_iters=8, **CONSTANT_LR),
                                       {"a": _splits()})
    big, small = big_runner.unwrapped_model, small_runner.unwrapped_model
    assert [sorted(b) for b in big.seen] == [sorted(sum(small.seen[i:i + 8], [])) for i in (0, 8, 16)]
    assert summary["optimizer_steps"] == 3
    for name, value in trainable(big).items():
        torch.testing.assert_close(trainable(small)[name], value, rtol=0, atol=2e-6, msg=name)
    big_norms = [r["grad_norm"] for r in _records(big_runner, "train")]
    small_norms = [r["grad_norm"] for r in _records(small_runner, "train")][7::8]
    assert small_norms == pytest.approx(big_norms, rel=1e-5)


def test_upstream_loss_scaling_switch_gives_accum_times_larger_gradients(tmp_path: Path) -> None:
    common = dict(max_epoch=1, iters_per_epoch=4, accum_grad_iters=4, **CONSTANT_LR)
    scaled, _ = run_double(make_config(tmp_path / "s", {"a": {"batch_size": 2}}, **common), {"a": _splits()})
    upstream, _ = run_double(make_config(tmp_path / "u", {"a": {"batch_size": 2}}, scale_loss_by_accum=False,
                                         **common), {"a": _splits()})
    g_scaled = _records(scaled, "train")[-1]["grad_norm"]
    g_upstream = _records(upstream, "train")[-1]["grad_norm"]
    assert g_upstream == pytest.approx(4 * g_scaled, rel=1e-5)


def test_nonfinite_loss_skips_the_whole_window(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"a": {"batch_size": 2}}, max_epoch=1, iters_per_epoch=8, accum_grad_iters=2,
                      save_every_iters=2, keep_last_k=0, **CONSTANT_LR)
    runner, summary = run_double(cfg, {"a": _splits()}, RegressionModel(nan_at=[2]))  # 1st micro-step of window 2
    assert summary["nonfinite_steps"] == 1 and summary["optimizer_steps"] == 3
    events = _records(runner, "nonfinite")
    assert [(e["step"], e["in_a_row"], e["total"]) for e in events] == [(4, 1, 1)]
    load = lambda name: torch.load(runner.run_dir / name, weights_only=True)["model"]  # noqa: E731
    before, after = load("checkpoint_0_000002.pth"), load("checkpoint_0_000004.pth")
    assert all(torch.equal(before[k], after[k]) for k in before), "the skipped window must not change weights"
    assert not all(torch.equal(after[k], load("checkpoint_0_000006.pth")[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in trainable(runner.unwrapped_model).values())


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_epoch=1, iters_per_epoch=8, max_nonfinite_steps=3, **CONSTANT_LR)
    runner = RunnerBase(cfg, ImageTextPretrainTask(), RegressionModel(nan_at=[1, 2, 3]), {"a": _splits()}, "job")
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps in a row.*max_nonfinite_steps=3"):
        runner.train()
    summary = json.loads((runner.run_dir / "summary.json").read_text())
    assert summary["status"].startswith("failed: NonFiniteLossError")
    assert summary["counters"]["nonfinite_steps"] == 3


def test_gradient_clipping_caps_the_norm() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.full((2, 2), 2.0)
    assert float(total_grad_norm(params, None)) == pytest.approx(5.0)  # sqrt(9 + 16)
    assert float(total_grad_norm(params, 1.0)) == pytest.approx(5.0), "the norm before clipping is reported"
    assert float(total_grad_norm(params, None)) == pytest.approx(1.0, rel=1e-5)


def test_resume_from_mid_epoch_checkpoint_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Two datasets mixed 2:1, dropout, accumulation, validation: resuming at epoch 1 iteration 2 replays the
    exact batches and random numbers of the uninterrupted run."""
    datasets = {"a": {"batch_size": 2, "sample_ratio": 2.0}, "b": {"batch_size": 3, "sample_ratio": 1.0}}
    common = dict(max_epoch=3, iters_per_epoch=6, accum_grad_iters=2, save_every_iters=2, keep_last_k=0,
                  valid_splits=["val"], val_every_iters=3)
    data = lambda: {"a": _splits(30, 1, val=6), "b": _splits(20, 2)}  # noqa: E731
    full, full_summary = run_double(make_config(tmp_path, datasets, **common), data(), RegressionModel(dropout=0.3))
    ckpt = full.run_dir / "checkpoint_1_000002.pth"
    resumed, summary = run_double(make_config(tmp_path, datasets, run_id="r1", resume_ckpt_path=str(ckpt), **common),
                                  data(), RegressionModel(dropout=0.3), seed=123)
    assert summary["resumed_from"] == str(ckpt) and resumed.run_dir.name == "r1"
    assert resumed.unwrapped_model.seen == full.unwrapped_model.seen[8:], "same batches after the resume point"
    for name, value in trainable(full.unwrapped_model).items():
        assert torch.equal(trainable(resumed.unwrapped_model)[name], value), name
    assert summary["best_val_loss"] == full_summary["best_val_loss"]
    assert summary["samples_seen"] == full_summary["samples_seen"], "counters continue from the checkpoint"


def test_auto_resume_continues_the_newest_run(tmp_path: Path) -> None:
    common = dict(iters_per_epoch=5, run_id=None, **CONSTANT_LR)
    three, _ = run_double(make_config(tmp_path / "ref", max_epoch=3, **common), {"a": _splits()})
    first, s1 = run_double(make_config(tmp_path, max_epoch=2, resume_ckpt_path="auto", **common), {"a": _splits()})
    assert s1["resumed_from"] is None, "auto with no checkpoint starts a new run"
    more, s2 = run_double(make_config(tmp_path, max_epoch=3, resume_ckpt_path="auto", **common), {"a": _splits()},
                          seed=7)
    assert more.run_dir == first.run_dir and s2["resumed_from"].endswith("checkpoint_1.pth")
    assert s2["global_step"] == 15 and more.start_epoch == 2
    for name, value in trainable(three.unwrapped_model).items():
        assert torch.equal(trainable(more.unwrapped_model)[name], value), name
    steps = [r["global_step"] for r in _records(more, "train")]
    assert steps == list(range(1, 16)), "metrics.jsonl continues without gaps or duplicates"


def test_keep_last_k_and_run_folder_contents(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_epoch=2, iters_per_epoch=6, save_every_iters=2, keep_last_k=2, plot_curves=True,
                      valid_splits=["val"])
    runner, summary = run_double(cfg, {"a": _splits(val=8, skip_every=4)})
    names = sorted(p.name for p in runner.run_dir.iterdir())
    assert [n for n in names if n.startswith(("checkpoint_", "trainer_state_"))] == [
        "checkpoint_1.pth", "checkpoint_1_000004.pth", "checkpoint_best.json", "checkpoint_best.pth",
        "checkpoint_latest.json", "trainer_state_1.pt", "trainer_state_1_000004.pt"]
    assert {"config.yaml", "metrics.jsonl", "summary.json", "train.log", "loss_curve.png"} <= set(names)
    latest = json.loads((runner.run_dir / "checkpoint_latest.json").read_text())
    assert latest["weights"] == "checkpoint_1.pth" and len(latest["history"]) == 2
    state = torch.load(runner.run_dir / latest["trainer_state"], weights_only=True)
    assert state["next_epoch"] == 2 and state["data"]["step"] == 12
    assert summary["samples_seen"] == 24 and summary["skipped_images"] > 0
    assert summary["skipped_images"] == sum(1 for b in runner.unwrapped_model.seen for i in b if i % 4 == 0)
    assert OmegaConf.load(runner.run_dir / "config.yaml").run.save_every_iters == 2
    assert "summary" in (runner.run_dir / "train.log").read_text()
    assert len(_records(runner, "val")) == 2 and summary["best_val_loss"] is not None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(tmp_path: Path, precision: str) -> None:
    cfg = make_config(tmp_path, max_epoch=1, iters_per_epoch=4, precision=precision)
    runner, summary = run_double(cfg, {"a": _splits()})
    assert summary["precision"] == precision and summary["nonfinite_steps"] == 0
    assert (runner.scaler is not None) == (precision == "fp16"), "GradScaler only for fp16"
    assert all(p.dtype == torch.float32 for p in trainable(runner.unwrapped_model).values())


def test_auto_precision_on_cpu_is_fp32_and_trainable_weights_become_fp32(tmp_path: Path) -> None:
    model = RegressionModel()
    model.head.half()
    runner = RunnerBase(make_config(tmp_path), ImageTextPretrainTask(), model, {"a": _splits()}, "job")
    assert runner.precision == "fp32"
    assert runner.unwrapped_model.head.weight.dtype == torch.float32
    assert RunnerBase(make_config(tmp_path, amp=False, precision="bf16"), ImageTextPretrainTask(), RegressionModel(),
                      {"a": _splits()}, "job").precision == "fp32", "amp: False means fp32"


def test_inconsistent_run_settings_are_reported_together(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, accum_grad_iters=4, save_every_iters=6, val_every_iters=5)
    with pytest.raises(ValueError) as err:
        RunnerBase(cfg, ImageTextPretrainTask(), RegressionModel(), {"a": _splits()}, "job")
    assert "save_every_iters (6) must be a multiple of run.accum_grad_iters (4)" in str(err.value)
    assert "run.val_every_iters is set but run.valid_splits is empty" in str(err.value)


def test_missing_validation_split_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    runner = RunnerBase(make_config(tmp_path, valid_splits=["val"]), ImageTextPretrainTask(), RegressionModel(),
                        {"a": _splits()}, "job")
    with pytest.raises(ValueError, match=r"no dataset built such a split.*run.valid_splits=\[\]"):
        runner.train()


def test_resume_from_weights_only_file_starts_after_its_epoch(tmp_path: Path) -> None:
    """A ``.pth`` without a trainer_state beside it (e.g. an upstream checkpoint_<epoch>.pth): weights are loaded
    and training continues at ``epoch + 1`` (upstream's rule) with a fresh optimizer."""
    from minigpt4.runners.checkpointing import save_weights

    source = RegressionModel()
    torch.nn.init.constant_(source.head.weight, 0.25)
    save_weights(source, tmp_path / "pretrained.pth", {"epoch": 1})
    runner, summary = run_double(make_config(tmp_path, max_epoch=3, iters_per_epoch=4,
                                             resume_ckpt_path=str(tmp_path / "pretrained.pth")), {"a": _splits()})
    assert runner.start_epoch == 2 and summary["global_step"] == 12 and summary["optimizer_steps"] == 4
    untouched, _ = run_double(make_config(tmp_path / "none", max_epoch=2, iters_per_epoch=4,
                                          resume_ckpt_path=str(tmp_path / "pretrained.pth")), {"a": _splits()})
    assert torch.equal(untouched.unwrapped_model.head.weight, torch.full((1, 12), 0.25)), "weights were loaded"
