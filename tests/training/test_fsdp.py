"""``run.strategy: fsdp`` (PyTorch FSDP2) on two gloo CPU processes, tiny MiniGPT-v2, full fine-tune of its LLM.

Two ``torchrun --nproc_per_node 2`` runs train the same 10 iterations (5 optimizer steps of 2 accumulated
micro-batches), one under DDP and one under FSDP, with validation on uneven per-rank shares and a checkpoint every 2
iterations. The tests compare the two runs (losses,
validation loss, weights, checkpoint keys), load the FSDP checkpoint the way chat does, and SIGKILL a third FSDP
run (its whole process group) after its first checkpoint, resume it with ``run.resume_ckpt_path=auto`` and compare
its final weights with the uninterrupted FSDP run's.

Tolerance of FSDP vs DDP: relative 1e-5 on losses and gradient norms, absolute 1e-6 on weights (fp32 on CPU; FSDP
reduce-scatters where DDP all-reduces, so only the summation order of two ranks may differ; measured: 0.0).
Resume is compared bit for bit (``run.deterministic=True``, one thread per process).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train
from train_support import REPO, subprocess_env, tiny_options
from minigpt4.common.config import ConfigError, load_config
from minigpt4.common.logger import get_logger
from minigpt4.common.metrics import read_metrics
from minigpt4.common.registry import registry
from minigpt4.runners import fsdp
from minigpt4.runners.settings import check_run_settings

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
STEPS = 10
COMMON = ("model.freeze_llm=False", "model.lora_r=0", "run.max_epoch=1", f"run.iters_per_epoch={STEPS}",
          "run.accum_grad_iters=2", "run.save_every_iters=2", "run.keep_last_k=2", "run.deterministic=True",
          "run.init_lr=1e-3", "run.log_freq=1")


def torchrun_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _records(run_dir: Path, kind: str) -> List[Dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == kind]


@pytest.fixture(scope="module")
def parity_runs(tiny_files: Dict[str, str], train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<job folder>`` holding run folders ``ddp`` and ``fsdp``: the same 10 iterations under each strategy."""
    out = tmp_path_factory.mktemp("fsdp_parity")
    for strategy in ("ddp", "fsdp"):
        options = tiny_options("minigpt_v2", tiny_files, out, *COMMON, f"run.strategy={strategy}",
                               f"run.run_id={strategy}")
        cmd = torchrun_cmd(str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options", *options)
        done = subprocess.run(cmd, env=subprocess_env(train_data), cwd=out, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-4000:]
    return out / "tiny_minigpt_v2"


# ------------------------------------------------------------------------------- in one process


def test_strategy_is_a_checked_choice(tiny_files: Dict[str, str], facegpt_data_env: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "run.strategy=fsdp"))
    assert cfg.run.strategy == "fsdp"
    assert load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path)).run.strategy == "ddp"
    with pytest.raises(ConfigError) as info:
        load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "run.strategy=fdsp"))
    assert "run.strategy" in str(info.value) and "fsdp" in str(info.value)


def test_decoder_layers_are_found_under_peft_and_full_finetune_trains_the_llm(
        tiny_files: Dict[str, str], facegpt_data_env: Path, tmp_path: Path) -> None:
    cfg = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "model.freeze_llm=False"))
    model = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    assert type(model.llama_model).__module__.startswith("peft"), "the tiny v2 preset has LoRA (r=4)"
    layers = fsdp.decoder_layers(model)
    assert len(layers) == model.llama_model.config.num_hidden_layers
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in layers)
    assert all(p.requires_grad for p in model.llama_model.parameters()), "freeze_llm=False: every LLM weight trains"
    lora_only = registry.get_model_class(cfg.model.arch).from_config(
        load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path)).model)
    assert {n for n, p in lora_only.llama_model.named_parameters() if p.requires_grad} == \
        {n for n, _ in lora_only.llama_model.named_parameters() if "lora_" in n}, "the default is unchanged"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_fsdp_in_one_process_trains_unsharded_and_says_so(tiny_files: Dict[str, str], facegpt_data_env: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    records = _Records()
    get_logger().addHandler(records)  # the package logger does not propagate to pytest's capture
    try:
        assert train.main(["--cfg-path", str(TINY_V2), "--options", *tiny_options(
            "minigpt_v2", tiny_files, tmp_path, "run.strategy=fsdp", "run.max_epoch=1", "run.iters_per_epoch=1",
            "run.valid_splits=[]", "run.run_id=one")]) == 0
    finally:
        get_logger().removeHandler(records)
    assert any("run.strategy=fsdp in ONE process" in m for m in records.messages)


def test_quantized_llm_is_refused_in_one_line(tiny_files: Dict[str, str], tiny_llama_dir: Path,
                                              facegpt_data_env: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="pip install -e .[quant] (make test installs it)")
    from minigpt4.models.connectors import ModelConfigError
    from minigpt4.models.llm import load_llm

    llm = load_llm(str(tiny_llama_dir), precision="fp32", quantization="4bit")
    with pytest.raises(fsdp.FSDPConfigError) as info:
        fsdp.check_shardable(llm)
    assert "\n" not in str(info.value) and "Params4bit" in str(info.value) and "run.strategy=ddp" in str(info.value)
    cfg = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "model.freeze_llm=False",
                                            "model.llm_quantization=4bit"))
    with pytest.raises(ModelConfigError, match="quantized weights cannot train"):
        registry.get_model_class(cfg.model.arch).from_config(cfg.model)


