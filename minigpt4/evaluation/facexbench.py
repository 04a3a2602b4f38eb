"""FaceXBench: the public face-understanding multiple-choice benchmark, run and scored in its own format.

Layout (``root``: the benchmark folder, or a clone of the benchmark's repository holding it as ``benchmark/``)::

    ROOT/<dataset file>.json   {"category", "sub-category", "dataset", "num_images", "prepend_text",
                                "postpend_text", "context" (tools_use files only),
                                "questions": {id: {"image_paths", "question_text", "options",
                                                   "correct_answer_option", ...}}}
    ROOT/images/...            ``image_paths`` are relative to ROOT

Prompt, in the benchmark's own order, every part followed by a newline: a ``tools_use`` file's ``context``; the
file's ``prepend_text`` (only with ``prepend_text=True``, the benchmark's ``--prepend_text``); the question; the
file's ``postpend_text``; one ``(A) option`` line per option.

Scoring, as the benchmark's published results were scored (:func:`parse_answer`): the option letter is looked
for at the start of the answer (``A``, ``(A)``, ``Option A``, ``A.``, ``A:``, ``A -``), then anywhere in it (a
capital letter standing alone as a word), then by an option's text equal to or contained in the answer (options
in order). Only capital letters of existing options count. An answer with no match is wrong and counted as
unparseable. As in the published scorer, an answer that starts with the article "A" ("A man with ...") reads as
option A.

FaceGPT's models (MiniGPT-4 v1, MiniGPT-v2) take one image per prompt: questions with several images are not
asked; the report lists them as skipped, with their count, and gives the accuracy of the answered single-image
questions on its own, plus the accuracy over every question with the skipped ones counted wrong (the figure
comparable with the benchmark's total). Accuracy is reported overall, per category, per sub-category, per dataset
file and per ``num_images``.

Outputs in ``out``: ``facexbench_predictions.jsonl`` (one line per answered question, appended as each batch
finishes; ``resume=True`` keeps the lines already there), ``facexbench_report.json``, ``facexbench_report.md``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from minigpt4.common.errors import UserError
from minigpt4.common.jsonl import read_result_lines
from minigpt4.common.logger import get_logger

if TYPE_CHECKING:  # pragma: no cover - typing only
    from minigpt4.api import FaceGPTModel

logger = get_logger(__name__)

PREDICTIONS_FILE = "facexbench_predictions.jsonl"
REPORT_JSON = "facexbench_report.json"
REPORT_MD = "facexbench_report.md"
#: keys every dataset file has, and every question of it
FILE_KEYS = ("category", "sub-category", "num_images", "questions")
QUESTION_KEYS = ("image_paths", "question_text", "options", "correct_answer_option")
TOOLS_CATEGORY = "tools_use"
#: the benchmark's six categories and their sub-categories; tables list them in this order (other names follow)
CATEGORY_ORDER = {
    "bias_fairness": ("age", "gender", "race"),
    "face_recognition": ("hr_fr", "lr_fr", "celebrity_identification"),
    "fas_deepfakes": ("fas", "deepfakes"),
    "attributes_expression": ("attributes", "expression"),
    "face_localization": ("headpose", "segmentation", "crowd_counting"),
    "tools_use": ("tools_retrieval",),
}
NUM_IMAGES_ORDER = ("zero", "single", "multiple")
#: how an answer's option was found (``parsed_by`` in the report)
RULES = ("start", "anywhere", "option_text", "unparseable")
#: why a question is not answered
SKIP_SEVERAL_IMAGES = "several images"
SKIP_NO_IMAGE = "no image"
SKIP_TOO_LONG = "prompt too long"
SKIP_NOTES = {SKIP_SEVERAL_IMAGES: "FaceGPT's models take one image per prompt",
              SKIP_NO_IMAGE: "FaceGPT's models need an image",
              SKIP_TOO_LONG: "longer than max_length - max_new_tokens; raise max_length if the LLM's context allows"}
GROUPINGS = (("category", "by_category"), ("sub_category", "by_sub_category"), ("file", "by_file"),
             ("num_images", "by_num_images"))


class FaceXBenchError(UserError, ValueError):
    """A FaceXBench folder or file FaceGPT cannot read; the message names the file, the record and the fix."""


class BenchmarkLayoutError(FaceXBenchError):
    """A file that is not in the FaceXBench layout (a missing key, a wrong type, an unknown option letter)."""


class MissingImageError(FaceXBenchError):
    """An image a question names is not in the benchmark folder."""


@dataclass(frozen=True)
class Question:
    """One benchmark question, with its prompt built and its images resolved."""

    file: str  # the dataset file's name, e.g. affectnet_single_mcq.json
    qid: str
    category: str
    sub_category: str
    num_images: str  # the file's num_images value: "single", "multiple", "zero"
    images: Tuple[Path, ...]
    prompt: str
    options: Tuple[str, ...]
    correct: str  # the correct option letter

    @property
    def key(self) -> str:
        """``file#id``: unique over the benchmark."""
        return f"{self.file}#{self.qid}"

    @property
    def skip_reason(self) -> Optional[str]:
        """Why a one-image model cannot answer this question (one of the ``SKIP_*`` reasons), or None."""
        if len(self.images) == 1:
            return None
        return SKIP_NO_IMAGE if not self.images else SKIP_SEVERAL_IMAGES


