"""Batched answers for the evaluation, appended to ``predictions.jsonl`` as each batch finishes (resumable).

One line per (checkpoint, sample): ``{"checkpoint", "id", "section", "image", "question", "reference",
"answer", "tokens"}``. A run started again with ``--resume`` reads the lines already there (a line cut by a kill
is ignored and answered again) and generates only the samples not yet answered for that checkpoint; greedy answers
do not depend on the batch they were in, so the resumed file equals one uninterrupted run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from minigpt4.common.jsonl import read_result_lines
from minigpt4.common.logger import get_logger
from minigpt4.evaluation.samples import EvalSample

logger = get_logger(__name__)

Key = Tuple[str, str]  # (checkpoint, sample id)


class PredictionLog:
    """``predictions.jsonl`` (or memory only, with no path): rows by (checkpoint, id), appended and flushed."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.rows: Dict[Key, Dict[str, Any]] = {}
        self._handle: Optional[TextIO] = None
        if path is not None and path.is_file():
            self._read(path)

    def _read(self, path: Path) -> None:
        for row in read_result_lines(path, ("checkpoint", "id", "answer"), "sample"):
            self.rows[(str(row["checkpoint"]), str(row["id"]))] = row

    def has(self, checkpoint: str, sample_id: str) -> bool:
        """Whether this sample is already answered for this checkpoint."""
        return (checkpoint, sample_id) in self.rows

    def answer(self, checkpoint: str, sample_id: str) -> str:
        """The stored answer of a sample."""
        return str(self.rows[(checkpoint, sample_id)]["answer"])

    def add(self, row: Dict[str, Any]) -> None:
        """Keep a row and, with a path, append it to the file (flushed at once)."""
        self.rows[(str(row["checkpoint"]), str(row["id"]))] = row
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.is_file() and self.path.stat().st_size > 0 and \
                not self.path.read_bytes().endswith(b"\n")
            self._handle = self.path.open("a", encoding="utf-8")
            if cut:  # a line cut short by a killed run: start on a fresh line
                self._handle.write("\n")
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Flush the file after a batch."""
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _progress(total: int, desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="answer", desc=desc, disable=disable, file=sys.stderr)


def generate_answers(model: Any, samples: Sequence[EvalSample], checkpoint: str, log: PredictionLog, *,
                     batch_size: int = 8, progress: bool = True, **generation: Any) -> List[str]:
    """Answers of ``model`` (a :class:`minigpt4.api.FaceGPTModel`) to ``samples`` in order: the ones in ``log``
    are reused, the others generated ``batch_size`` at a time and appended to the log after each batch."""
    todo = [s for s in samples if not log.has(checkpoint, s.id)]
    if len(todo) < len(samples):
        logger.info("%s: %d of %d answer(s) already in %s", checkpoint or "model", len(samples) - len(todo),
                    len(samples), log.path)
    with _progress(len(todo), f"facegpt-eval {checkpoint or 'model'}"[:60], not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            predictions = model.predict_details([s.image for s in batch], [s.question for s in batch],
                                                batch_size=len(batch), **generation)
            for sample, prediction in zip(batch, predictions):
                log.add({"checkpoint": checkpoint, "id": sample.id, "section": sample.section, "image": sample.image,
                         "question": sample.question, "reference": sample.reference, "answer": prediction.answer,
                         "tokens": prediction.tokens})
            log.flush()
            bar.update(len(batch))
    return [log.answer(checkpoint, s.id) for s in samples]
