"""On a CUDA machine: what the precision policy does in real training steps, per config and ``run.precision``.

For each (config, precision) it trains a few iterations through ``train.py``'s own path (task, runner, train
loop) and prints the autocast dtype seen inside the LLM forward and the vision-tower forward (forward pre-hooks
on ``llama_model`` and ``visual_encoder``), whether a GradScaler exists, the storage dtype of the frozen LLM and
tower weights, the median step time and the peak CUDA memory.

* tiny MiniGPT-v2 (``train_configs/tiny_minigpt_v2.yaml``; tiny weights written on the fly, frozen weights
  declared half as in the full-size presets): always;
* full size (``train_configs/minigptv2_finetune_gpt4vision.yaml`` by default, ``--full-cfg``) when
  ``--llama-model`` and ``--vit-ckpt`` (or ``FACEGPT_LLAMA_MODEL`` / ``FACEGPT_VIT_CKPT``) are given;
  ``--ckpt`` / ``FACEGPT_CKPT`` optional.

Data: ``FACEGPT_DATA`` when set, else a synthetic face set written by the data tool. Run:

    python benchmarks/gpu_check.py                       # tiny only, precisions auto bf16 fp16 fp32
    python benchmarks/gpu_check.py --llama-model /models/Llama-2-7b-chat-hf --vit-ckpt /models/eva_vit_g.pth

``--device cpu`` runs the same measurements on CPU (a dry run of this script; CUDA is its purpose).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
FULL_CFG = REPO / "train_configs" / "minigptv2_finetune_gpt4vision.yaml"
#: FaceGPT4Vision sections the synthetic data set holds (the full config selects some it lacks)
SYNTH_SECTIONS = ["Facial Characteristics Long", "Facial Expression due to contextual cues",
                  "Feature by Feature Description", "Human or not"]


@dataclass
class Result:
    """One measured run."""

    label: str
    requested: str
    policy: str
    llm_autocast: str
    vision_autocast: str
    grad_scaler: bool
    llm_storage: str
    vision_storage: str
    step_s: float
    peak_mib: float
    loss: Optional[float]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["auto", "bf16", "fp16", "fp32"],
                        choices=["auto", "bf16", "fp16", "fp32"], help="run.precision values to measure")
    parser.add_argument("--steps", type=int, default=6, help="training iterations per run (first one not timed)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--full-cfg", type=Path, default=FULL_CFG, help="full-size train config")
    parser.add_argument("--llama-model", default=os.environ.get("FACEGPT_LLAMA_MODEL"),
                        help="LLM folder of the full-size config (env FACEGPT_LLAMA_MODEL)")
    parser.add_argument("--vit-ckpt", default=os.environ.get("FACEGPT_VIT_CKPT"),
                        help="eva_vit_g.pth of the full-size config (env FACEGPT_VIT_CKPT)")
    parser.add_argument("--ckpt", default=os.environ.get("FACEGPT_CKPT"),
                        help="optional MiniGPT-v2 / FaceGPT checkpoint for the full-size config (env FACEGPT_CKPT)")
    parser.add_argument("--full-precisions", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"],
                        help="run.precision values for the full-size config (each loads the LLM again)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    return parser.parse_args(argv)


def _hooks(model: Any, device_type: str) -> Dict[str, List[Tuple[bool, torch.dtype]]]:
    """Forward pre-hooks recording (autocast enabled, autocast dtype) inside the LLM and the vision tower."""
    seen: Dict[str, List[Tuple[bool, torch.dtype]]] = {"llm": [], "vision": []}

    def hook(name: str):
        def record(module: Any, args: Any) -> None:
            if model.training:  # training iterations only
                seen[name].append((torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)))
        return record

    model.llama_model.register_forward_pre_hook(hook("llm"))
    model.visual_encoder.register_forward_pre_hook(hook("vision"))
    return seen


def _describe(states: List[Tuple[bool, torch.dtype]]) -> str:
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    kinds = sorted({names.get(dtype, str(dtype)) if enabled else "off" for enabled, dtype in states})
    return "/".join(kinds) if kinds else "not called"


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def measure(label: str, cfg_path: Path, options: List[str], precision: str, device: str, steps: int,
            out: Path) -> Result:
    """Train ``steps`` iterations of ``cfg_path`` with ``run.precision=precision``; what the policy did."""
    from minigpt4.common.config import load_config
    from minigpt4.common.metrics import read_metrics
    from minigpt4.runners.launch import build_runner

    run_id = f"{label}_{precision}"
    opts = options + [f"run.precision={precision}", f"run.device={device}", "run.distributed=False",
                      "run.max_epoch=1", f"run.iters_per_epoch={steps}", "run.valid_splits=[]", "run.log_freq=1",
                      "run.progress_bar=False", "run.plot_curves=False", f"run.output_dir={out}",
                      f"run.run_id={run_id}", "run.num_workers=2"]
    cfg = load_config(cfg_path, opts)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runner = build_runner(cfg)
    model = runner.unwrapped_model
    seen = _hooks(model, torch.device(device).type)
    summary = runner.train()
    records = [r for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl") if r.get("type") == "train"]
    rates = [r["it_per_s"] for r in records[1:] if r.get("it_per_s")]
    qkv = model.visual_encoder.blocks[0].attn.qkv.weight
    result = Result(label, precision, str(runner.policy), _describe(seen["llm"]), _describe(seen["vision"]),
                    runner.scaler is not None, _dtype_name(model.llama_model.get_input_embeddings().weight),
                    _dtype_name(qkv), 1.0 / statistics.median(rates) if rates else float("nan"),
                    float(summary["peak_memory_mb"]), summary.get("final_train_loss"))
    del runner, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def _data_root(tmp: Path) -> Path:
    """``FACEGPT_DATA`` when set, else a synthetic face set written under ``tmp``."""
    if os.environ.get("FACEGPT_DATA"):
        return Path(os.environ["FACEGPT_DATA"])
    from minigpt4.tools import data

    root = tmp / "data"
    if data.main(["synth", "--out", str(root), "--n", "24", "--seed", "0"]) != 0:
        raise RuntimeError("the data tool could not write the synthetic face set")
    os.environ["FACEGPT_DATA"] = str(root)
    return root


def tiny_options(tmp: Path) -> List[str]:
    """Tiny weights written under ``tmp``; frozen weights declared half as in the full-size presets."""
    from minigpt4.tools.tiny_weights import write_all

    paths = write_all(tmp / "tiny")
    return [f"model.llama_model={paths['model.llama_model']}", f"model.vit_ckpt={paths['model.vit_ckpt']}",
            "model.llm_precision=fp16", "model.vit_precision=fp16"]


def full_options(args: argparse.Namespace, synthetic: bool) -> List[str]:
    """Weight paths of the full-size config, and the synthetic set's sections when the data is synthetic."""
    opts = [f"model.llama_model={args.llama_model}", f"model.vit_ckpt={args.vit_ckpt}",
            f"model.ckpt={args.ckpt}" if args.ckpt else "model.ckpt=null"]
    if synthetic:
        opts.append("datasets.facegpt4vision.sections=[" + ",".join(f"'{s}'" for s in SYNTH_SECTIONS) + "]")
    return opts