# ------------------------------------------------------------------------------------------- prompt, parsing
def option_labels(count: int) -> List[str]:
    """``A``, ``B``, ... for ``count`` options."""
    return [chr(ord("A") + i) for i in range(count)]


def build_prompt(data: Mapping[str, Any], question: Mapping[str, Any], prepend_text: bool = False) -> str:
    """The question's prompt in the benchmark's order (see the module docstring); ends with a newline."""
    parts: List[str] = []
    if data.get("category") == TOOLS_CATEGORY:
        parts.append(str(data["context"]))
    if prepend_text and data.get("prepend_text"):
        parts.append(str(data["prepend_text"]))
    parts.append(str(question["question_text"]))
    if data.get("postpend_text"):
        parts.append(str(data["postpend_text"]))
    parts += [f"({label}) {option}" for label, option in zip(option_labels(len(question["options"])),
                                                             question["options"])]
    return "".join(part + "\n" for part in parts)


#: at the start: A, (A), Option A, A., A:, A - (the letter standing alone, a bracket or punctuation after it)
_START = re.compile(r"(?:Option\s+)?\(?([A-Z])(?!\w)")
#: anywhere: a capital letter standing alone as a word, e.g. "The answer is (C)." or "I pick B"
_ANYWHERE = re.compile(r"(?<!\w)([A-Z])(?!\w)")


def parse_answer_rule(answer: str, options: Sequence[str]) -> Tuple[Optional[str], str]:
    """The option letter an answer names and the rule that found it (one of :data:`RULES`)."""
    labels = option_labels(len(options))
    text = answer.strip()
    start = _START.match(text)
    if start and start.group(1) in labels:
        return start.group(1), "start"
    for match in _ANYWHERE.finditer(text):
        if match.group(1) in labels:
            return match.group(1), "anywhere"
    for label, option in zip(labels, options):
        option_text = str(option).strip()
        if option_text and option_text in text:
            return label, "option_text"
    return None, "unparseable"


def parse_answer(answer: str, options: Sequence[str]) -> Optional[str]:
    """The option letter an answer names (``"A"``...), or None when it names none (scored wrong)."""
    return parse_answer_rule(answer, options)[0]


# ------------------------------------------------------------------------------------------- loading
def benchmark_dir(root: Path) -> Path:
    """The folder holding the dataset JSON files: ``root`` itself or ``root/benchmark``."""
    root = Path(root).expanduser()
    for candidate in (root, root / "benchmark"):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise BenchmarkLayoutError(
        f"{root}: no FaceXBench JSON files here nor in {root / 'benchmark'}; point --root at the benchmark folder "
        "(the one holding the *_mcq.json files and images/)")


def load_benchmark(root: Path, prepend_text: bool = False) -> List[Question]:
    """Every question of every dataset file under ``root`` (files in name order, questions in file order)."""
    bench = benchmark_dir(root)
    questions: List[Question] = []
    for path in sorted(bench.glob("*.json")):
        questions += load_file(path, bench, prepend_text)
    return questions


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BenchmarkLayoutError(f"{path}: not a readable FaceXBench JSON file ({type(err).__name__}: {err})") \
            from None
    if not isinstance(data, dict):
        raise BenchmarkLayoutError(f"{path}: not a FaceXBench file: the top level is a {type(data).__name__}, "
                                   f"expected an object with keys {', '.join(FILE_KEYS)}")
    return data


def _check_file_keys(path: Path, data: Mapping[str, Any]) -> None:
    for key in FILE_KEYS:
        if key not in data:
            raise BenchmarkLayoutError(f"{path}: not a FaceXBench file: missing key {key!r} (each dataset file has "
                                       f"{', '.join(FILE_KEYS)}, prepend_text and postpend_text)")
    if data["category"] == TOOLS_CATEGORY and "context" not in data:
        raise BenchmarkLayoutError(f"{path}: a {TOOLS_CATEGORY} file without the key 'context' (the tool "
                                   "descriptions every question of it is asked after)")
    if not isinstance(data["questions"], dict):
        raise BenchmarkLayoutError(f"{path}: 'questions' is a {type(data['questions']).__name__}, expected an "
                                   "object {question id: question}")