def test_feature_cache_is_refused_in_one_line(tiny_files: Dict[str, str], facegpt_data_env: Path,
                                              tmp_path: Path) -> None:
    cfg = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, "model.vit_feature_cache_mb=16"))
    model = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    with pytest.raises(fsdp.FSDPConfigError) as info:
        fsdp.check_shardable(model)
    assert "\n" not in str(info.value) and "model.vit_feature_cache_mb=0" in str(info.value)
    model.vision_cache = None
    fsdp.check_shardable(model)  # the same model without the cache shards


#: Llama-2-7b: 32 layers x 202,383,360 + embeddings and lm_head (32000 x 4096 each) + the final norm (4096)
LLAMA2_7B_PARAMS = 6_738_415_616


def test_full_finetune_config_builds_fsdp_units_on_the_7b_layout(tmp_path: Path, tiny_llama_dir: Path,
                                                                 facegpt_data_env: Path) -> None:
    from transformers import LlamaConfig

    from test_face_configs import LLAMA_7B, _fake_paths

    path = REPO / "train_configs" / "minigptv2_full_finetune_fsdp.yaml"
    assert path.read_text().splitlines()[0].startswith("# FACEGPT_DATA=") and "torchrun" in path.read_text()[:200]
    required = ["model.ckpt", "model.llama_model", "model.vit_ckpt"]
    cfg = load_config(path, _fake_paths(tmp_path, tiny_llama_dir, required))
    assert (cfg.run.strategy, cfg.model.freeze_llm, cfg.model.use_grad_checkpoint_llm) == ("fsdp", False, True)
    check_run_settings(cfg.run)
    model = registry.get_model_class(cfg.model.arch).build_on_meta(cfg.model, LlamaConfig(**LLAMA_7B))
    lora = 32 * 2 * (4096 * 64 + 64 * 4096)  # q_proj and v_proj of 32 layers, r=64
    projection = 5632 * 4096 + 4096  # 4 merged 1408-wide EVA patches -> 4096
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LLAMA2_7B_PARAMS + lora + projection
    layers = fsdp.decoder_layers(model)
    assert len(layers) == 32 and type(layers[0]).__name__ == "LlamaDecoderLayer"


# ------------------------------------------------------------------------------ two gloo processes


