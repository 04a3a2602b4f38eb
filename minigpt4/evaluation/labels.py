"""Per-section label maps: read a closed-set label (``happy``, ``IV``, ``human``...) from a free-text answer.

One YAML file per section (shipped in ``minigpt4/configs/label_maps/``; users add folders with
``facegpt-eval --label-maps DIR``, later folders win)::

    section: Fitzpatrick                  # section name as in the data (compared stripped, case-insensitive)
    aliases: ["Fitzpatrick skin type"]    # optional: other section names this map serves
    labels:                               # label -> words or phrases naming it (whole-word, case-insensitive)
      I: ["type I", "type 1"]
      II: ["type II", "type 2"]
    negations: ["not", "no", "without"]   # optional extra negation words

Rules of :meth:`LabelMap.parse`:

* a phrase matches as whole words, case-insensitively, with any run of spaces between its words; a phrase that
  starts with ``^`` only matches at the start of the answer (``"^no"``: "No, this is ..." but not "no doubt");
* where phrases overlap, the longest wins ("mildly intense" is not also "intense");
* a phrase right after a negation word ("not smiling", "no glasses", "isn't a human face", "not a happy face":
  up to two words between, none of them a conjunction or punctuation) does not count;
* of the labels left, the one named first in the answer is the answer's label; none: ``None`` (unparseable).

The label name itself is not a phrase unless listed (``I`` would match the pronoun).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from minigpt4.common.errors import UserError
from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: the shipped label maps
LABEL_MAP_DIR = Path(__file__).resolve().parents[1] / "configs" / "label_maps"
#: negation words every map knows (a map's ``negations`` adds to them)
NEGATIONS = ("not", "no", "never", "without", "neither", "nor", "isn't", "aren't", "wasn't", "weren't",
             "doesn't", "don't", "didn't", "hasn't", "haven't", "non")
#: words that end a negation's reach ("not smiling but happy": happy counts)
CONJUNCTIONS = frozenset(("but", "and", "or", "yet", "although", "though", "while", "whereas", "so", "because"))
#: how many words may sit between a negation and the phrase it negates ("not a human face", "isn't very happy")
NEGATION_REACH = 2
_WORD = re.compile(r"[\w'-]+")


class LabelMapError(UserError, ValueError):
    """A label-map YAML file cannot be used; the message names the file and the key."""


def normalise(text: str) -> str:
    """Lower-case text with typographic apostrophes made plain and runs of white space made one space."""
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").lower().split())


def section_key(name: str) -> str:
    """How section names are compared: stripped, case-insensitive, inner white space collapsed."""
    return " ".join(str(name).split()).lower()


def _phrase_pattern(phrase: str) -> re.Pattern:
    """The regex of one phrase: whole words, any white space between them, ``^`` = at the start of the answer."""
    anchored = phrase.startswith("^")
    words = normalise(phrase.lstrip("^")).split()
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile((r"^[\s\"'(]*" if anchored else r"(?<![\w-])") + f"({body})" + r"(?![\w-])")


@dataclass
class _Match:
    label: str
    start: int
    end: int


@dataclass
class LabelMap:
    """One section's labels and the phrases that name them (see the module docstring for the rules)."""

    section: str
    labels: Dict[str, List[str]]
    aliases: List[str] = field(default_factory=list)
    negations: List[str] = field(default_factory=list)
    source: str = ""
    _patterns: List[Tuple[str, re.Pattern]] = field(default_factory=list, repr=False)
    _negations: frozenset = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        self._patterns = [(label, _phrase_pattern(p)) for label, phrases in self.labels.items() for p in phrases]
        self._negations = frozenset(normalise(w) for w in (*NEGATIONS, *self.negations))

    @property
    def names(self) -> List[str]:
        """The section names this map serves (its section first)."""
        return [self.section, *self.aliases]

    def serves(self, section: str) -> bool:
        """Whether ``section`` (as written in the data) is one of :attr:`names`."""
        return section_key(section) in {section_key(n) for n in self.names}

    def matches(self, text: str) -> List[Tuple[str, int]]:
        """``(label, position)`` of every phrase that counts in ``text``, in order of position."""
        norm = normalise(text)
        found = [_Match(label, m.start(1), m.end(1)) for label, pattern in self._patterns
                 for m in pattern.finditer(norm)]
        kept: List[_Match] = []
        for m in sorted(found, key=lambda m: (-(m.end - m.start), m.start)):  # the longest of overlapping wins
            if not any(m.start < k.end and k.start < m.end for k in kept):
                kept.append(m)
        return [(m.label, m.start) for m in sorted(kept, key=lambda m: m.start) if not self._negated(norm, m.start)]

    def _negated(self, norm: str, start: int) -> bool:
        """Whether a negation word stands at most :data:`NEGATION_REACH` words before ``start``, in one clause."""
        before = norm[:start]
        clause = re.split(r"[.,;:!?()\"\u2014]", before)[-1]  # punctuation ends a negation's reach
        words = _WORD.findall(clause)
        for gap, word in enumerate(reversed(words)):
            if word in self._negations or word.endswith("n't") and word not in ("can't", "couldn't"):
                return True
            if gap >= NEGATION_REACH or word in CONJUNCTIONS:
                return False
        return False

    def parse(self, text: str) -> Optional[str]:
        """The label the answer names first (negated phrases left out), or None when it names none."""
        found = self.matches(text or "")
        return found[0][0] if found else None


