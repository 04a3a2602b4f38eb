"""``facegpt-data clean``: drop GPT-4V refusals and exact duplicates, strip disclaimer sentences.

Refusal rules (all case-insensitive, after curly apostrophes become ``'``), from public refusal filters:

* a sentence is a **disclaimer** when it starts with one of :data:`REFUSAL_PREFIXES` ("I'm sorry", "I cannot",
  "As an AI", ...) or matches one of :data:`HEDGE_PATTERNS` ("can't … determine/identify/assess …",
  "not appropriate to", "cannot determine race", ...);
* an answer whose disclaimer sentences are removed keeps the rest when at least :data:`MIN_KEPT_WORDS` words of
  real answer remain (**stripped**); otherwise the answer is a **refusal** and its question/answer pair is
  dropped; a record with no pair left is dropped;
* **duplicates**: a record whose image and conversation (lower-cased, whitespace-collapsed) equal an earlier
  record's is dropped.

The input file is never modified: the cleaned copy is written elsewhere, in the same layout, with a report
of kept/dropped per section. Records that are not LLaVA-shaped and prompt sections pass through unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from minigpt4.datasets.json_stream import iter_sections
from minigpt4.tools.data_common import AnnFile, format_table, is_prompt_section, iter_file, progress, sections_of

REFUSAL_PREFIXES = (
    "i'm sorry", "i am sorry", "sorry,", "i apologize", "i cannot", "i can't", "i can not", "i'm unable",
    "i am unable", "i'm not able", "i am not able", "as an ai", "i won't be able", "unfortunately, i can't",
    "unfortunately, i cannot",
)
HEDGE_PATTERNS = tuple(re.compile(p) for p in (
    r"\b(can't|cannot|can not|unable to|not able to|won't)\b[^.!?]{0,80}\b(identify|determine|assess|provide|"
    r"tell|infer|speculate|make assumptions|guess|recognize|know)\b",
    r"\bit'?s not (appropriate|possible) to\b",
    r"\bit is not (appropriate|possible) to\b",
    r"\bnot (appropriate|possible) (for me )?to (determine|infer|assume|identify|speculate|make)\b",
    r"\b(cannot|can't|not possible to) (determine|tell|infer|identify)\b[^.!?]{0,40}\b(race|ethnicity|gender|"
    r"identity|age|skin type)\b",
))
MIN_KEPT_WORDS = 6
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _norm(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def is_disclaimer(sentence: str) -> bool:
    """Whether one sentence is a refusal or hedge."""
    s = _norm(sentence).strip()
    return s.startswith(REFUSAL_PREFIXES) or any(p.search(s) for p in HEDGE_PATTERNS)


def classify_answer(text: str) -> Tuple[str, str]:
    """``("ok" | "stripped" | "refusal", text to keep)`` for one assistant answer."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    kept = [s for s in sentences if not is_disclaimer(s)]
    if len(kept) == len(sentences):
        return "ok", text
    rest = " ".join(kept)
    if len(rest.split()) >= MIN_KEPT_WORDS and not is_disclaimer(rest):
        return "stripped", rest
    return "refusal", ""


def is_refusal(text: str) -> bool:
    """Whether an answer is a refusal once disclaimers are removed (used by ``stats``)."""
    return classify_answer(text)[0] == "refusal"


def _dedupe_key(raw: Dict[str, Any]) -> str:
    turns = " | ".join(f"{t.get('from')}:{' '.join(str(t.get('value')).lower().split())}"
                       for t in raw["conversations"])
    return hashlib.sha1(f"{os.path.normpath(str(raw.get('image')))}\0{turns}".encode("utf-8")).hexdigest()


def clean_record(raw: Any) -> Tuple[str, Any, int]:
    """``(outcome, record, stripped answers)``; outcome ∈ ok, refusal, passthrough."""
    turns = raw.get("conversations") if isinstance(raw, dict) else None
    if not isinstance(turns, list) or len(turns) % 2 or not all(isinstance(t, dict) for t in turns):
        return "passthrough", raw, 0
    kept: List[Dict[str, Any]] = []
    stripped = 0
    for q, a in zip(turns[0::2], turns[1::2]):
        if not isinstance(a.get("value"), str):
            return "passthrough", raw, 0
        verdict, text = classify_answer(a["value"])
        if verdict == "refusal":
            continue
        if verdict == "stripped":
            stripped += 1
            a = dict(a, value=text)
        moved = not kept and q is not turns[0] and "<image>" in str(turns[0].get("value", ""))
        if moved and isinstance(q.get("value"), str):
            q = dict(q, value="<image>\n" + q["value"])  # the image token follows the first kept question
        kept += [q, a]
    if not kept:
        return "refusal", None, 0
    out = copy.copy(raw)
    out["conversations"] = kept
    return "ok", out, stripped