def _check_question(path: Path, qid: str, item: Any) -> None:
    where = f"{path}: question {qid}"
    if not isinstance(item, dict):
        raise BenchmarkLayoutError(f"{where}: is a {type(item).__name__}, expected an object")
    for key in QUESTION_KEYS:
        if key not in item:
            raise BenchmarkLayoutError(f"{where}: missing key {key!r} (each question has {', '.join(QUESTION_KEYS)})")
    if not isinstance(item["image_paths"], list) or not isinstance(item["options"], list) or not item["options"]:
        raise BenchmarkLayoutError(f"{where}: 'image_paths' must be a list and 'options' a non-empty list")
    labels = option_labels(len(item["options"]))
    if item["correct_answer_option"] not in labels:
        raise BenchmarkLayoutError(f"{where}: correct_answer_option {item['correct_answer_option']!r} is not one "
                                   f"of {', '.join(labels)}")


def load_file(path: Path, bench: Path, prepend_text: bool = False) -> List[Question]:
    """The questions of one dataset file; image paths resolved against ``bench``."""
    data = _read_json(path)
    _check_file_keys(path, data)
    questions = []
    for qid, item in data["questions"].items():
        _check_question(path, str(qid), item)
        questions.append(Question(
            file=path.name, qid=str(qid), category=str(data["category"]), sub_category=str(data["sub-category"]),
            num_images=str(data["num_images"]), images=tuple(bench / str(p) for p in item["image_paths"]),
            prompt=build_prompt(data, item, prepend_text), options=tuple(str(o) for o in item["options"]),
            correct=str(item["correct_answer_option"])))
    return questions


def check_images(questions: Iterable[Question]) -> None:
    """Every image of the questions to answer exists (else :class:`MissingImageError` naming file and question)."""
    for q in questions:
        for image in q.images:
            if not image.is_file():
                raise MissingImageError(f"{q.file}: question {q.qid}: image {image} not found; the benchmark's "
                                        "images/ folder belongs next to its JSON files")


# ------------------------------------------------------------------------------------------- predictions file
def _read_predictions(path: Path) -> List[Dict[str, Any]]:
    """The answered lines of an earlier run (a line cut by a kill is left out and answered again)."""
    return read_result_lines(path, ("key", "answer"), "question")


def _kept_rows(path: Path, questions: Sequence[Question],
               resume: bool) -> Tuple[Dict[str, Dict[str, Any]], List[Dict[str, Any]]]:
    """With ``resume``: the rows of ``path`` whose question, prompt and image are unchanged (by key), and the rows
    of questions outside this run (kept in the file, e.g. beyond ``limit``). Without: nothing."""
    if not path.is_file():
        return {}, []
    if not resume:
        logger.info("%s exists: starting over (pass resume=True / --resume to keep its answers)", path)
        return {}, []
    wanted = {q.key: q for q in questions}
    kept: Dict[str, Dict[str, Any]] = {}
    others: Dict[str, Dict[str, Any]] = {}
    for row in _read_predictions(path):
        q = wanted.get(str(row["key"]))
        if q is None:
            others[str(row["key"])] = row
        elif row.get("prompt") == q.prompt and row.get("image") == str(q.images[0]):
            kept[q.key] = row
    logger.info("resuming: %d of %d questions already answered in %s", len(kept), len(wanted), path)
    return kept, list(others.values())