def _as_phrases(value: Any, path: Path, label: str) -> List[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip("^ ") for p in items):
        raise LabelMapError(f"{path}: labels.{label} must be a non-empty list of words or phrases, got {value!r}")
    return list(items)


def read_label_map(path: Path) -> LabelMap:
    """One label map from its YAML file; :class:`LabelMapError` names the file and the faulty key."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise LabelMapError(f"{path}: cannot read the label map: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise LabelMapError(f"{path}: a label map is a mapping with section, labels (and optional aliases, "
                            "negations)")
    unknown = sorted(set(data) - {"section", "aliases", "labels", "negations"})
    if unknown:
        raise LabelMapError(f"{path}: unknown key(s) {unknown}; a label map has section, labels, aliases, negations")
    section = data.get("section")
    if not isinstance(section, str) or not section.strip():
        raise LabelMapError(f"{path}: section must name the data's section, e.g. 'section: Fitzpatrick'")
    labels = data.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise LabelMapError(f"{path}: labels must map at least two labels to their phrases")
    for key in ("aliases", "negations"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LabelMapError(f"{path}: {key} must be a list of strings, got {value!r}")
    return LabelMap(section=section.strip(), labels={str(k): _as_phrases(v, path, str(k)) for k, v in labels.items()},
                    aliases=list(data.get("aliases") or []), negations=list(data.get("negations") or []),
                    source=str(path))


def load_label_maps(extra_dirs: Sequence[Path] = ()) -> Dict[str, LabelMap]:
    """``{section key: map}`` of the shipped maps, then of each folder in ``extra_dirs`` (later folders win);
    every name and alias of a map is a key (see :func:`section_key`)."""
    maps: Dict[str, LabelMap] = {}
    for folder in (LABEL_MAP_DIR, *map(Path, extra_dirs)):
        if not folder.is_dir():
            raise LabelMapError(f"--label-maps {folder}: not a folder (give a folder of label-map .yaml files)")
        here: Dict[str, str] = {}
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            label_map = read_label_map(path)
            for name in label_map.names:
                key = section_key(name)
                if key in here:
                    raise LabelMapError(f"{path}: section {name!r} already has a label map in the same folder "
                                        f"({here[key]}); keep one file per section")
                if key in maps:
                    logger.info("label map %s replaces %s for section %r", path, maps[key].source, name)
                here[key] = str(path)
                maps[key] = label_map
    return maps


def find_label_map(maps: Dict[str, LabelMap], section: str) -> Optional[LabelMap]:
    """The map serving ``section`` (stripped, case-insensitive), or None (an open-ended section)."""
    return maps.get(section_key(section))
