"""Precision and recall of ``facegpt-data clean``'s refusal detector on hand-labelled GPT-4V-style face answers.

The labelled set (``tests/fixtures/data/refusals_labelled.json`` by default, or ``--file``) is a JSON list of
``{"id", "split", "kind", "label": "refusal" | "answer", "section", "question", "answer", "cleaned"?}``;
``cleaned`` is the text expected after the hedge clause or disclaimer sentence is stripped (absent: the answer
must be kept verbatim). A refusal is the positive class. Prints one row per ``split`` and one for all, with
how many hedged answers were cleaned to exactly the expected text. Not a test:
run ``python benchmarks/bench_refusal_detector.py [--file other.json] [--errors]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from minigpt4.tools.data_clean import score_labelled
from minigpt4.tools.data_common import format_table

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "data",
                            "refusals_labelled.json")


def load_labelled(path: str) -> List[Dict[str, Any]]:
    """The labelled examples of ``path`` (a JSON list); ValueError with one clear line when it is not one."""
    try:
        with open(path, encoding="utf-8") as fp:
            data = json.load(fp)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the labelled set ({exc.strerror}); pass an existing file to --file")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})")
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path}: expected a JSON list of labelled examples (objects with 'answer' and 'label')")
    return data


def _row(name: str, r: Dict[str, Any]) -> List[Any]:
    return [name, r["n"], r["tp"] + r["fn"], r["tp"], r["fp"], r["fn"], f"{r['precision']:.3f}",
            f"{r['recall']:.3f}", f"{r['hedged_exact']}/{r['hedged']}", f"{r['verbatim_exact']}/{r['verbatim']}"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default=DEFAULT_FILE, help="labelled set (JSON list; see the module docstring)")
    parser.add_argument("--errors", action="store_true", help="also print every misclassified or mis-cleaned answer")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)
    try:
        examples = load_labelled(args.file)
        splits = {name: score_labelled([e for e in examples if e.get("split", "all") == name])
                  for name in dict.fromkeys(e.get("split", "all") for e in examples)}
        total = score_labelled(examples)
    except ValueError as exc:
        message = str(exc)
        print(message if message.startswith(args.file) else f"{args.file}: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"splits": splits, "all": total}, indent=1, ensure_ascii=False))
        return 0
    rows = [_row(name, r) for name, r in splits.items()]
    if len(splits) > 1:
        rows.append(_row("ALL", total))
    print(f"refusal detector on {os.path.relpath(args.file)} (refusal = positive class)")
    print(format_table(rows, ["split", "answers", "refusals", "TP", "FP", "FN", "precision", "recall",
                              "hedged exact", "kept verbatim"]))
    if args.errors:
        for e in total["errors"]:
            print(f"\n{e['id']} ({e['label']}, cleaner said {e['verdict']})\n  answer:   {e['answer']}\n"
                  f"  got:      {e['got']}\n  expected: {e['expected']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
