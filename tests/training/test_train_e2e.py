"""End to end through ``train.py`` with the real tiny MiniGPT models and the synthetic face data.

In-process runs call ``train.main(argv)``; the crash test and the DDP test start real processes (``train.py`` and
``torchrun``). Comparisons that must be bit-exact run with one intra-op thread (the ``one_thread`` fixture here,
``OMP_NUM_THREADS=1`` in children) and ``run.deterministic=True`` in every process involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from omegaconf import OmegaConf

import train
from train_support import REPO, subprocess_env, tiny_options
from minigpt4.common.config import load_config
from minigpt4.common.metrics import read_metrics
from minigpt4.common.registry import registry

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
TINY_V1 = REPO / "train_configs" / "tiny_minigpt4.yaml"


def _train(cfg: Path, options: List[str]) -> None:
    assert train.main(["--cfg-path", str(cfg), "--options", *options]) == 0


def _summary(run_dir: Path) -> Dict:
    return json.loads((run_dir / "summary.json").read_text())


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _train_records(run_dir: Path, kind: str = "train") -> List[Dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == kind]


def test_tiny_v2_loss_falls_checkpoints_and_validation(tiny_files: Dict[str, str], facegpt_data_env: Path,
                                                       tmp_path: Path) -> None:
    _train(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "run.init_lr=3e-2", "run.max_epoch=3",
                                 "run.iters_per_epoch=8", "run.save_every_iters=4", "run.run_id=e2e",
                                 "run.plot_curves=True"))
    run_dir = tmp_path / "tiny_minigpt_v2" / "e2e"
    summary = _summary(run_dir)
    assert summary["status"] == "completed" and summary["global_step"] == 24
    assert summary["samples_seen"] == 48 and summary["skipped_images"] == 0
    assert summary["truncation"]["samples"] > 0, "the model's truncation counters reach the summary"
    losses = [r["loss"] for r in _train_records(run_dir)]
    assert sum(losses[:4]) / 4 > sum(losses[-4:]) / 4 + 0.05, f"train loss does not fall: {losses}"
    val = [r["val_loss"] for r in _train_records(run_dir, "val")]
    assert len(val) == 3 and val[0] > min(val[1:]), f"validation loss does not fall: {val}"
    assert summary["best_val_loss"] == pytest.approx(min(val)), "the best checkpoint follows the lowest validation loss"
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    assert latest["weights"] == "checkpoint_2.pth" and (run_dir / "checkpoint_best.pth").is_file()
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    saved = _weights(run_dir / "checkpoint_2.pth")
    assert "llama_proj.weight" in saved and any(k.endswith("q_proj.lora_A.weight") for k in saved), \
        "upstream key names (peft 0.2.0 LoRA spelling) in the checkpoint"
    again = load_config(run_dir / "config.yaml")  # the saved config is itself a valid config
    assert again.run.max_epoch == 3 and again.model.llama_model == tiny_files["llama_model"]
    fresh = registry.get_model_class("minigpt_v2").from_config(again.model)
    report = fresh.load_checkpoint(str(run_dir / "checkpoint_2.pth"))
    assert not getattr(report, "unexpected", []), report
    trained = fresh.trainable_state_dict()
    assert all(torch.equal(trained[k], v) for k, v in saved.items())


def test_tiny_minigpt4_v1_trains_only_the_projection(tiny_files: Dict[str, str], facegpt_data_env: Path,
                                                     tmp_path: Path) -> None:
    _train(TINY_V1, tiny_options("minigpt4", tiny_files, tmp_path, "run.max_epoch=1", "run.iters_per_epoch=3",
                                 "run.run_id=v1", "run.valid_splits=[]"))
    run_dir = tmp_path / "tiny_minigpt4" / "v1"
    assert _summary(run_dir)["optimizer_steps"] == 3
    assert set(_weights(run_dir / "checkpoint_0.pth")) == {"llama_proj.weight", "llama_proj.bias"}


# ----------------------------------------------------------------------- equal-length data


@pytest.fixture(scope="session")
def uniform_data(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 FaceGPT4Vision records over the synthetic images, all with the same question and answer text.

    Every sample then has the same number of tokens, so the model's per-token mean loss over a batch equals the
    mean of the per-sample losses — the property that makes accumulation and DDP comparisons exact.
    """
    root = tmp_path_factory.mktemp("uniform")
    images = sorted((train_data / "GPT4VisionData" / "Images").rglob("*.jpg"))[:24]
    assert len(images) == 24
    records = [{"id": f"u{i}", "image": str(p.relative_to(train_data / "GPT4VisionData" / "Images")),
                "conversations": [{"from": "human", "value": "<image>\nDescribe this face briefly."},
                                  {"from": "gpt", "value": "A calm face with short hair and a slight smile."}]}
               for i, p in enumerate(images)]
    (root / "ann.json").write_text(json.dumps({"Uniform": records}))
    return root


