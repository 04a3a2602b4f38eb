"""``benchmarks/gpu_check.py --tiny``: the GPU acceptance benchmark end to end on CPU at tiny sizes.

The same code runs at full size on a CUDA GPU; here it must build the model through ``from_config``, train with
and without LLM activation checkpointing and with a 4-bit LLM, count model FLOPs, generate, and report bf16
autocast inside the forwards and no GradScaler. (The precision section is tested in ``test_precision.py``.)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from train_support import REPO


def _gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_tiny_acceptance_benchmark_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("bitsandbytes", reason="the 4-bit rows need bitsandbytes (make test installs it)")
    gpu_check = _gpu_check()
    out = tmp_path / "report.json"
    status = gpu_check.main(["--tiny", "--sections", "acceptance", "--peak-tflops", "0.5", "--workdir",
                             str(tmp_path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads(out.read_text())["acceptance"]
    dims = report["dims"]
    rows = {(r["variant"], r["batch"]): r for r in report["train"]}
    assert set(rows) == {(v, b) for v in ("bf16", "bf16+ckpt", "4bit", "4bit+ckpt") for b in dims["batches"]}
    for (variant, batch), row in rows.items():
        assert row["status"] == "ok", row
        assert row["tokens"] == batch * dims["seq_len"] and row["step_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["step_s"])
        assert row["mfu"] == pytest.approx(row["model_tflop"] / row["step_s"] / 0.5)
        assert (row["llm_autocast"], row["vision_autocast"], row["grad_scaler"]) == ("bf16", "bf16", False)
        assert row["llm_weights"] == ("nf4" if variant.startswith("4bit") else "bfloat16")
        assert row["model_tflop"] == rows[("bf16", batch)]["model_tflop"], "one model-FLOP count per batch size"
    small, large = (rows[("bf16", b)]["model_tflop"] for b in dims["batches"])
    ratio = dims["batches"][1] / dims["batches"][0]
    assert large == pytest.approx(small * ratio, rel=0.02), "model FLOPs grow with the batch"
    assert [g["new_tokens"] for g in report["generation"]] == [dims["new_tokens"]] * len(dims["gen_batches"])
    assert all(g["status"] == "ok" and g["tokens_per_s"] > 0 for g in report["generation"])
    assert report["checks"]["autocast_bf16_in_forward"] and report["checks"]["no_grad_scaler"]
    assert "check autocast_bf16_in_forward: PASS" in printed and "4bit+ckpt" in printed


def test_peak_tflops_from_the_device_name() -> None:
    gpu_check = _gpu_check()
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB", 100.0) == 100.0
    assert gpu_check.peak_tflops("Some Future GPU", None) is None