def format_table(results: List[Result]) -> str:
    """The results as an aligned text table."""
    header = ("config", "run.precision", "policy", "LLM autocast", "vision autocast", "GradScaler", "LLM stored",
              "vision stored", "step s", "peak MiB", "loss")
    rows = [header] + [(r.label, r.requested, r.policy, r.llm_autocast, r.vision_autocast,
                        "yes" if r.grad_scaler else "no", r.llm_storage, r.vision_storage, f"{r.step_s:.3f}",
                        f"{r.peak_mib:.0f}", "n/a" if r.loss is None else f"{r.loss:.4f}") for r in results]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure and print; 2 when no CUDA device is available (and ``--device cpu`` was not asked for)."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available on this machine; this script is for a CUDA GPU "
              "(use --device cpu for a dry run of the script itself)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minigpt4  # noqa: F401  (registers builders, models, tasks, runners)
    from minigpt4.common.logger import setup_logging

    setup_logging(level=logging.WARNING)  # the table is the output
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()} | bf16 supported: {torch.cuda.is_bf16_supported()} | "
              f"torch {torch.__version__}")
    results: List[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        synthetic = not os.environ.get("FACEGPT_DATA")
        _data_root(tmp)
        tiny = tiny_options(tmp)
        for precision in args.precisions:
            results.append(measure("tiny_v2", TINY_CFG, tiny, precision, args.device, args.steps, tmp / "runs"))
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
        if args.llama_model and args.vit_ckpt:
            for precision in args.full_precisions:
                results.append(measure(args.full_cfg.stem, args.full_cfg, full_options(args, synthetic), precision,
                                       args.device, args.steps, tmp / "runs"))
                print(format_table(results[-1:]).splitlines()[-1], flush=True)
        else:
            print("full-size config skipped: pass --llama-model and --vit-ckpt (or FACEGPT_LLAMA_MODEL / "
                  "FACEGPT_VIT_CKPT)")
    print()
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