def _uniform_config(tmp: Path, data: Path, train_data: Path, batch_size: int, val_fraction: float = 0.0) -> Path:
    cfg = OmegaConf.load(TINY_V2)
    cfg.datasets = {"facegpt4vision": {
        "batch_size": batch_size, "sample_ratio": 1, "sections": ["Uniform"],
        "build_info": {"image_path": str(train_data / "GPT4VisionData" / "Images"), "ann_path": str(data / "ann.json")},
        "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224},
                          "eval": {"name": "blip2_image_eval", "image_size": 224}},
        "split": {"val_fraction": val_fraction, "seed": 0}}}
    path = tmp / f"uniform_b{batch_size}.yaml"
    OmegaConf.save(cfg, path)
    return path


CONSTANT = ["run.init_lr=1e-2", "run.min_lr=1e-2", "run.warmup_lr=-1", "run.warmup_steps=0", "model.lora_dropout=0.0",
            "run.valid_splits=[]"]


def test_real_model_8_micro_batches_equal_one_batch_of_8(tiny_files: Dict[str, str], uniform_data: Path,
                                                        train_data: Path, tmp_path: Path) -> None:
    """accum_grad_iters=8 over batches of 1 gives the update of one batch of 8 (equal-length samples, constant
    LR, no dropout; the loss is divided by accum_grad_iters)."""
    big = _uniform_config(tmp_path, uniform_data, train_data, 8)
    small = _uniform_config(tmp_path, uniform_data, train_data, 1)
    _train(big, tiny_options("minigpt_v2", tiny_files, tmp_path, *CONSTANT, "run.max_epoch=1",
                             "run.iters_per_epoch=2", "run.run_id=big"))
    _train(small, tiny_options("minigpt_v2", tiny_files, tmp_path, *CONSTANT, "run.max_epoch=1",
                               "run.iters_per_epoch=16", "run.accum_grad_iters=8", "run.run_id=small"))
    job = tmp_path / "tiny_minigpt_v2"
    assert _summary(job / "small")["optimizer_steps"] == 2
    big_log, small_log = _train_records(job / "big"), _train_records(job / "small")
    small_losses = [r["loss"] for r in small_log]
    assert [r["loss"] for r in big_log] == pytest.approx([sum(small_losses[:8]) / 8, sum(small_losses[8:]) / 8],
                                                         rel=1e-6), "batch loss = mean of the 8 micro-batch losses"
    assert [small_log[7]["grad_norm"], small_log[15]["grad_norm"]] == pytest.approx(
        [r["grad_norm"] for r in big_log], rel=1e-5), "same gradient (AdamW alone would hide a scale error)"
    a, b = _weights(job / "big" / "checkpoint_0.pth"), _weights(job / "small" / "checkpoint_0.pth")
    for key in a:  # Adam divides by sqrt(v): near-zero gradients amplify rounding, hence 1% of one lr step
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=key)
    assert any("lora_B" in k and float(a[k].abs().max()) > 1e-4 for k in a), "peft starts lora_B at 0: it moved"


# ------------------------------------------------------------------------ crash and resume


