"""The memory planner (python -m minigpt4.tools.memory): full-size configs on meta, no weight files.

Weight figures are checked against parameter counts computed here from the LLaMA-2-7B / EVA-ViT-g dimensions;
activations for their structure (linear in the batch, smaller with checkpointing); the largest batch against the
plan itself; the tiny config against a measured training step (the benchmark's tensor accounting).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from minigpt4.tools import memory

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d [DIWEC] ")  # minigpt4.common.logger's format

REPO = Path(__file__).resolve().parents[1]
V2 = str(REPO / "train_configs" / "minigptv2_finetune_gpt4vision.yaml")
V1 = str(REPO / "train_configs" / "minigpt4_stage2_finetune_gpt4vision.yaml")
TINY = str(REPO / "train_configs" / "tiny_minigpt_v2.yaml")

H, I, LAYERS, VOCAB = 4096, 11008, 32, 32000  # LLaMA-2-7B
DECODER_LINEARS = LAYERS * (4 * H * H + 3 * H * I)
LLM_REST = 2 * VOCAB * H + LAYERS * 2 * H + H  # embeddings, head, norms
VIT_448 = 986_975_872 + 2 * 1408  # EVA-ViT-g at 448 + ln_vision
TRAINABLE_V2 = 23_072_768 + 33_554_432  # llama_proj + LoRA r=64 on q/v


def _plan_json(capsys: pytest.CaptureFixture, *args: str) -> Dict[str, Any]:
    assert memory.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_full_size_v2_weights_from_the_builtin_table(capsys: pytest.CaptureFixture) -> None:
    plan = _plan_json(capsys, "--cfg-path", V2, "--batch-size", "4", "--max-len", "1024")
    assert plan["llm_source"].startswith("built-in llama2-7b table")
    assert plan["seq_len"] == 256 + 1024 and plan["image_tokens"] == 256
    assert plan["trainable_params"] == TRAINABLE_V2
    assert plan["weights"] == {"LLM frozen bf16": 2 * (DECODER_LINEARS + LLM_REST),
                               "vision frozen bf16": 2 * VIT_448, "trainable fp32": 4 * TRAINABLE_V2}
    assert plan["gradients"] == 4 * TRAINABLE_V2 and plan["optimizer"] == 8 * TRAINABLE_V2
    assert plan["activations_checkpointed"] < plan["activations"] / 4
    # bf16 autocast copies of the fp32 trainable linear weights (projection and LoRA); frozen ones are stored bf16
    assert plan["cast_copies"] == 2 * (5632 * 4096 + 33_554_432)
    assert plan["total"] == pytest.approx(sum(plan["weights"].values()) + plan["cast_copies"] + 12 * TRAINABLE_V2
                                          + plan["activations"])


def test_4bit_weights_and_kbit_preparation(capsys: pytest.CaptureFixture) -> None:
    plan = _plan_json(capsys, "--cfg-path", V2, "--options", "model.llm_quantization=4bit")
    per_weight = 0.5 + 1 / 64 + 4 / (64 * 256)
    assert plan["quantization"] == "4bit"
    assert plan["weights"]["LLM 4bit (bitsandbytes)"] == pytest.approx(per_weight * DECODER_LINEARS)
    assert plan["weights"]["LLM frozen fp32"] == 4 * LLM_REST  # LoRA's k-bit preparation casts the rest to fp32
    eight = _plan_json(capsys, "--cfg-path", V2, "--options", "model.low_resource=True")
    assert eight["quantization"] == "8bit" and eight["weights"]["LLM 8bit (bitsandbytes)"] == DECODER_LINEARS


def test_activations_are_linear_in_the_batch_and_largest_batch_fits(capsys: pytest.CaptureFixture) -> None:
    one = _plan_json(capsys, "--cfg-path", V2, "--batch-size", "1", "--max-len", "512")
    three = _plan_json(capsys, "--cfg-path", V2, "--batch-size", "3", "--max-len", "512")
    assert three["activations"] == pytest.approx(3 * one["activations"])
    assert three["activations_checkpointed"] == pytest.approx(3 * one["activations_checkpointed"])
    fit = _plan_json(capsys, "--cfg-path", V2, "--max-len", "512", "--gpu-gb", "40")["largest_batch"]
    fixed = one["total"] - one["activations"]  # weights, autocast copies, gradients, optimizer
    fixed_ckpt = one["total_checkpointed"] - one["activations_checkpointed"]
    gib = 1024**3
    assert fixed + fit["plain"] * one["activations"] <= 40 * gib < fixed + (fit["plain"] + 1) * one["activations"]
    n = fit["checkpointed"]
    assert fixed_ckpt + n * one["activations_checkpointed"] <= 40 * gib
    assert 40 * gib < fixed_ckpt + (n + 1) * one["activations_checkpointed"] and n > fit["plain"]


def test_printed_table_and_v1_vicuna_default(capsys: pytest.CaptureFixture) -> None:
    assert memory.main(["--cfg-path", V1, "--batch-size", "2", "--gpu-gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "LLM architecture: built-in vicuna-7b table" in out
    for line in ("weights:", "trainable parameters: 3,149,824", "optimizer (AdamW m+v fp32)", "activations, LLM "
                 "checkpointed", "largest batch on 24 GiB"):
        assert line in out


def test_architecture_read_from_the_llm_folder(tiny_llama_dir: Path, capsys: pytest.CaptureFixture) -> None:
    plan = _plan_json(capsys, "--cfg-path", TINY, "--device", "cpu",
                      "--options", f"model.llama_model={tiny_llama_dir}")
    assert plan["llm_source"] == str(tiny_llama_dir / "config.json")
    assert plan["precision"].startswith("fp32 on cpu")
    assert plan["batch_size"] == 2  # the config's dataset batch size


@pytest.mark.parametrize("args,message", [
    (["--cfg-path", "nowhere.yaml"], "--cfg-path nowhere.yaml: no such file"),
    (["--cfg-path", V2, "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--cfg-path", V2, "--gpu-gb", "-1"], "--gpu-gb -1: must be positive"),
    (["--cfg-path", V2, "--options", "model.low_resource=True", "model.llm_quantization=4bit"],
     "model.low_resource=True (upstream's 8-bit switch) contradicts model.llm_quantization=4bit"),
])
def test_user_mistakes_are_one_line(capsys: pytest.CaptureFixture, args: List[str], message: str) -> None:
    assert memory.main(args) == 2
    stderr = capsys.readouterr().err
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]  # log records aside
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr, lines


def test_tiny_plan_within_25_percent_of_a_measured_training_step() -> None:
    spec = importlib.util.spec_from_file_location("bench_memory_planner", REPO / "benchmarks" /
                                                  "bench_memory_planner.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run("tiny", repeats=1)
    assert 0.75 <= result["ratio"] <= 1.25, result
