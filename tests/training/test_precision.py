"""One owner of precision: ``run.precision`` decides the autocast seen inside the LLM and the vision tower, the
GradScaler (fp16 only) and the storage of frozen weights, in training, validation and every shipped config.

The training tests run a real step of the tiny MiniGPT-v2 through the task, the runner and the train loop, and
record ``torch.is_autocast_enabled`` / ``torch.get_autocast_dtype`` in forward pre-hooks on ``model.llama_model``
and ``model.visual_encoder``. The CUDA variants run where a GPU is present. ``EXPECTED`` is the table of the
README ("Precision per config"); ``python tests/training/test_precision.py`` prints it as Markdown.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn
from transformers import LlamaConfig

from train_support import REPO, load_gpu_check, tiny_options
from minigpt4.common.config import Config, ConfigError, load_config
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import (FrozenStorage, PrecisionPolicy, apply_frozen_storage, frozen_storage,
                                       policy_from_run_config, resolve_precision_name, storage_precision)
from minigpt4.common.registry import registry
from minigpt4.runners.launch import build_runner
from minigpt4.tasks.base_task import LoopContext

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# ------------------------------------------------------------------------------------------- the documented table
#: device columns of the table
COLUMNS = {"bf16_gpu": "CUDA GPU with bf16 (A100, H100, RTX 30xx+)", "fp16_gpu": "CUDA GPU without bf16 (V100, T4)",
           "cpu": "CPU"}
# a row cell: (compute dtype, GradScaler?, frozen-weight storage), or None where the config is refused there
Cell = Optional[Tuple[str, bool, str]]
HALF = {"bf16_gpu": ("bf16", False, "LLM bf16, vision tower bf16"),
        "fp16_gpu": ("fp16", True, "LLM fp16, vision tower fp16"),
        "cpu": ("fp32", False, "LLM fp32, vision tower fp32")}
HALF_8BIT = {"bf16_gpu": ("bf16", False, "LLM int8 + bf16, vision tower bf16"),
             "fp16_gpu": ("fp16", True, "LLM int8 + fp16, vision tower fp16"),
             "cpu": ("fp32", False, "LLM int8 + fp32, vision tower fp32")}
FP32_WEIGHTS = {"bf16_gpu": ("bf16", False, "LLM fp32, vision tower fp32"),
                "fp16_gpu": ("fp16", True, "LLM fp32, vision tower fp32"),
                "cpu": ("fp32", False, "LLM fp32, vision tower fp32")}
EXPECTED: Dict[str, Dict[str, Cell]] = {
    "train_configs/minigptv2_finetune_gpt4vision.yaml": HALF,
    "train_configs/minigpt4_stage2_finetune_gpt4vision.yaml": HALF,
    "train_configs/tiny_minigpt_v2.yaml": FP32_WEIGHTS,
    "train_configs/tiny_minigpt4.yaml": FP32_WEIGHTS,
    "train_configs/minigptv2_full_finetune_fsdp.yaml": {"bf16_gpu": ("bf16", False, "LLM fp32, vision tower bf16"),
                                                        "fp16_gpu": ("fp16", True, "LLM fp32, vision tower fp16"),
                                                        "cpu": ("fp32", False, "LLM fp32, vision tower fp32")},
    "train_configs/demo_smollm2.yaml": FP32_WEIGHTS,
    "eval_configs/facegpt_v2_eval.yaml": HALF,
    "eval_configs/facegpt_v1_eval.yaml": HALF,
    "eval_configs/minigptv2_eval.yaml": HALF_8BIT,
    "eval_configs/minigpt4_eval.yaml": HALF_8BIT,
    "eval_configs/minigpt4_llama2_eval.yaml": HALF_8BIT,
    "eval_configs/tiny_minigpt_v2_eval.yaml": FP32_WEIGHTS,
    "eval_configs/tiny_minigpt4_eval.yaml": FP32_WEIGHTS,
    "eval_configs/demo_smollm2_eval.yaml": FP32_WEIGHTS,
}


def _cell_text(cell: Cell, config: str, column: str) -> str:
    if cell is None:
        return "refused: bf16 unsupported (set run.precision=auto)"
    compute, scaler, storage = cell
    training = config.startswith("train_configs/")  # chat and evaluation compute no gradient: no GradScaler
    text = f"{compute}{' + GradScaler' if scaler and training else ''}; {storage}"
    if column == "cpu" and "int8" in storage:
        text += " (8-bit loading needs CUDA: model.low_resource=False on CPU)"
    return text


def render_table() -> str:
    """``EXPECTED`` as the README's Markdown table."""
    lines = ["| config | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for config, row in EXPECTED.items():
        lines.append(f"| `{config}` | " + " | ".join(_cell_text(row[c], config, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _load_shipped(name: str) -> Config:
    """A shipped config with its required paths filled by dummies (precision needs no file)."""
    path = REPO / name
    try:
        return load_config(path, check_paths=False, check_dataset_paths=False)
    except ConfigError as err:
        fills = [f"{p.key}=/unused" for p in err.problems if "required value is not set" in p.message]
        assert len(fills) == len(err.problems), f"{name} has a real problem: {err}"
        return load_config(path, fills, check_paths=False, check_dataset_paths=False)


def _resolve(cfg: Config, device: torch.device) -> Cell:
    """What a config resolves to on ``device``: compute dtype, GradScaler, frozen storage (None when refused)."""
    try:
        policy = policy_from_run_config(cfg.run, device)
    except ValueError as err:
        assert "does not support bf16" in str(err)
        return None
    return policy.name, policy.uses_grad_scaler, str(frozen_storage(cfg.model, policy))


def test_every_shipped_config_is_in_the_table() -> None:
    shipped = {str(p.relative_to(REPO)) for d in ("train_configs", "eval_configs") for p in (REPO / d).glob("*.yaml")}
    assert shipped == set(EXPECTED), "add new configs to EXPECTED (and the README table)"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_resolves_to_the_table_cpu_row(name: str) -> None:
    assert _resolve(_load_shipped(name), torch.device("cpu")) == EXPECTED[name]["cpu"]


@needs_cuda
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_resolves_to_the_table_gpu_row_cuda(name: str) -> None:
    column = "bf16_gpu" if torch.cuda.is_bf16_supported() else "fp16_gpu"
    assert _resolve(_load_shipped(name), torch.device("cuda")) == EXPECTED[name][column]


def test_readme_holds_the_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert render_table() in readme, ("README.md lacks the current precision table: paste the output of "
                                      "`python tests/training/test_precision.py` under 'Precision per config'")


# ------------------------------------------------------------------------------------------- the rules, one by one
@pytest.mark.parametrize("requested, policy, stored", [
    ("fp16", "bf16", "bf16"), ("bf16", "bf16", "bf16"), ("fp32", "bf16", "fp32"),
    ("fp16", "fp16", "fp16"), ("bf16", "fp16", "fp16"), ("fp32", "fp16", "fp32"),
    ("fp16", "fp32", "fp32"), ("bf16", "fp32", "fp32"), ("fp32", "fp32", "fp32"),
])
def test_frozen_storage_follows_the_compute_dtype(requested: str, policy: str, stored: str) -> None:
    assert storage_precision(requested, PrecisionPolicy(policy, "cuda")) == stored


def test_trainable_tower_and_8bit_llm_storage() -> None:
    policy = PrecisionPolicy("bf16", "cuda")
    storage = frozen_storage({"vit_precision": "fp16", "freeze_vit": False, "low_resource": True}, policy)
    assert storage == FrozenStorage(llm="bf16", vit="fp32", llm_quant="8bit")
    assert str(storage) == "LLM int8 + bf16, vision tower fp32"


def test_a_fully_trained_llm_is_stored_in_fp32_under_any_policy() -> None:
    """``freeze_llm: False`` trains every LLM weight: AdamW must update fp32 weights, never half-precision storage."""
    for name in ("bf16", "fp16"):
        storage = frozen_storage({"llm_precision": "fp16", "freeze_llm": False}, PrecisionPolicy(name, "cuda"))
        assert storage.llm == "fp32" and storage.vit == name


def test_4bit_llm_storage_is_named_in_the_log_line() -> None:
    storage = frozen_storage({"llm_quantization": "4bit"}, PrecisionPolicy("bf16", "cuda"))
    assert storage.llm_quant == "4bit"
    assert str(storage) == "LLM nf4 + bf16, vision tower bf16"


def test_apply_rewrites_the_model_keys_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    model_cfg: Dict[str, Any] = {"llm_precision": "fp16", "vit_precision": "fp32", "freeze_vit": True}
    package = get_logger()
    package.addHandler(caplog.handler)  # the package logger may not propagate (setup_logging)
    try:
        with caplog.at_level(logging.INFO, logger=package.name):
            apply_frozen_storage(model_cfg, PrecisionPolicy("bf16", "cuda"))
    finally:
        package.removeHandler(caplog.handler)
    assert model_cfg["llm_precision"] == "bf16" and model_cfg["vit_precision"] == "fp32"
    records = list(dict.fromkeys(caplog.records))  # a record reaches the handler twice when the logger propagates
    notes = [r.getMessage() for r in records if "upstream key" in r.getMessage()]
    assert len(notes) == 1 and "model.llm_precision=fp16" in notes[0] and "stored in bf16" in notes[0]


def test_flagship_v2_full_size_frozen_weights_stored_in_bf16_under_bf16_compute() -> None:
    """The full-size v2 face config on ``meta`` (7B layout): under bf16 compute no frozen weight is stored in fp16
    (the rule for every other combination is checked above)."""
    cfg = _load_shipped("train_configs/minigptv2_finetune_gpt4vision.yaml")
    apply_frozen_storage(cfg.model, PrecisionPolicy("bf16", "cuda"))
    model = registry.get_model_class(cfg.model.arch).build_on_meta(cfg.model, LlamaConfig(**LLAMA_7B))
    want = torch.bfloat16
    frozen_llm = {p.dtype for n, p in model.llama_model.named_parameters() if not p.requires_grad}
    frozen_vit = {m.weight.dtype for m in model.visual_encoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert frozen_llm == {want} and frozen_vit == {want}


@pytest.mark.parametrize("requested, amp, name", [("auto", True, "fp32"), ("bf16", True, "bf16"),
                                                  ("fp16", True, "fp16"), ("bf16", False, "fp32")])
def test_cpu_resolution(requested: str, amp: bool, name: str) -> None:
    assert resolve_precision_name(requested, torch.device("cpu"), amp) == name


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="run.precision='fp8' is not one of auto, bf16, fp16, fp32"):
        resolve_precision_name("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        PrecisionPolicy("auto", "cpu")


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32"])
def test_grad_scaler_exists_exactly_for_fp16(name: str) -> None:
    policy = PrecisionPolicy(name, "cpu")
    assert (policy.grad_scaler() is not None) == (name == "fp16") == policy.uses_grad_scaler
    with policy.autocast():
        assert torch.is_autocast_enabled("cpu") == (name != "fp32")
        if name != "fp32":
            assert torch.get_autocast_dtype("cpu") == policy.dtype


def test_loop_refuses_a_scaler_the_policy_does_not_have() -> None:
    model = nn.Linear(2, 2)
    common = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), lr_scheduler=None,
                  data_loader=iter([]), device=torch.device("cpu"), iters_per_epoch=1)
    with pytest.raises(ValueError, match="GradScaler was not given"):
        LoopContext(precision=PrecisionPolicy("fp16", "cpu"), **common)
    with pytest.raises(ValueError, match="GradScaler was given"):
        LoopContext(precision=PrecisionPolicy("bf16", "cpu"), scaler=torch.amp.GradScaler("cpu"), **common)


# ------------------------------------------------------------------------- a real training step, hooks inside
Record = Tuple[str, bool, bool, torch.dtype]  # (module, model in training mode, autocast enabled, autocast dtype)


def _record_autocast(model: nn.Module, device_type: str) -> List[Record]:
    """Forward pre-hooks on the LLM and the vision tower that record the autocast state they run under."""
    seen: List[Record] = []

    def hook(name: str):
        def record(module: nn.Module, args: Any, kwargs: Any = None) -> None:
            seen.append((name, model.training, torch.is_autocast_enabled(device_type),
                         torch.get_autocast_dtype(device_type)))
        return record

    model.llama_model.register_forward_pre_hook(hook("llm"))
    model.visual_encoder.register_forward_pre_hook(hook("vision"))
    return seen


def _train_tiny_v2(tiny_files: Dict[str, str], out: Path, device: str, precision: str,
                   *extra: str) -> Tuple[Any, Dict[str, Any], List[Record]]:
    """One optimizer step and one validation batch of the tiny v2 model (frozen weights declared half, as in
    the full-size presets) through the task, the runner and the train loop; returns runner, summary, records."""
    options = tiny_options("minigpt_v2", tiny_files, out, f"run.precision={precision}", f"run.device={device}",
                           "run.distributed=False", "run.max_epoch=1", "run.iters_per_epoch=1",
                           "run.val_max_batches=1", f"run.run_id={precision}", "model.llm_precision=fp16",
                           "model.vit_precision=fp16", *extra)
    runner = build_runner(load_config(TINY_V2, options))
    seen = _record_autocast(runner.unwrapped_model, torch.device(device).type)
    return runner, runner.train(), seen


def _check_run(runner: Any, summary: Dict[str, Any], seen: List[Record], expected: str) -> None:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[expected]
    assert summary["status"] == "completed" and summary["optimizer_steps"] == 1 and summary["nonfinite_steps"] == 0
    assert summary["precision"] == expected
    for phase in (True, False):  # training, then validation
        for module in ("llm", "vision"):
            states = {(enabled, dt if enabled else None) for name, training, enabled, dt in seen
                      if name == module and training == phase}
            want = {(True, dtype)} if expected != "fp32" else {(False, None)}
            assert states == want, f"{module} ({'train' if phase else 'val'}): autocast {states}, expected {want}"
    assert (runner.scaler is not None) == (expected == "fp16"), "a GradScaler exists exactly for fp16"
    model = runner.unwrapped_model
    stored = torch.float32 if expected == "fp32" else dtype
    assert model.llama_model.get_input_embeddings().weight.dtype == stored, "frozen LLM stored in the compute dtype"
    assert model.visual_encoder.blocks[0].attn.qkv.weight.dtype == stored, "frozen tower stored in the compute dtype"
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad), "trainable weights fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_training_step_autocast_inside_llm_and_vision_cpu(precision: str, tiny_files: Dict[str, str],
                                                          facegpt_data_env: Path, tmp_path: Path) -> None:
    runner, summary, seen = _train_tiny_v2(tiny_files, tmp_path, "cpu", precision)
    _check_run(runner, summary, seen, precision)


@needs_cuda
@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_training_step_autocast_inside_llm_and_vision_cuda(precision: str, tiny_files: Dict[str, str],
                                                           facegpt_data_env: Path, tmp_path: Path) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    expected = precision if precision != "auto" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    runner, summary, seen = _train_tiny_v2(tiny_files, tmp_path, "cuda", precision)
    _check_run(runner, summary, seen, expected)


# ------------------------------------------------------------------------------------- benchmarks/gpu_check.py

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_check_refuses_a_machine_without_cuda(capsys: pytest.CaptureFixture) -> None:
    assert load_gpu_check().main([]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_gpu_check_dry_run_reports_what_the_hooks_saw(facegpt_data_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert load_gpu_check().main(["--device", "cpu", "--precisions", "fp16", "--steps", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["llm_autocast"], row["vision_autocast"], row["grad_scaler"]) == ("fp16", "fp16", True)
    assert (row["llm_storage"], row["vision_storage"]) == ("float16", "float16")


if __name__ == "__main__":
    sys.stdout.write(render_table() + "\n")
