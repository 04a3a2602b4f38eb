"""``run.strategy: fsdp`` on CUDA: NCCL, bf16 mixed precision (all-gather in bf16, gradients reduced in fp32) and
fp16 with the :class:`~torch.distributed.fsdp.ShardedGradScaler` — what the CPU tests (``test_fsdp.py``: gloo, fp32)
cannot show. Tiny MiniGPT-v2 with a full fine-tune of its LLM, ``torchrun`` over up to 2 GPUs (one is enough: FSDP
over a 1-rank mesh runs the same code). Run by ``benchmarks/gpu_check.py``; skipped without a CUDA device.

Tolerance of FSDP vs DDP under bf16: 2% relative on each loss. FSDP computes with bf16 copies of every weight
(norms included), DDP's autocast casts only the matmul inputs, so the two differ by bf16 rounding.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from train_support import REPO, subprocess_env, tiny_options
from minigpt4.common.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="FSDP over NCCL with bf16 all-gather and the fp16 ShardedGradScaler needs a CUDA device "
           "(test_fsdp.py covers gloo on CPU in fp32)")]

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
STEPS = 10
COMMON = ("model.freeze_llm=False", "model.lora_r=0", "run.device=cuda", "run.max_epoch=1",
          f"run.iters_per_epoch={STEPS}", "run.save_every_iters=5", "run.init_lr=1e-3", "run.log_freq=1")


def _run(tiny_files: Dict[str, str], data: Path, out: Path, *extra: str) -> None:
    nproc = str(min(2, torch.cuda.device_count()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc,
           str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options",
           *tiny_options("minigpt_v2", tiny_files, out, *COMMON, *extra)]
    done = subprocess.run(cmd, env=subprocess_env(data), cwd=out, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-4000:]


def _losses(run_dir: Path) -> List[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]


def test_fsdp_bf16_and_fp16_on_cuda(tiny_files: Dict[str, str], train_data: Path, tmp_path: Path) -> None:
    _run(tiny_files, train_data, tmp_path, "run.strategy=ddp", "run.precision=bf16", "run.run_id=ddp_bf16")
    _run(tiny_files, train_data, tmp_path, "run.strategy=fsdp", "run.precision=bf16", "run.run_id=fsdp_bf16")
    job = tmp_path / "tiny_minigpt_v2"
    assert "all-gather dtype torch.bfloat16, gradient reduction fp32" in (job / "fsdp_bf16" / "train.log").read_text()
    ddp, sharded = _losses(job / "ddp_bf16"), _losses(job / "fsdp_bf16")
    assert len(sharded) == STEPS and sharded == pytest.approx(ddp, rel=2e-2)
    assert sharded[-1] < sharded[0], "the run learns"
    a = torch.load(job / "ddp_bf16" / "checkpoint_0.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(job / "fsdp_bf16" / "checkpoint_0.pth", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 and t.shape == a[k].shape for k, t in b.items()), \
        "the full fp32 weights, not bf16 copies or shards"

    _run(tiny_files, train_data, tmp_path, "run.strategy=fsdp", "run.precision=fp16", "run.run_id=fsdp_fp16")
    state = torch.load(job / "fsdp_fp16" / "trainer_state_0.pt", map_location="cpu", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0, "fp16 runs keep a (sharded) GradScaler"
    summary = json.loads((job / "fsdp_fp16" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == STEPS
    assert all(math.isfinite(loss) for loss in _losses(job / "fsdp_fp16"))
