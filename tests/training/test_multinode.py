"""Multi-node recipe: two torchrun agents ("nodes", one process each) meet at a c10d rendezvous on this machine.

``torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT`` is started twice, as
on two machines sharing the data and the output folder; the run must equal a ``--standalone --nproc_per_node 2``
run of the same config: same losses at every step and the same final weights, bit for bit (``run.deterministic``,
one thread per process). The runs use ``run.strategy=fsdp`` with a full fine-tune of the tiny LLM and activation
checkpointing in its decoder layers, the multi-node case FSDP exists for.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from train_support import REPO, subprocess_env, tiny_options
from minigpt4.common.metrics import read_metrics

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
STEPS = 4
COMMON = ("run.strategy=fsdp", "model.freeze_llm=False", "model.lora_r=0", "model.use_grad_checkpoint_llm=True",
          "run.max_epoch=1", f"run.iters_per_epoch={STEPS}", "run.valid_splits=[]", "run.deterministic=True",
          "run.init_lr=1e-3", "run.log_freq=1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train_cmd(launcher: List[str], options: List[str]) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, str(REPO / "train.py"), "--cfg-path",
            str(TINY_V2), "--options", *options]


def _losses(run_dir: Path) -> List[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow  # three torchrun agents, two runs: about 2 minutes on 2 busy cores
def test_two_nodes_by_c10d_rendezvous_equal_one_node_with_two_processes(tiny_files: Dict[str, str],
                                                                        train_data: Path, tmp_path: Path) -> None:
    env = subprocess_env(train_data)
    port = free_port()
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
            f"127.0.0.1:{port}", "--rdzv_id", "facegpt-multinode-test"]
    multi = _train_cmd(node, tiny_options("minigpt_v2", tiny_files, tmp_path, *COMMON, "run.run_id=multi"))
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    procs = [subprocess.Popen(multi, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
             for log in logs]
    codes = [proc.wait(timeout=900) for proc in procs]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    text = [log.read_text() for log in logs]
    assert sorted(t.count("rank 0 of 2") for t in text) == [0, 1], "rank 0 of one 2-process job runs on one node"
    assert sum(t.count("summary (") for t in text) == 1, "rank 0 alone logs and writes the run's files"

    single = _train_cmd(["--standalone", "--nproc_per_node", "2"],
                        tiny_options("minigpt_v2", tiny_files, tmp_path, *COMMON, "run.run_id=single"))
    done = subprocess.run(single, env=env, cwd=tmp_path, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-4000:]

    job = tmp_path / "tiny_minigpt_v2"
    assert sorted(p.name for p in job.iterdir()) == ["multi", "single"], "both nodes wrote into one run folder"
    summary = json.loads((job / "multi" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == STEPS
    assert len(_losses(job / "multi")) == STEPS and _losses(job / "multi") == _losses(job / "single")
    a, b = _weights(job / "multi" / "checkpoint_0.pth"), _weights(job / "single" / "checkpoint_0.pth")
    assert a.keys() == b.keys() and "llama_model.model.layers.0.self_attn.q_proj.weight" in a
    for key, value in b.items():
        assert torch.equal(a[key], value), key
