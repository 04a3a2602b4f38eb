"""The evaluation report: scores per section and checkpoint, side by side, as JSON, Markdown and confusion PNGs.

A section with a label map is scored as a closed set on the samples whose reference answer names a label (the
others are counted in a note); a section without one is scored as open-ended, with a note. Every section also
gets the refusal / hedge rates of each checkpoint's answers. With several checkpoints (named A, B, ... in the
order given) each later one is compared with the first: the difference of every number, per section.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from minigpt4.common.logger import get_logger
from minigpt4.evaluation.labels import LabelMap, find_label_map
from minigpt4.evaluation.metrics import UNPARSEABLE, closed_set_scores, open_ended_scores, refusal_rates
from minigpt4.evaluation.samples import EvalSample

logger = get_logger(__name__)

#: the number each kind of section is compared by in the summary table
HEADLINE = {"closed": "accuracy", "open": "rouge_l"}
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "unparseable": "unparseable", "bleu4": "BLEU-4",
                "chrf": "chrF", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D", "answer_words": "answer words",
                "reference_words": "reference words", "refusal": "refusal", "hedge": "hedge"}
PERCENT = {"accuracy", "macro_f1", "unparseable", "refusal", "hedge", "chance", "majority"}
CLOSED_COLUMNS = ("accuracy", "macro_f1", "unparseable", "refusal", "hedge")
OPEN_COLUMNS = ("bleu4", "chrf", "rouge_l", "cider_d", "answer_words", "refusal", "hedge")


def checkpoint_names(count: int) -> List[str]:
    """``A``, ``B``, ... (``A1``... beyond 26)."""
    return [chr(65 + k) if count <= 26 else f"A{k + 1}" for k in range(count)]


def _by_section(samples: Sequence[EvalSample]) -> "OrderedDict[str, List[int]]":
    groups: "OrderedDict[str, List[int]]" = OrderedDict()
    for k, s in enumerate(samples):
        groups.setdefault(s.section, []).append(k)
    return groups


def _closed_section(section: str, label_map: LabelMap, refs: List[str], answers: Dict[str, List[str]]
                    ) -> Dict[str, Any]:
    parsed = [label_map.parse(r) for r in refs]
    keep = [k for k, label in enumerate(parsed) if label is not None]
    labels = list(label_map.labels)
    entry: Dict[str, Any] = {"section": section, "kind": "closed", "n": len(keep), "label_map": label_map.source,
                             "labels": labels, "unlabelled_references": len(refs) - len(keep), "scores": {}}
    if len(keep) < len(refs):
        entry["note"] = (f"{len(refs) - len(keep)} of {len(refs)} reference answer(s) name no label of "
                         f"{Path(label_map.source).name}; left out of the closed-set scores")
    ref_labels = [parsed[k] for k in keep]
    for name, texts in answers.items():
        scores = closed_set_scores(ref_labels, [label_map.parse(texts[k]) for k in keep], labels)
        entry.update(chance=scores.chance, majority=scores.majority, majority_label=scores.majority_label)
        row = {key: getattr(scores, key) for key in ("accuracy", "macro_f1", "unparseable")}
        row.update(refusal_rates([texts[k] for k in keep]), confusion=scores.confusion)
        entry["scores"][name] = row
    return entry


def _open_section(section: str, refs: List[str], answers: Dict[str, List[str]], note: Optional[str]
                  ) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"section": section, "kind": "open", "n": len(refs), "scores": {}}
    if note:
        entry["note"] = note
    for name, texts in answers.items():
        row = asdict(open_ended_scores(refs, texts))
        row.pop("n")
        row.update(refusal_rates(texts))
        entry["scores"][name] = row
    return entry


def _differences(entry: Dict[str, Any], names: Sequence[str]) -> None:
    if len(names) < 2:
        return
    base = entry["scores"][names[0]]
    entry["difference"] = {f"{name} - {names[0]}": {key: value - base[key] for key, value in entry["scores"][name]
                                                     .items() if isinstance(value, (int, float))}
                           for name in names[1:]}


def build_report(samples: Sequence[EvalSample], answers: Dict[str, List[str]], label_maps: Dict[str, LabelMap],
                 meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``{"meta", "sections": [...], "notes": [...]}``; ``answers``: checkpoint name -> answers in sample order."""
    sections, notes = [], []
    names = list(answers)
    for section, index in _by_section(samples).items():
        refs = [samples[k].reference for k in index]
        texts = {name: [answers[name][k] for k in index] for name in names}
        label_map = find_label_map(label_maps, section)
        if label_map is not None:
            entry = _closed_section(section, label_map, refs, texts)
        else:
            note = (f"section {section!r} has no label map: scored as open-ended (add a label-map YAML with "
                    "--label-maps DIR to score it as a closed set)")
            entry = _open_section(section, refs, texts, note if len(refs) and _looks_closed(refs) else None)
        _differences(entry, names)
        if entry.get("note"):
            notes.append(entry["note"])
        sections.append(entry)
    return {"meta": dict(meta or {}), "checkpoints": names, "sections": sections, "notes": notes}


