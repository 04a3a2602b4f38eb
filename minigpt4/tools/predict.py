"""``facegpt-predict``: answer a JSONL file of questions about images, in batches, resumably.

Usage::

    facegpt-predict --cfg-path eval_configs/facegpt_v2_eval.yaml --options model.ckpt=/path/checkpoint.pth \\
        --input questions.jsonl --output answers.jsonl [--batch-size 8] [--image-root DIR] [--max-new-tokens 64]

Input: one ``{"id": ..., "image": "face.jpg", "question": "..."}`` per line (``image`` relative to the input file's
folder, to ``--image-root``, or absolute). Output: one ``{"id", "answer", "tokens", "seconds"}`` per line, appended
and flushed as each batch finishes (``tokens``: the answer's generated tokens before the stop sequence;
``seconds``: the batch's time divided by its size). Ids already in the output file are skipped, so an interrupted
run continues where it stopped. A bad line (invalid JSON, a missing or empty field, a duplicate id), an unreadable
image or a question too long for the context is reported with its line number and skipped.

Exit status: 0 every line answered (or already in the output); 3 finished, but some lines were skipped (their
count and line numbers are printed); 2 nothing ran (bad flags, config, or files); 1 an internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from minigpt4.common.errors import UserError, run_main
from minigpt4.common.jsonl import read_result_lines
from minigpt4.common.logger import get_logger
from minigpt4.conversation.generation import GenerationSettings

logger = get_logger(__name__)

PROG = "facegpt-predict"
EXIT_OK, EXIT_SKIPPED = 0, 3
FIELDS = ("id", "image", "question")
EXIT_HELP = ("exit status: 0 every line answered (or already in the output); 3 finished, but some lines were skipped "
             "(reported with their line numbers); 2 nothing ran (bad flags, config or files); 1 an internal error")


class PredictInputError(UserError, ValueError):
    """The input or output file cannot be used at all (missing, a folder); the message names it."""


@dataclass
class Record:
    """One valid input line."""

    line: int
    id: Any
    image: Path
    question: str


@dataclass
class Skipped:
    """A line that got no answer, and why."""

    line: int
    reason: str


# ------------------------------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    """The command line (generation defaults come from :class:`GenerationSettings`)."""
    d = GenerationSettings()
    parser = argparse.ArgumentParser(prog=PROG, description="Answer a JSONL file of questions about images "
                                     "(batched, resumable).", epilog=EXIT_HELP)
    parser.add_argument("--cfg-path", required=True, help="eval config YAML, or a FaceGPT checkpoint (.pth)")
    parser.add_argument("--options", nargs="+", default=[], help="override config values: 'a.b=c d=e'")
    parser.add_argument("--input", required=True, help='JSONL: {"id", "image", "question"} per line')
    parser.add_argument("--output", required=True, help='JSONL: {"id", "answer", "tokens", "seconds"} appended')
    parser.add_argument("--image-root", help="folder relative image paths start from (default: the input's folder)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="answer at most this many new lines, then stop")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    gen.add_argument("--max-length", type=int, default=d.max_length, help="bound of prompt + answer positions")
    gen.add_argument("--num-beams", type=int, default=d.num_beams)
    gen.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    gen.add_argument("--temperature", type=float, default=d.temperature, help="sampling only")
    gen.add_argument("--top-p", type=float, default=d.top_p, help="sampling only")
    gen.add_argument("--sample", dest="do_sample", action="store_true", help="sample (default: greedy)")
    gen.add_argument("--seed", type=int, default=d.seed, help="reseed before every sampled batch")
    return parser


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """Generation settings from the parsed flags (invalid values raise ``SettingsError``, a user error)."""
    names = {f.name for f in fields(GenerationSettings)}
    return GenerationSettings(**{k: v for k, v in vars(args).items() if k in names})


def id_key(value: Any) -> str:
    """A hashable key of a record id (``1`` and ``"1"`` stay different)."""
    return json.dumps(value, sort_keys=True)


def _check_record(data: Any) -> Optional[str]:
    """Why a parsed line is not a valid record, or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object with {', '.join(FIELDS)}, got {type(data).__name__}"
    missing = [f for f in FIELDS if f not in data]
    if missing:
        return f"missing field(s) {', '.join(missing)} (each line needs {', '.join(FIELDS)})"
    if not isinstance(data["id"], (str, int)) or isinstance(data["id"], bool):
        return f"id must be a string or an integer, got {data['id']!r}"
    for key in ("image", "question"):
        if not isinstance(data[key], str) or not data[key].strip():
            return f"{key} must be a non-empty string, got {data[key]!r}"
    return None