@pytest.mark.slow  # two torchrun launches of 2 processes: about 2 minutes on 2 busy cores
def test_fsdp_losses_and_weights_equal_ddp(parity_runs: Path) -> None:
    log = (parity_runs / "fsdp" / "train.log").read_text()
    assert "FSDP2: 2 decoder layer(s) + the root sharded over 2 ranks" in log, "the FSDP run really sharded"
    assert "FSDP2" not in (parity_runs / "ddp" / "train.log").read_text()
    ddp, sharded = _records(parity_runs / "ddp", "train"), _records(parity_runs / "fsdp", "train")
    assert [r["global_step"] for r in sharded] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in sharded] == pytest.approx([r["loss"] for r in ddp], rel=1e-5)
    norms_ddp = [r["grad_norm"] for r in ddp if r["grad_norm"] is not None]  # none before the first step
    assert [r["grad_norm"] for r in sharded if r["grad_norm"] is not None] == pytest.approx(norms_ddp, rel=1e-5)
    assert ddp[0]["loss"] > ddp[-1]["loss"], "the run learns"
    val_ddp, val_fsdp = _records(parity_runs / "ddp", "val"), _records(parity_runs / "fsdp", "val")
    assert val_ddp[0]["val_samples"] % 2 == 1, "uneven validation shares: one rank runs an extra batch"
    assert [r["val_loss"] for r in val_fsdp] == pytest.approx([r["val_loss"] for r in val_ddp], rel=1e-5)
    a, b = _weights(parity_runs / "ddp" / "checkpoint_0.pth"), _weights(parity_runs / "fsdp" / "checkpoint_0.pth")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    summary = json.loads((parity_runs / "fsdp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is None, "shards differ by design"


@pytest.mark.slow  # shares the torchrun fixture above
def test_fsdp_checkpoint_has_the_ddp_keys_and_loads_for_chat(parity_runs: Path) -> None:
    for name in ("checkpoint_0.pth", "checkpoint_best.pth"):
        ddp = torch.load(parity_runs / "ddp" / name, map_location="cpu", weights_only=True)
        sharded = torch.load(parity_runs / "fsdp" / name, map_location="cpu", weights_only=True)
        assert sharded.keys() == ddp.keys() and sharded["model"].keys() == ddp["model"].keys(), name
        assert all(sharded["model"][k].shape == v.shape for k, v in ddp["model"].items()), "full, not shards"
    keys = _weights(parity_runs / "fsdp" / "checkpoint_0.pth")
    assert "llama_model.model.layers.1.mlp.down_proj.weight" in keys and "llama_proj.weight" in keys
    state_ddp = torch.load(parity_runs / "ddp" / "trainer_state_0.pt", weights_only=True)
    state_fsdp = torch.load(parity_runs / "fsdp" / "trainer_state_0.pt", weights_only=True)
    assert state_fsdp.keys() == state_ddp.keys() and state_fsdp["param_names"] == state_ddp["param_names"]
    opt_ddp, opt_fsdp = state_ddp["optimizer"], state_fsdp["optimizer"]
    assert opt_fsdp["state"].keys() == opt_ddp["state"].keys(), "optimizer state by parameter index, as DDP's"
    assert [g["params"] for g in opt_fsdp["param_groups"]] == [g["params"] for g in opt_ddp["param_groups"]]
    for i, moments in opt_ddp["state"].items():
        # squared gradients ~1e-12: accumulation sums the micro-batches in another order (differences ~1e-16)
        torch.testing.assert_close(opt_fsdp["state"][i]["exp_avg_sq"], moments["exp_avg_sq"], rtol=1e-5, atol=1e-14)

    from minigpt4.api import load_model

    chat_model = load_model(parity_runs / "fsdp" / "checkpoint_0.pth", device="cpu").model
    params = dict(chat_model.named_parameters())
    assert torch.equal(params["llama_model.model.layers.1.mlp.down_proj.weight"],
                       keys["llama_model.model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(params["llama_proj.weight"], keys["llama_proj.weight"])


@pytest.mark.slow  # two more torchrun launches (killed, resumed): about 2 minutes on 2 busy cores
def test_fsdp_sigkill_then_auto_resume_equals_uninterrupted_run(parity_runs: Path, tiny_files: Dict[str, str],
                                                                train_data: Path, tmp_path: Path) -> None:
    opts = tiny_options("minigpt_v2", tiny_files, tmp_path, *COMMON, "run.strategy=fsdp", "run.run_id=crashy",
                        "run.resume_ckpt_path=auto")
    cmd = torchrun_cmd(str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options", *opts)
    run_dir = tmp_path / "tiny_minigpt_v2" / "crashy"
    env = subprocess_env(train_data)
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        deadline = time.time() + 400
        while not (run_dir / "checkpoint_latest.json").exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 400 s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as when a node dies
        proc.wait(timeout=60)
    killed_at = json.loads((run_dir / "checkpoint_latest.json").read_text())["global_step"]
    assert killed_at < STEPS and not (run_dir / "summary.json").exists(), "the run must die mid-epoch"

    resumed = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] and summary["global_step"] == STEPS
    reference = _weights(parity_runs / "fsdp" / "checkpoint_0.pth")
    after_crash = _weights(run_dir / "checkpoint_0.pth")
    assert after_crash.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(after_crash[key], value), f"{key} differs after kill + resume (killed at {killed_at})"
    assert [r["global_step"] for r in _records(run_dir, "train")] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in _records(run_dir, "train")] == [r["loss"] for r in _records(parity_runs / "fsdp",
                                                                                              "train")]


@pytest.mark.slow  # one more torchrun launch: about a minute on 2 busy cores
def test_a_ddp_checkpoint_resumes_under_fsdp(parity_runs: Path, tiny_files: Dict[str, str], train_data: Path,
                                             tmp_path: Path) -> None:
    """The trainer state has one form under both strategies: DDP's pair after 8 iterations, continued under FSDP,
    ends on the weights both uninterrupted runs reached (optimizer moments, schedule and data position restored)."""
    pair = parity_runs / "ddp" / "checkpoint_0_000008.pth"
    assert pair.is_file() and (parity_runs / "ddp" / "trainer_state_0_000008.pt").is_file()
    opts = tiny_options("minigpt_v2", tiny_files, tmp_path, *COMMON, "run.strategy=fsdp", "run.run_id=continued",
                        f"run.resume_ckpt_path={pair}")
    cmd = torchrun_cmd(str(REPO / "train.py"), "--cfg-path", str(TINY_V2), "--options", *opts)
    done = subprocess.run(cmd, env=subprocess_env(train_data), cwd=tmp_path, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    run_dir = tmp_path / "tiny_minigpt_v2" / "continued"
    assert [r["global_step"] for r in _records(run_dir, "train")] == [9, 10]
    reference = _weights(parity_runs / "fsdp" / "checkpoint_0.pth")
    continued = _weights(run_dir / "checkpoint_0.pth")
    for key, value in reference.items():
        torch.testing.assert_close(continued[key], value, rtol=0, atol=1e-6, msg=key)
