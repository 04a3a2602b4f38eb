"""Reading the JSON-lines files that resumable tools append to (predictions of ``facegpt-predict``,
``facegpt-eval`` and its FaceXBench runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)


def read_result_lines(path: Path, required: Sequence[str], unit: str = "line") -> List[Dict[str, Any]]:
    """The JSON objects of ``path`` holding every key in ``required``, in file order.

    A line that is not JSON (e.g. one cut by a killed run) is skipped with a warning saying that its ``unit`` is
    answered again; a missing file gives ``[]``.
    """
    path = Path(path)
    rows: List[Dict[str, Any]] = []
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                if text.strip():
                    logger.warning("%s:%d is not a JSON line (cut by an interrupted run?); its %s is answered again",
                                   path, number, unit)
                continue
            if isinstance(row, dict) and all(key in row for key in required):
                rows.append(row)
    return rows