def read_records(path: Path, image_root: Path) -> Tuple[List[Record], List[Skipped]]:
    """The valid records of the input file and the lines skipped (invalid JSON, bad fields, duplicate ids)."""
    records: List[Record] = []
    skipped: List[Skipped] = []
    first_line: Dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                skipped.append(Skipped(number, f"invalid JSON ({err.msg} at column {err.colno})"))
                continue
            problem = _check_record(data)
            if problem is None and id_key(data["id"]) in first_line:
                problem = f"duplicate id {data['id']!r} (first on line {first_line[id_key(data['id'])]})"
            if problem is not None:
                skipped.append(Skipped(number, problem))
                continue
            first_line[id_key(data["id"])] = number
            records.append(Record(number, data["id"], image_root / Path(data["image"]).expanduser(),
                                  data["question"].strip()))
    return records, skipped


def finished_ids(path: Path) -> set:
    """Ids already answered in the output file (unreadable lines, e.g. one cut by a crash, are ignored)."""
    return {id_key(row["id"]) for row in read_result_lines(path, ("id",), "id")}


# ------------------------------------------------------------------------------------------- running
class Writer:
    """Appends answer lines to the output file, flushing each one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.handle: TextIO = path.open("a", encoding="utf-8")
        if needs_newline:  # a line cut short by an interrupted run: start on a fresh line
            self.handle.write("\n")

    def write(self, record: Record, answer: str, tokens: int, seconds: float) -> None:
        line = {"id": record.id, "answer": answer, "tokens": tokens, "seconds": round(seconds, 4)}
        self.handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def answer_batch(model: Any, batch: List[Record], settings: GenerationSettings, writer: Writer,
                 skipped: List[Skipped]) -> int:
    """Open the batch's images (a bad one is skipped), answer the rest in one call, write them; answered count."""
    from minigpt4.api import BadImageError, PromptTooLongError

    opened, images = [], []
    for record in batch:
        try:
            images.append(model.open_image(record.image))
            opened.append(record)
        except BadImageError as err:
            skipped.append(Skipped(record.line, str(err).split(": ", 1)[-1]))  # the line number says which
    while opened:
        try:
            predictions = model.predict_batch(images, [r.question for r in opened], settings)
        except PromptTooLongError as err:  # leave that question out and answer the others
            skipped.append(Skipped(opened[err.index].line, "the question needs " + str(err).split(" needs ", 1)[-1]))
            del opened[err.index], images[err.index]
            continue
        for record, prediction in zip(opened, predictions):
            writer.write(record, prediction.answer, prediction.tokens, prediction.seconds / len(opened))
        return len(opened)
    return 0


def _report(skipped: List[Skipped], input_path: Path, err: TextIO) -> None:
    for item in sorted(skipped, key=lambda s: s.line):
        print(f"{PROG}: {input_path}:{item.line}: {item.reason}; skipped", file=err)


def _progress(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="question", desc=PROG, disable=disable, file=sys.stderr)


def _paths(args: argparse.Namespace) -> Tuple[Path, Path, Path]:
    input_path = Path(args.input).expanduser()
    output_path = Path(args.output).expanduser()
    if not input_path.is_file():
        raise PredictInputError(f"--input {input_path}: no such file (a JSONL file of id/image/question lines)")
    if output_path.is_dir():
        raise PredictInputError(f"--output {output_path} is a folder; give a .jsonl file path")
    image_root = Path(args.image_root).expanduser() if args.image_root else input_path.resolve().parent
    if not image_root.is_dir():
        raise PredictInputError(f"--image-root {image_root} is not a folder")
    return input_path, output_path, image_root


def _main(argv: Optional[Sequence[str]], stderr: Optional[TextIO] = None) -> int:
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1 (got {args.batch_size})")
    settings = settings_from_args(args)
    input_path, output_path, image_root = _paths(args)
    records, skipped = read_records(input_path, image_root)
    done = finished_ids(output_path)
    todo = [r for r in records if id_key(r.id) not in done]
    if args.limit is not None:
        todo = todo[:max(args.limit, 0)]
    print(f"{PROG}: {len(records)} valid line(s), {len(records) - len(todo)} already answered or left for later, "
          f"{len(todo)} to answer", file=err)
    answered = 0
    if todo:
        from minigpt4.api import load_model

        model = load_model(args.cfg_path, args.options, args.device, settings)
        writer = Writer(output_path)
        try:
            with _progress(len(todo), args.no_progress) as bar:
                for start in range(0, len(todo), args.batch_size):
                    batch = todo[start:start + args.batch_size]
                    answered += answer_batch(model, batch, settings, writer, skipped)
                    bar.update(len(batch))
        finally:
            writer.close()
    _report(skipped, input_path, err)
    lines = ", ".join(str(s.line) for s in sorted(skipped, key=lambda s: s.line))
    print(f"{PROG}: answered {answered}, skipped {len(skipped)}" + (f" (line(s) {lines})" if skipped else "")
          + f"; answers in {output_path}", file=err)
    return EXIT_SKIPPED if skipped else EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``facegpt-predict`` (user errors: one line, exit status 2)."""
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
