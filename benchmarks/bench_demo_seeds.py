"""The demo recipe over several seeds: linear-probe accuracies and held-out answer accuracies, mean and spread.

For each seed the whole ``scripts/demo.py`` runs (a synthetic set drawn with that seed, both training stages with
``run.seed`` = that seed, ``facegpt-eval`` on the held-out images, the chat), then ``minigpt4.tools.probe`` fits
its probes on the trained model and on the untrained one. Printed: per attribute, the probe accuracy of the tower
and of the image tokens (before → after training), and per question type the held-out accuracy of the generated
answers, each as mean ± standard deviation over the seeds, next to chance and the (mean) majority share. So a lucky
seed cannot carry a claim.

    python benchmarks/bench_demo_seeds.py [--seeds 0 1 2] [--out bench_demo_seeds] [-- demo options ...]

It takes as long as the demo times the number of seeds (plus about a minute of probing per seed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _demo_module() -> Any:
    spec = importlib.util.spec_from_file_location("facegpt_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _latest_checkpoint(runs: Path, job: str) -> Path:
    """The newest run folder of ``job`` under ``runs`` and the weights its ``checkpoint_latest.json`` names."""
    run_dir = sorted((runs / job).iterdir())[-1]
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    return run_dir / latest["weights"]


def _mean_sd(values: Sequence[float]) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}%"


def run_seed(demo: Any, seed: int, out: Path, demo_args: List[str]) -> Dict[str, Any]:
    """One demo run and its probes; ``{"eval": report.json, "probe": [attribute results]}``."""
    import os

    from minigpt4.tools import probe

    seed_out = out / f"seed_{seed}"
    start = time.monotonic()
    status = demo.main(["--out", str(seed_out), "--seed", str(seed), *demo_args])
    if status != 0:
        raise SystemExit(f"the demo failed for seed {seed} (exit status {status}); see its output above")
    demo_s = time.monotonic() - start
    ckpt = _latest_checkpoint(seed_out / "runs", "demo_smollm2")
    os.environ["FACEGPT_DATA"] = str(seed_out / "data")
    llm = seed_out / "llm" / "SmolLM2-135M-Instruct"
    results = probe.run_probe(str(demo.TRAIN_CFG), [f"model.llama_model={llm}", f"model.ckpt={ckpt}"],
                              baseline=True, seed=seed)
    report = json.loads((seed_out / "eval" / "report.json").read_text())
    return {"seed": seed, "demo_s": demo_s, "eval": report,
            "probe": [{"attribute": r.attribute, "chance": r.chance, "majority": r.majority, "accuracy": r.accuracy}
                      for r in results]}


def summary(runs: Sequence[Dict[str, Any]]) -> str:
    """The two Markdown tables (probes; held-out answers), mean ± sd over the seeds."""
    seeds = ", ".join(str(r["seed"]) for r in runs)
    times = ", ".join("%.0f s" % r["demo_s"] for r in runs)
    lines = [f"seeds: {seeds}; demo wall time per seed: {times}", "",
             "| attribute | chance | majority | tower init | tower trained | tokens init | tokens trained |",
             "|---|---|---|---|---|---|---|"]
    for k, first in enumerate(runs[0]["probe"]):
        rows = [r["probe"][k] for r in runs]
        cells = [_mean_sd([row["accuracy"][col] for row in rows])
                 for col in ("tower init", "tower trained", "tokens init", "tokens trained")]
        lines.append(f"| {first['attribute']} | {100 * first['chance']:.1f}% | "
                     f"{100 * statistics.fmean(r['majority'] for r in rows):.1f}% | " + " | ".join(cells) + " |")
    lines += ["", "| question type | n | answers correct | chance | majority |", "|---|---|---|---|---|"]
    for k, first in enumerate(runs[0]["eval"]["sections"]):
        entries = [r["eval"]["sections"][k] for r in runs]
        if first["kind"] != "closed":
            rouge = [e["scores"]["A"].get("rouge_l", 0.0) for e in entries]
            sd = statistics.stdev(rouge) if len(rouge) > 1 else 0.0
            lines.append(f"| {first['section']} (open-ended, ROUGE-L) | {first['n']} | "
                         f"{statistics.fmean(rouge):.3f} ± {sd:.3f} | | |")
            continue
        acc = [e["scores"]["A"]["accuracy"] for e in entries]
        lines.append(f"| {first['section']} | {first['n']} | {_mean_sd(acc)} | {100 * first['chance']:.1f}% | "
                     f"{100 * statistics.fmean(e['majority'] for e in entries):.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "bench_demo_seeds")
    parser.add_argument("demo_args", nargs="*", help="after --: options of scripts/demo.py (e.g. --threads 1)")
    args = parser.parse_args(argv)
    demo = _demo_module()
    runs = []
    for seed in args.seeds:
        print(f"--- seed {seed}", flush=True)
        runs.append(run_seed(demo, seed, args.out, list(args.demo_args)))
        (args.out / "seeds.json").write_text(json.dumps(runs, indent=1) + "\n")
        print(summary(runs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