def _looks_closed(refs: Sequence[str]) -> bool:
    """Whether a section's references look like a closed set (few distinct short answers): worth a note."""
    return len(set(refs)) <= max(2, len(refs) // 3) and max(len(r.split()) for r in refs) <= 12


# ---------------------------------------------------------------------------------------------- Markdown
def _fmt(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if key in PERCENT:
        return f"{100 * value:.1f}%"
    if key in ("answer_words", "reference_words"):
        return f"{value:.1f}"
    if key in ("bleu4", "chrf"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def _fmt_diff(key: str, value: float) -> str:
    if key in PERCENT:
        return f"{100 * value:+.1f} pt"
    return f"{value:+.2f}" if key in ("bleu4", "chrf", "answer_words") else f"{value:+.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if k == 0 else "---:" for k in
                                                             range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary_table(report: Dict[str, Any]) -> List[str]:
    """One row per section: n, its headline metric per checkpoint (and the difference), chance, majority."""
    names = report["checkpoints"]
    header = ["section", "kind", "n", "metric", *names, *[f"{n} − {names[0]}" for n in names[1:]], "chance",
              "majority"]
    rows = []
    for e in report["sections"]:
        key = HEADLINE[e["kind"]]
        cells = [e["section"], "closed" if e["kind"] == "closed" else "open", str(e["n"]), METRIC_NAMES[key]]
        if e["n"]:
            cells += [_fmt(key, e["scores"][n][key]) for n in names]
            cells += [_fmt_diff(key, e["difference"][f"{n} - {names[0]}"][key]) for n in names[1:]]
        else:  # nothing scored (e.g. no reference named a label): no numbers to show
            cells += ["—"] * (2 * len(names) - 1)
        cells += [_fmt("chance", e.get("chance")), _fmt("majority", e.get("majority") if e["n"] else None)]
        rows.append(cells)
    return _table(header, rows)


def section_table(entry: Dict[str, Any], names: Sequence[str]) -> List[str]:
    """Every number of one section, one row per checkpoint (and per difference)."""
    columns = CLOSED_COLUMNS if entry["kind"] == "closed" else OPEN_COLUMNS
    extra = ["chance", "majority"] if entry["kind"] == "closed" else []
    header = ["checkpoint", "n", *[METRIC_NAMES[c] for c in columns], *extra]
    rows = []
    for name in names:
        scores = entry["scores"][name]
        rows.append([name, str(entry["n"]), *[_fmt(c, scores[c]) for c in columns],
                     *[_fmt(c, entry.get(c)) for c in extra]])
    for label, diff in entry.get("difference", {}).items():
        rows.append([label.replace(" - ", " − "), "", *[_fmt_diff(c, diff[c]) for c in columns], *[""] * len(extra)])
    return _table(header, rows)


def markdown(report: Dict[str, Any], pictures: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """The report as Markdown: what was scored, the summary table, then one table per section."""
    meta, names = report["meta"], report["checkpoints"]
    lines = ["# facegpt-eval", ""]
    for key in ("config", "data", "samples", "generation"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    for name, path in zip(names, meta.get("checkpoint_paths", [])):
        lines.append(f"- checkpoint {name}: {path}")
    lines += ["", "## Summary", "", *summary_table(report), ""]
    for entry in report["sections"]:
        kind = f"closed set, {len(entry['labels'])} labels" if entry["kind"] == "closed" else "open-ended"
        lines += [f"## {entry['section']} ({kind})", ""]
        if entry["n"]:
            lines += [*section_table(entry, names), ""]
        if entry["kind"] == "closed" and entry["n"]:
            lines.append(f"Majority label: {entry.get('majority_label', '—')}. Labels: {', '.join(entry['labels'])}.")
            lines.append("")
        if entry.get("note"):
            lines += [f"Note: {entry['note']}", ""]
        for name, picture in (pictures or {}).get(entry["section"], {}).items():
            lines += [f"![confusion {entry['section']} {name}]({picture})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- pictures
def slug(text: str) -> str:
    """A file-name friendly form of a section name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "section"


def confusion_png(entry: Dict[str, Any], name: str, path: Path) -> Path:
    """A confusion-matrix picture (reference rows, predicted columns, counts written in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = entry["scores"][name]["confusion"]
    labels = entry["labels"]
    columns = [*labels, UNPARSEABLE]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(columns), 1.0 + 0.6 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(f"{entry['section']} ({name}, n={entry['n']})", fontsize=9)
    peak = max((max(row) for row in matrix), default=0)
    for r, row in enumerate(matrix):
        for c, count in enumerate(row):
            ax.text(c, r, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_pictures(report: Dict[str, Any], out: Path) -> Dict[str, Dict[str, str]]:
    """One confusion PNG per closed-set section and checkpoint under ``out``: ``{section: {name: file name}}``."""
    written: Dict[str, Dict[str, str]] = {}
    for entry in report["sections"]:
        if entry["kind"] != "closed" or not entry["n"]:
            continue
        for name in report["checkpoints"]:
            path = confusion_png(entry, name, out / f"confusion_{slug(entry['section'])}_{name}.png")
            written.setdefault(entry["section"], {})[name] = path.name
    return written
