"""``benchmarks/gpu_check.py --tiny``: the GPU acceptance benchmark end to end on CPU at tiny sizes.

The same code runs at full size on a CUDA GPU; here it must build the model through ``from_config``, train with
and without LLM activation checkpointing and with a 4-bit LLM, count model FLOPs, generate, and report bf16
autocast inside the forwards and no GradScaler. (The precision section is tested in ``test_precision.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train_support import load_gpu_check


def test_tiny_acceptance_benchmark_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("bitsandbytes", reason="the 4-bit rows need bitsandbytes (make test installs it)")
    gpu_check = load_gpu_check()
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
    gpu_check = load_gpu_check()
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB", 100.0) == 100.0
    assert gpu_check.peak_tflops("Some Future GPU", None) is None


def test_full_size_dimensions_are_llama2_7b_eva_g_448_lora_64() -> None:
    """The acceptance model on the meta device: LLaMA-2-7B's 6,738,415,616 LLM weights, EVA-ViT-g at 448 (256
    merged image tokens), LoRA r=64 on q/v (32 layers x 2 x 2 x 4096 x 64) plus llama_proj 5632 -> 4096 trained."""
    from transformers import LlamaConfig

    from minigpt4.common.registry import registry

    gpu_check = load_gpu_check()
    full = gpu_check.FULL
    llm_config = LlamaConfig(**full.llm, num_key_value_heads=full.llm["num_attention_heads"])
    model = registry.get_model_class("minigpt_v2").build_on_meta(gpu_check.model_config(full), llm_config)
    base = model.llama_model.get_base_model()
    assert sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n) == 6_738_415_616
    assert model.num_image_tokens == 256 and model.visual_encoder.num_features == 1408
    assert len(model.visual_encoder.blocks) == 39
    lora = 32 * 2 * 2 * 4096 * 64
    assert model.count_parameters()["trainable"] == lora + 5632 * 4096 + 4096
    assert (full.seq_len, full.batches, full.gen_batches) == (1024, (1, 4), (1, 8))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks what a machine without CUDA prints")
def test_cuda_tests_section_says_it_was_skipped_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gpu_check = load_gpu_check()
    out = tmp_path / "report.json"
    assert gpu_check.main(["--tiny", "--sections", "cuda-tests", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert "CUDA tests skipped: they need a CUDA device" in capsys.readouterr().out
    assert "cuda_tests" not in json.loads(out.read_text())
