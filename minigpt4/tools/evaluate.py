"""``facegpt-eval``: score a model's generated answers per question section, one checkpoint or several side by side.

    facegpt-eval --cfg-path train_configs/demo_smollm2.yaml --options model.llama_model=/path/SmolLM2.gguf \\
        --ckpt base.pth --ckpt finetuned.pth --out eval_out [--data heldout | --data FILE --image-root DIR] \\
        [--sections ...] [--limit N] [--batch-size 8] [--max-new-tokens 128] [--resume] [--label-maps DIR]

Data: ``--data heldout`` (default) scores the held-out split of the config's face datasets, split as training
splits them (``task.build_datasets``); ``--data FILE`` scores a FaceGPT4Vision section file or a LLaVA/ShareGPT
list, and refuses when its images were seen in training (by content) unless ``--allow-seen``.

Closed-set sections (those with a label map, ``minigpt4/configs/label_maps/*.yaml`` plus ``--label-maps DIR``):
accuracy, macro-F1, unparseable share, chance and majority baselines, a confusion-matrix PNG. Other sections:
BLEU-4, chrF, ROUGE-L, CIDEr-D, answer length. Every section: the refusal / hedge rate of the answers.

Writes ``OUT/predictions.jsonl`` (appended per batch; ``--resume`` continues a killed run), ``OUT/report.json``,
``OUT/report.md`` (also printed) and ``OUT/confusion_*.png``. Greedy decoding by default (deterministic).

Exit status: 0 ok; 2 a fault in the flags, config, data, a label map or a checkpoint (one line naming the file /
record and the fix); 1 a programming error (with its traceback).

``--mode rank`` keeps the loss-ranking accuracy (no generation: each closed-set question is answered by the
candidate answer with the lowest loss), for ``--dataset``/``--split`` of the config. ``--benchmark facexbench
--root DIR`` runs the FaceXBench multiple-choice set instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from minigpt4.common.errors import UserError, entry_point
from minigpt4.common.logger import get_logger, setup_logging
from minigpt4.common.precision import configure_model_precision
from minigpt4.conversation.generation import GenerationSettings
from minigpt4.evaluation.rank import (  # noqa: F401  (re-exported: scripts/demo.py and older callers)
    EvalReport,
    SectionResult,
    answer_pairs,
    candidate_losses,
    closed_sets,
    evaluate_closed_set,
)

logger = get_logger(__name__)

PROG = "python -m minigpt4.tools.evaluate"
#: evaluation answers are short section answers: a smaller default than the chat's 300 new tokens
DEFAULT_NEW_TOKENS = 128


class EvalSetupError(UserError, ValueError):
    """The command line asks for something that cannot run (an output folder in use, a changed resumed run...)."""


# ---------------------------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """Every flag of ``facegpt-eval`` (generation defaults: greedy, :data:`DEFAULT_NEW_TOKENS` new tokens)."""
    from minigpt4.common.config import add_config_args

    d = GenerationSettings()
    parser = add_config_args(argparse.ArgumentParser(prog="facegpt-eval", description=__doc__.splitlines()[0]))
    parser.add_argument("--ckpt", action="append", default=[], metavar="PATH",
                        help="checkpoint to score (repeat for a side-by-side; none: the config's model.ckpt)")
    parser.add_argument("--mode", choices=("generate", "rank"), default="generate",
                        help="generate (default): score generated answers; rank: rank each closed-set question's "
                        "candidate answers by loss (no generation)")
    parser.add_argument("--data", default="heldout", help="'heldout' (default) or a section file / LLaVA list")
    parser.add_argument("--image-root", type=Path, default=None, help="folder the --data FILE image paths start from")
    parser.add_argument("--allow-seen", action="store_true", help="score --data FILE images seen in training "
                        "(warns with counts)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (predictions, report, PNGs)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (skip answered samples)")
    parser.add_argument("--sections", nargs="+", default=[], help="score only these sections")
    parser.add_argument("--limit", type=int, default=None, help="score at most N samples in all")
    parser.add_argument("--max-per-section", type=int, default=None, help="score at most N samples per section")
    parser.add_argument("--label-maps", action="append", default=[], type=Path, metavar="DIR",
                        help="folder of extra label-map YAML files (repeatable; later folders win)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-section scores here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen = parser.add_argument_group("generation (greedy unless --sample)")
    gen.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    gen.add_argument("--max-length", type=int, default=d.max_length)
    gen.add_argument("--num-beams", type=int, default=d.num_beams)
    gen.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    gen.add_argument("--sample", dest="do_sample", action="store_true")
    gen.add_argument("--temperature", type=float, default=d.temperature)
    gen.add_argument("--top-p", type=float, default=d.top_p)
    gen.add_argument("--seed", type=int, default=d.seed)
    rank = parser.add_argument_group("--mode rank")
    rank.add_argument("--dataset", default="facegpt4vision", help="dataset entry of the config to score")
    rank.add_argument("--split", default="val", help="split of that dataset (needs split.val_fraction > 0)")
    rank.add_argument("--max-candidates", type=int, default=8)
    bench = parser.add_argument_group("benchmarks")
    bench.add_argument("--benchmark", choices=("facexbench",), default=None)
    bench.add_argument("--root", type=Path, default=None, help="the benchmark's folder")
    bench.add_argument("--prepend-text", action="store_true", help="FaceXBench: put each file's prepend_text first")
    return parser


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """Generation settings from the flags (invalid values raise the settings' own user error)."""
    names = {f.name for f in fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in vars(args).items() if k in names})


