"""``run.strategy: fsdp`` under reduced precision: bf16 mixed precision (decoder layers all-gathered in bf16,
gradients reduced in fp32) against DDP under the same policy, and fp16 with the
:class:`~torch.distributed.fsdp.ShardedGradScaler`. Tiny MiniGPT-v2, full fine-tune of its LLM, 10 iterations.

* ``cpu``: two gloo processes (CPU autocast does bf16 and fp16);
* ``cuda``: NCCL over up to 2 GPUs (one is enough: FSDP over a 1-rank mesh runs the same code) — what only a GPU
  shows: NCCL collectives, CUDA placement, CUDA autocast kernels. Run by ``benchmarks/gpu_check.py``; skipped
  without a CUDA device.

Tolerance of FSDP vs DDP under bf16: 1% relative on each loss (measured on CPU: 7e-5). FSDP computes the decoder
layers with bf16 copies of their weights (norms included), DDP's autocast casts only the matmul inputs, so the two
differ by bf16 rounding.
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

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="FSDP over NCCL on CUDA needs a CUDA device (the cpu case covers gloo)")

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
STEPS = 10
COMMON = ("model.freeze_llm=False", "model.lora_r=0", "run.max_epoch=1", f"run.iters_per_epoch={STEPS}",
          "run.save_every_iters=5", "run.init_lr=1e-3", "run.log_freq=1", "run.valid_splits=[]")


def _run(tiny_files: Dict[str, str], data: Path, out: Path, device: str, *extra: str) -> None:
    nproc = str(min(2, torch.cuda.device_count()) if device == "cuda" else 2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc,
           str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options",
           *tiny_options("minigpt_v2", tiny_files, out, *COMMON, f"run.device={device}", *extra)]
    done = subprocess.run(cmd, env=subprocess_env(data), cwd=out, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-4000:]


def _losses(run_dir: Path) -> List[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]


@pytest.mark.slow  # three torchrun launches: about 2.5 minutes on 2 busy CPU cores
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_fsdp_bf16_equals_ddp_bf16_and_fp16_scales(tiny_files: Dict[str, str], train_data: Path, tmp_path: Path,
                                                   device: str) -> None:
    _run(tiny_files, train_data, tmp_path, device, "run.strategy=ddp", "run.precision=bf16", "run.run_id=ddp_bf16")
    _run(tiny_files, train_data, tmp_path, device, "run.strategy=fsdp", "run.precision=bf16",
         "run.run_id=fsdp_bf16")
    job = tmp_path / "tiny_minigpt_v2"
    assert "decoder-layer weights all-gathered in torch.bfloat16" in (job / "fsdp_bf16" / "train.log").read_text()
    ddp, sharded = _losses(job / "ddp_bf16"), _losses(job / "fsdp_bf16")
    assert len(sharded) == STEPS and sharded == pytest.approx(ddp, rel=1e-2)
    assert sharded[-1] < sharded[0], "the run learns"
    a = torch.load(job / "ddp_bf16" / "checkpoint_0.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(job / "fsdp_bf16" / "checkpoint_0.pth", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 and t.shape == a[k].shape for k, t in b.items()), \
        "the full fp32 weights, not bf16 copies or shards"

    _run(tiny_files, train_data, tmp_path, device, "run.strategy=fsdp", "run.precision=fp16",
         "run.run_id=fsdp_fp16")
    state = torch.load(job / "fsdp_fp16" / "trainer_state_0.pt", map_location="cpu", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0, "fp16 runs keep a (sharded) GradScaler"
    summary = json.loads((job / "fsdp_fp16" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["optimizer_steps"] == STEPS
    assert all(math.isfinite(loss) for loss in _losses(job / "fsdp_fp16"))