def _popen(cmd: List[str], env: Dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def test_sigkill_mid_run_then_auto_resume_equals_uninterrupted_run(tiny_files: Dict[str, str], train_data: Path,
                                                                   facegpt_data_env: Path, tmp_path: Path) -> None:
    common = ["run.max_epoch=3", "run.iters_per_epoch=10", "run.save_every_iters=2", "run.keep_last_k=2",
              "run.deterministic=True", "run.init_lr=1e-2"]
    opts = tiny_options("minigpt_v2", tiny_files, tmp_path, *common, "run.run_id=crashy",
                        "run.resume_ckpt_path=auto")
    cmd = [sys.executable, str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options", *opts]
    run_dir = tmp_path / "tiny_minigpt_v2" / "crashy"
    proc = _popen(cmd, subprocess_env(train_data), tmp_path / "killed.log", tmp_path)
    deadline = time.time() + 180
    while not (run_dir / "checkpoint_latest.json").exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = json.loads((run_dir / "checkpoint_latest.json").read_text())["global_step"]
    assert killed_at < 30 and not (run_dir / "summary.json").exists(), "the process must die mid-run"

    resumed = subprocess.run(cmd, env=subprocess_env(train_data), cwd=tmp_path, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    summary = _summary(run_dir)
    assert summary["resumed_from"] and summary["global_step"] == 30

    _train(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, *common, "run.run_id=straight"))
    reference = _weights(tmp_path / "tiny_minigpt_v2" / "straight" / "checkpoint_2.pth")
    after_crash = _weights(run_dir / "checkpoint_2.pth")
    for key, value in reference.items():
        assert torch.equal(after_crash[key], value), f"{key} differs after kill + resume (killed at {killed_at})"
    steps = [r["global_step"] for r in _train_records(run_dir)]
    assert steps == list(range(1, 31)), "metrics.jsonl keeps each step once across the crash"


# ------------------------------------------------------------------------------------- DDP


def test_torchrun_two_cpu_processes_match_one_process_with_twice_the_batch(
        tiny_files: Dict[str, str], uniform_data: Path, train_data: Path, tmp_path: Path) -> None:
    common = [*CONSTANT[:-1], "run.valid_splits=[val]", "run.max_epoch=2", "run.iters_per_epoch=4",
              "run.save_every_iters=2", "run.deterministic=True", "run.log_freq=1"]
    ddp_cfg = _uniform_config(tmp_path, uniform_data, train_data, 2, val_fraction=0.25)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train.py"), "--cfg-path", str(ddp_cfg), "--options",
           *tiny_options("minigpt_v2", tiny_files, tmp_path, *common, "run.run_id=ddp")]
    done = subprocess.run(cmd, env=subprocess_env(train_data), cwd=tmp_path, capture_output=True, timeout=400)
    log = done.stderr.decode()
    assert done.returncode == 0, log[-4000:]
    job = tmp_path / "tiny_minigpt_v2"
    assert sorted(p.name for p in job.iterdir()) == ["ddp"], "one run folder for both ranks"
    summary = _summary(job / "ddp")
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["rank_param_max_abs_diff"] == 0.0 and summary["samples_seen"] == 2 * 2 * 8
    assert log.count("summary (") == 1 and log.count("rank 0 of 2") == 1, "logged once (rank 0)"
    assert [r["global_step"] for r in _train_records(job / "ddp")] == list(range(1, 9))

    single_cfg = _uniform_config(tmp_path, uniform_data, train_data, 4, val_fraction=0.25)
    _train(single_cfg, tiny_options("minigpt_v2", tiny_files, tmp_path, *common, "run.run_id=single"))
    ddp_w, single_w = _weights(job / "ddp" / "checkpoint_1.pth"), _weights(job / "single" / "checkpoint_1.pth")
    for key in single_w:
        torch.testing.assert_close(ddp_w[key], single_w[key], rtol=1e-4, atol=1e-5, msg=key)
    ddp_val = [r["val_loss"] for r in _train_records(job / "ddp", "val")]
    single_val = [r["val_loss"] for r in _train_records(job / "single", "val")]
    assert ddp_val == pytest.approx(single_val, rel=1e-5) and len(ddp_val) == 2