def _check_flags(args: argparse.Namespace) -> None:
    for flag in ("batch_size", "limit", "max_per_section"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EvalSetupError(f"--{flag.replace('_', '-')} must be >= 1 (got {value})")
    if args.resume and args.out is None:
        raise EvalSetupError("--resume continues the run in --out: give --out DIR")
    if args.benchmark and (args.root is None or args.out is None):
        raise EvalSetupError(f"--benchmark {args.benchmark} needs --root DIR (the benchmark's folder) and --out DIR")


# ---------------------------------------------------------------------------------------------- rank mode
def run_rank(args: argparse.Namespace) -> int:
    """``--mode rank``: the loss-ranking accuracy table of one split (no generation)."""
    from minigpt4.common.config import load_config
    from minigpt4.common.registry import registry

    if len(args.ckpt) > 1:
        raise EvalSetupError(f"--mode rank scores one checkpoint; got {len(args.ckpt)} --ckpt flags (run it once per "
                             "checkpoint)")
    options = [*args.options, *(f"model.ckpt={c}" for c in args.ckpt)]
    cfg = load_config(args.cfg_path, options, checkpoint_config=True)  # the checkpoint's model section
    if args.dataset not in cfg.datasets:
        raise EvalSetupError(f"--dataset {args.dataset!r} is not in the config's datasets: {list(cfg.datasets)}")
    splits = registry.get_builder_class(args.dataset)(cfg.datasets[args.dataset]).build_datasets()
    if args.split not in splits:
        raise EvalSetupError(f"dataset {args.dataset} has splits {sorted(splits)}; set "
                             f"datasets.{args.dataset}.split.val_fraction")
    device = torch.device(args.device or "cpu")
    precision = configure_model_precision(cfg, device)  # before the model is built: frozen-weight storage
    model = registry.get_model_class(cfg.model.arch).from_config(cfg.model).to(device)
    report = evaluate_closed_set(model, splits[args.split], max_candidates=args.max_candidates,
                                 batch_size=args.batch_size, candidate_pool=splits.get("train"),
                                 max_per_section=args.max_per_section, precision=precision)
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------- generate mode
def load_samples(args: argparse.Namespace, cfg: Any) -> List[Any]:
    """The samples to score: the held-out split, or a file checked against the training images."""
    from minigpt4.evaluation.samples import file_samples, heldout_samples, select

    if args.data == "heldout":
        samples = heldout_samples(cfg)
    else:
        samples = file_samples(Path(args.data).expanduser(), args.image_root)
    samples = select(samples, args.sections, args.limit, args.max_per_section)
    if args.data != "heldout":
        check_seen(cfg, args, [s.image for s in samples])
    return samples


def check_seen(cfg: Any, args: argparse.Namespace, images: Sequence[str]) -> None:
    """Refuse (or, with ``--allow-seen``, warn) when images to score equal images of a training split."""
    if not cfg.datasets:
        logger.warning("%s has no datasets: cannot check whether the images of %s were seen in training",
                       getattr(cfg, "source", "the config"), args.data)
        return
    from minigpt4.datasets.identity import training_overlap

    distinct = sorted(set(images))
    seen = training_overlap(cfg, distinct)
    if not seen:
        return
    message = (f"--data {args.data}: {len(seen)} of {len(distinct)} image(s) to score are training images of "
               f"{getattr(cfg, 'source', 'the config')} (same bytes), e.g. {seen[0]}")
    if not args.allow_seen:
        raise EvalSetupError(message + "; score held-out data (--data heldout), or add --allow-seen to score them "
                             "anyway")
    logger.warning("!!! %s; scoring them anyway (--allow-seen): these scores overstate held-out quality", message)
    print(f"facegpt-eval: WARNING: {message}; scored anyway (--allow-seen)", file=sys.stderr)


def prepare_out(args: argparse.Namespace, run_info: Dict[str, Any]) -> Optional[Path]:
    """Create ``--out``; refuse to mix runs: existing predictions need ``--resume`` and the same settings."""
    if args.out is None:
        return None
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    predictions, info = out / "predictions.jsonl", out / "run.json"
    if predictions.is_file() and predictions.stat().st_size and not args.resume:
        raise EvalSetupError(f"--out {out} already holds predictions.jsonl; add --resume to continue that run, or "
                             "choose a new --out")
    if args.resume and info.is_file():
        before = json.loads(info.read_text(encoding="utf-8"))
        changed = [k for k in ("data", "generation", "config") if before.get(k) != run_info.get(k)]
        if changed:
            raise EvalSetupError(f"--resume: {info} was written with other {', '.join(changed)} "
                                 f"({before.get(changed[0])!r} != {run_info.get(changed[0])!r}); use a new --out")
    info.write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    return out


def check_images(samples: Sequence[Any]) -> None:
    """Every image to score exists (one line naming the record and the count otherwise)."""
    import os

    missing = [s for s in samples if not os.path.isfile(s.image)]
    if missing:
        more = f" ({len(missing)} of {len(samples)} samples name a missing image)" if len(missing) > 1 else ""
        raise EvalSetupError(f"{missing[0].where}: image {missing[0].image} not found{more}")


def answer_all(args: argparse.Namespace, samples: Sequence[Any], settings: GenerationSettings, out: Optional[Path]
               ) -> Dict[str, List[str]]:
    """Answers per checkpoint name (A, B, ...): generated, or read back from ``predictions.jsonl``."""
    from minigpt4 import api
    from minigpt4.evaluation.generate import PredictionLog, generate_answers
    from minigpt4.evaluation.report import checkpoint_names

    ckpts = list(args.ckpt) or [None]
    log = PredictionLog(out / "predictions.jsonl" if out else None)
    answers: Dict[str, List[str]] = {}
    try:
        for name, ckpt in zip(checkpoint_names(len(ckpts)), ckpts):
            key = str(ckpt) if ckpt else "model.ckpt of the config"
            if all(log.has(key, s.id) for s in samples):
                answers[name] = [log.answer(key, s.id) for s in samples]
                continue
            options = [*(args.options or []), f"model.ckpt={ckpt}"] if ckpt else list(args.options or [])
            logger.info("checkpoint %s: %s", name, key)
            model = api.load_model(args.cfg_path, options, args.device, settings)
            todo, started = sum(not log.has(key, s.id) for s in samples), time.perf_counter()
            answers[name] = generate_answers(model, samples, key, log, batch_size=args.batch_size,
                                             progress=not args.no_progress, **asdict(settings))
            seconds = time.perf_counter() - started
            logger.info("checkpoint %s: %d answer(s) generated in %.1f s (%.2f samples/s, batch size %d)", name,
                        todo, seconds, todo / max(seconds, 1e-9), args.batch_size)
            del model
    finally:
        log.close()
    return answers


def run_generate(args: argparse.Namespace) -> int:
    """Generate answers for every checkpoint, score them per section, write and print the report."""
    from minigpt4.common.config import load_config
    from minigpt4.evaluation.labels import load_label_maps
    from minigpt4.evaluation.report import build_report, markdown, write_pictures

    settings = settings_from_args(args)
    label_maps = load_label_maps(args.label_maps)
    cfg = load_config(args.cfg_path, args.options, checkpoint_config=True)
    samples = load_samples(args, cfg)
    check_images(samples)
    generation = {k: v for k, v in asdict(settings).items() if k != "max_length"}
    run_info = {"config": str(args.cfg_path), "data": str(args.data), "generation": generation,
                "checkpoints": [str(c) for c in args.ckpt] or ["model.ckpt of the config"]}
    out = prepare_out(args, run_info)
    answers = answer_all(args, samples, settings, out)
    meta = {"config": str(args.cfg_path), "data": str(args.data), "samples": len(samples),
            "generation": ", ".join(f"{k}={v}" for k, v in generation.items()),
            "checkpoint_paths": run_info["checkpoints"]}
    report = build_report(samples, answers, label_maps, meta)
    pictures = write_pictures(report, out) if out else {}
    text = markdown(report, pictures)
    if out:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (out / "report.md").write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"sections": report["sections"]}, indent=2) + "\n", encoding="utf-8")
    print(text)
    for note in report["notes"]:
        print(f"facegpt-eval: note: {note}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- benchmarks
def run_benchmark(args: argparse.Namespace) -> int:
    """``--benchmark facexbench``: the FaceXBench multiple-choice set, per checkpoint."""
    from minigpt4 import api
    from minigpt4.evaluation.facexbench import check_images, load_benchmark, run_facexbench

    questions = load_benchmark(args.root, args.prepend_text)[:args.limit]  # a bad folder is reported before loading
    check_images([q for q in questions if q.skip_reason is None])
    settings = settings_from_args(args)
    ckpts = list(args.ckpt) or [None]
    for k, ckpt in enumerate(ckpts):
        out = args.out if len(ckpts) == 1 else args.out / f"checkpoint_{chr(65 + k)}"
        options = [*(args.options or []), f"model.ckpt={ckpt}"] if ckpt else list(args.options or [])
        model = api.load_model(args.cfg_path, options, args.device, settings)
        run_facexbench(model, args.root, out, batch_size=args.batch_size, limit=args.limit,
                       prepend_text=args.prepend_text, resume=args.resume)
        report = out / "facexbench_report.md"
        if report.is_file():
            print(report.read_text(encoding="utf-8"))
        del model
    return 0


@entry_point(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line front end (``facegpt-eval``); a fault in the config, data or flags: one line, exit status 2."""
    args = build_parser().parse_args(argv)
    setup_logging()
    _check_flags(args)
    if args.benchmark:
        return run_benchmark(args)
    if args.mode == "rank":
        return run_rank(args)
    return run_generate(args)


if __name__ == "__main__":
    raise SystemExit(main())