def _rewrite(path: Path, rows: Iterable[Dict[str, Any]]) -> None:
    """Write ``rows`` as the file's whole content (atomically: a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prediction_row(q: Question, answer: str, tokens: int) -> Dict[str, Any]:
    """The predictions-file line of an answered question (the parsed option is recomputed when scoring)."""
    predicted, rule = parse_answer_rule(answer, q.options)
    return {"key": q.key, "file": q.file, "id": q.qid, "category": q.category, "sub_category": q.sub_category,
            "num_images": q.num_images, "image": str(q.images[0]), "prompt": q.prompt, "options": list(q.options),
            "correct_answer_option": q.correct, "answer": answer, "tokens": tokens, "predicted_option": predicted,
            "parsed_by": rule, "correct": predicted == q.correct}


# ------------------------------------------------------------------------------------------- generation
def _answer_chunk(model: "FaceGPTModel", chunk: List[Question], generation: Mapping[str, Any],
                  too_long: Dict[str, str]) -> List[Tuple[Question, Any]]:
    """Answer one batch; a question whose prompt does not fit the context is set aside in ``too_long``."""
    from minigpt4.api import PromptTooLongError

    while chunk:
        try:
            details = model.predict_details([str(q.images[0]) for q in chunk], [q.prompt for q in chunk],
                                            len(chunk), **generation)
            return list(zip(chunk, details))
        except PromptTooLongError as err:
            q = chunk.pop(err.index)
            logger.debug("%s: %s", q.key, err)
            too_long[q.key] = SKIP_TOO_LONG
    return []


def generate_predictions(model: "FaceGPTModel", questions: Sequence[Question], path: Path, *, batch_size: int,
                         resume: bool, generation: Mapping[str, Any]) -> Tuple[Dict[str, Dict[str, Any]],
                                                                               Dict[str, str]]:
    """Answer every question not yet in ``path`` (batch by batch, each appended as it finishes).

    Returns the rows by question key, and the questions set aside because their prompt does not fit the context.
    """
    from tqdm.auto import tqdm

    rows, others = _kept_rows(path, questions, resume)
    _rewrite(path, [*others, *rows.values()])
    pending = [q for q in questions if q.key not in rows]
    too_long: Dict[str, str] = {}
    with path.open("a", encoding="utf-8") as handle, \
            tqdm(total=len(pending), desc="FaceXBench", unit="question", disable=None) as bar:
        for start in range(0, len(pending), batch_size):
            for q, detail in _answer_chunk(model, pending[start:start + batch_size], generation, too_long):
                rows[q.key] = prediction_row(q, detail.answer, detail.tokens)
                handle.write(json.dumps(rows[q.key], ensure_ascii=False) + "\n")
            handle.flush()
            bar.update(len(pending[start:start + batch_size]))
    if too_long:
        logger.warning("%d question(s) skipped: the prompt does not fit max_length - max_new_tokens (e.g. %s); raise "
                       "max_length (the LLM's context allows it) or lower max_new_tokens", len(too_long),
                       next(iter(too_long)))
    return rows, too_long


# ------------------------------------------------------------------------------------------- scoring
def _empty_row() -> Dict[str, Any]:
    return {"questions": 0, "answered": 0, "correct": 0, "unparseable": 0, "skipped": 0, "chance_sum": 0.0}


def _finish_row(row: Dict[str, Any]) -> Dict[str, Any]:
    answered = row["answered"]
    chance = row.pop("chance_sum")
    row["accuracy"] = row["correct"] / answered if answered else None
    row["chance"] = chance / answered if answered else None
    row["accuracy_all_questions"] = row["correct"] / row["questions"] if row["questions"] else None
    return row


def _group_value(q: Question, field: str) -> str:
    return str(getattr(q, field))


def _ordered(names: Iterable[str], field: str) -> List[str]:
    """Group names in the benchmark's order (known names first), the rest sorted."""
    if field == "category":
        known: Sequence[str] = tuple(CATEGORY_ORDER)
    elif field == "sub_category":
        known = tuple(s for subs in CATEGORY_ORDER.values() for s in subs)
    elif field == "num_images":
        known = NUM_IMAGES_ORDER
    else:
        known = ()
    names = set(names)
    return [n for n in known if n in names] + sorted(names - set(known))