class SectionWriter:
    """Streams records out in the input's layout (JSON list, or section dict)."""

    def __init__(self, path: str, kind: str) -> None:
        self.fp = open(path, "w", encoding="utf-8")
        self.kind, self.section, self.first = kind, None, True
        self.fp.write("[" if kind == "array" else "{")

    def start_section(self, key: str) -> None:
        if self.section is not None:
            self.fp.write("\n]")
        self.fp.write(("" if self.section is None else ",") + f"\n{json.dumps(key, ensure_ascii=False)}: [")
        self.section, self.first = key, True

    def write(self, raw: Any) -> None:
        self.fp.write(("\n" if self.first else ",\n") + json.dumps(raw, ensure_ascii=False))
        self.first = False

    def close(self) -> None:
        if self.kind == "object" and self.section is not None:
            self.fp.write("\n]")
        self.fp.write("\n]\n" if self.kind == "array" else "\n}\n")
        self.fp.close()


def raw_section_keys(ann: AnnFile) -> Dict[str, str]:
    """Trimmed section name → the key as written in the file (trailing spaces kept)."""
    return {key.strip(): key for key, _ in iter_sections(ann.path)}


def clean_file(ann: AnnFile, out_path: str, prompt_sections: Tuple[str, ...] = ("Pre-Prompt",)) -> Dict[str, Any]:
    """Write the cleaned copy of ``ann`` to ``out_path``; returns the per-section report."""
    if os.path.abspath(out_path) == os.path.abspath(ann.path):
        raise SystemExit(f"clean never modifies its input: choose an output other than {ann.path}")
    report: Dict[str, Dict[str, int]] = {s: _empty() for s in sections_of(ann)}
    raw_keys = raw_section_keys(ann) if ann.kind == "object" else {}
    seen: set = set()
    writer = SectionWriter(out_path, ann.kind)
    current: Optional[str] = None
    try:
        for section, _, raw in progress(iter_file(ann), f"clean {ann.label}"):
            if ann.kind == "object" and section != current:
                open_sections_until(writer, report, raw_keys, current, section)
                current = section
            _clean_one(raw, section, report[section], seen, writer, prompt_sections)
        if ann.kind == "object":
            open_sections_until(writer, report, raw_keys, current, None)
    finally:
        writer.close()
    return {"input": ann.path, "output": out_path, "sections": report, "totals": _totals(report)}


def open_sections_until(writer: SectionWriter, report: Dict[str, Any], raw_keys: Dict[str, str], current: Optional[str],
                         target: Optional[str]) -> None:
    """Open every section after ``current`` up to ``target`` (so empty sections are written too)."""
    names = list(report)
    start = names.index(current) + 1 if current is not None else 0
    stop = names.index(target) + 1 if target is not None else len(names)
    for name in names[start:stop]:
        writer.start_section(raw_keys.get(name, name))


def _empty() -> Dict[str, int]:
    return {"records": 0, "kept": 0, "dropped_refusal": 0, "dropped_duplicate": 0, "stripped_answers": 0,
            "passthrough": 0}


def _clean_one(raw: Any, section: str, row: Dict[str, int], seen: set, writer: SectionWriter,
               prompt_sections: Tuple[str, ...]) -> None:
    row["records"] += 1
    outcome, rec, stripped = ("passthrough", raw, 0) if is_prompt_section(section, prompt_sections) \
        else clean_record(raw)
    if outcome == "refusal":
        row["dropped_refusal"] += 1
        return
    if outcome == "ok":
        key = _dedupe_key(rec)
        if key in seen:
            row["dropped_duplicate"] += 1
            return
        seen.add(key)
    else:
        row["passthrough"] += 1
    row["stripped_answers"] += stripped
    row["kept"] += 1
    writer.write(rec)


def _totals(report: Dict[str, Dict[str, int]]) -> Dict[str, int]:
    totals = _empty()
    for row in report.values():
        for k, v in row.items():
            totals[k] += v
    return totals


def report_table(result: Dict[str, Any]) -> str:
    """The per-section kept/dropped table."""
    rows = [[s or "(all)", r["records"], r["kept"], r["dropped_refusal"], r["dropped_duplicate"],
             r["stripped_answers"], r["passthrough"]] for s, r in result["sections"].items()]
    t = result["totals"]
    rows.append(["TOTAL", t["records"], t["kept"], t["dropped_refusal"], t["dropped_duplicate"],
                 t["stripped_answers"], t["passthrough"]])
    return format_table(rows, ["section", "records", "kept", "refusals", "duplicates", "stripped", "passthrough"])