def score(questions: Sequence[Question], rows: Mapping[str, Mapping[str, Any]],
          skipped: Mapping[str, str]) -> Dict[str, Any]:
    """Counts and accuracies overall and per grouping, from the answers in ``rows`` (parsed again here)."""
    total = _empty_row()
    groups: Dict[str, Dict[str, Dict[str, Any]]] = {name: {} for _, name in GROUPINGS}
    parsed_by = {rule: 0 for rule in RULES}
    for q in questions:
        cells = [total] + [groups[name].setdefault(_group_value(q, field), _empty_row()) for field, name in GROUPINGS]
        row = rows.get(q.key)
        for cell in cells:
            cell["questions"] += 1
        if row is None:
            for cell in cells:
                cell["skipped"] += 1
            continue
        predicted, rule = parse_answer_rule(str(row["answer"]), q.options)
        parsed_by[rule] += 1
        for cell in cells:
            cell["answered"] += 1
            cell["correct"] += int(predicted == q.correct)
            cell["unparseable"] += int(predicted is None)
            cell["chance_sum"] += 1.0 / len(q.options)
    report: Dict[str, Any] = {"overall": _finish_row(total), "parsed_by": parsed_by}
    for field, name in GROUPINGS:
        report[name] = {key: _finish_row(groups[name][key]) for key in _ordered(groups[name], field)}
    reasons: Dict[str, int] = {}
    for reason in skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    report["skipped_by_reason"] = reasons
    report["skipped_questions"] = [{"key": key, "reason": reason} for key, reason in skipped.items()]
    return report


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the headline figures, then one table per grouping."""
    overall = report["overall"]
    lines = ["# FaceXBench", "",
             f"Single-image accuracy: **{_pct(overall['accuracy'])}** ({overall['correct']}/{overall['answered']} "
             f"answered questions; chance {_pct(overall['chance'])}); unparseable answers: {overall['unparseable']} "
             "(counted wrong).",
             f"Skipped: {overall['skipped']} of {overall['questions']} questions"
             + (" (" + "; ".join(f"{reason}: {n}, {SKIP_NOTES.get(reason, '')}"
                                 for reason, n in report["skipped_by_reason"].items()) + ")"
                if report["skipped_by_reason"] else "") + "; "
             f"accuracy over all {overall['questions']} questions with the skipped ones counted wrong (as the "
             f"benchmark's total): {_pct(overall['accuracy_all_questions'])}.",
             f"Prompt: prepend_text {'on' if report.get('prepend_text') else 'off'}; options found "
             + ", ".join(f"{rule} {n}" for rule, n in report["parsed_by"].items()) + "."]
    titles = {"by_category": "category", "by_sub_category": "sub-category", "by_file": "dataset file",
              "by_num_images": "num_images"}
    for _, name in GROUPINGS:
        lines += ["", f"| {titles[name]} | questions | answered | correct | accuracy | chance | unparseable | "
                      "skipped |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, row in report[name].items():
            lines.append(f"| {key} | {row['questions']} | {row['answered']} | {row['correct']} | "
                         f"{_pct(row['accuracy'])} | {_pct(row['chance'])} | {row['unparseable']} | {row['skipped']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- entry point
def run_facexbench(model: "FaceGPTModel", root: Path, out: Path, *, batch_size: int = 8,
                   limit: Optional[int] = None, prepend_text: bool = False, resume: bool = False,
                   **generation: Any) -> Dict[str, Any]:
    """Answer FaceXBench with ``model`` and score it; writes the predictions and the reports into ``out``.

    Args:
        model: a loaded model (:func:`minigpt4.api.load_model`); answers come from ``model.predict_details``.
        root: the benchmark folder (or the folder holding it as ``benchmark/``).
        out: the output folder (created).
        batch_size: questions per generation batch.
        limit: only the first ``limit`` questions (files in name order, questions in file order).
        prepend_text: put each file's task description before the question (the benchmark's ``--prepend_text``).
        resume: keep the answers of ``out/facexbench_predictions.jsonl`` and answer only the rest.
        generation: generation settings (``max_new_tokens=...``, ``num_beams=...``) for every answer.

    Returns the report (also written as ``facexbench_report.json`` / ``.md``).
    """
    if batch_size < 1:
        raise FaceXBenchError(f"batch_size must be >= 1 (got {batch_size})")
    questions = load_benchmark(root, prepend_text)
    if limit is not None:
        questions = questions[:limit]
    skipped = {q.key: q.skip_reason for q in questions if q.skip_reason is not None}
    answerable = [q for q in questions if q.key not in skipped]
    check_images(answerable)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    logger.info("FaceXBench: %d questions in %s, %d with one image to answer, %d skipped", len(questions),
                benchmark_dir(root), len(answerable), len(skipped))
    rows, too_long = generate_predictions(model, answerable, out / PREDICTIONS_FILE, batch_size=batch_size,
                                          resume=resume, generation=generation)
    skipped.update(too_long)
    settings = model.settings.replace(**generation) if generation else model.settings
    report = {"benchmark": "FaceXBench", "root": str(benchmark_dir(root)), "prepend_text": prepend_text,
              "limit": limit, "generation": {k: getattr(settings, k) for k in settings.names()},
              **score(questions, rows, skipped)}
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(markdown_report(report), encoding="utf-8")
    logger.info("FaceXBench single-image accuracy %s over %d answered questions (%d skipped); report: %s",
                _pct(report["overall"]["accuracy"]), report["overall"]["answered"], report["overall"]["skipped"],
                out / REPORT_MD)
    return report


__all__ = ["BenchmarkLayoutError", "FaceXBenchError", "MissingImageError", "Question", "build_prompt",
           "load_benchmark", "markdown_report", "parse_answer", "parse_answer_rule", "run_facexbench", "score"]
