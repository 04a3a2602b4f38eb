"""Scores of generated answers: closed-set (labels read by a label map) and open-ended (text overlap).

Closed set: accuracy (an unparseable answer is wrong), macro-F1 over the labels that occur in the references or the
predictions (an unparseable prediction is a miss of its reference's label), the unparseable share, the chance
baseline (1 / number of labels of the map) and the majority baseline (the most common reference label's share).

Open-ended: corpus BLEU-4 and chrF (sacrebleu, its default 13a tokenisation), mean ROUGE-L F-measure
(rouge-score), CIDEr-D (pycocoevalcap's ``Cider``: IDF from the references, Gaussian length penalty, clipping, x10;
our own lower-case / punctuation tokenisation instead of its Java PTB tokenizer; with a single sample every IDF is
0 and so is the score), the mean answer and reference lengths in words, and the share of answers that
:func:`minigpt4.tools.data_clean.classify_answer` calls a refusal or a hedged answer (a disclaimer it strips).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from minigpt4.tools.data_clean import classify_answer

UNPARSEABLE = "(unparseable)"
_PUNCT = re.compile(r"[^\w\s]")


# ---------------------------------------------------------------------------------------------- closed set
def accuracy(references: Sequence[str], predictions: Sequence[Optional[str]]) -> float:
    """Share of predictions equal to their reference label (None counts as wrong); 0 for no samples."""
    if not references:
        return 0.0
    return sum(p == r for r, p in zip(references, predictions)) / len(references)


def macro_f1(references: Sequence[str], predictions: Sequence[Optional[str]]) -> float:
    """Mean per-label F1 = 2TP / (2TP + FP + FN) over the labels in the references or the predictions."""
    labels = sorted(set(references) | {p for p in predictions if p is not None})
    if not labels:
        return 0.0
    scores = []
    for label in labels:
        tp = sum(r == label and p == label for r, p in zip(references, predictions))
        fp = sum(r != label and p == label for r, p in zip(references, predictions))
        fn = sum(r == label and p != label for r, p in zip(references, predictions))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def majority_share(references: Sequence[str]) -> float:
    """The most common reference label's share (the score of always answering it)."""
    return max(Counter(references).values()) / len(references) if references else 0.0


def confusion(references: Sequence[str], predictions: Sequence[Optional[str]], labels: Sequence[str]
              ) -> List[List[int]]:
    """``[reference label][predicted label]`` counts; columns are ``labels`` then :data:`UNPARSEABLE`."""
    columns = {label: k for k, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    rows = {label: k for k, label in enumerate(labels)}
    for ref, pred in zip(references, predictions):
        matrix[rows[ref]][columns.get(pred, len(labels)) if pred is not None else len(labels)] += 1
    return matrix


@dataclass
class ClosedSetScores:
    """One section's closed-set scores for one checkpoint."""

    n: int
    accuracy: float
    macro_f1: float
    unparseable: float
    chance: float
    majority: float
    majority_label: str
    labels: List[str]
    confusion: List[List[int]]


def closed_set_scores(references: Sequence[str], predictions: Sequence[Optional[str]], labels: Sequence[str]
                      ) -> ClosedSetScores:
    """Every closed-set number for reference labels and predicted labels (None = unparseable)."""
    n = len(references)
    counts = Counter(references)
    return ClosedSetScores(
        n=n, accuracy=accuracy(references, predictions), macro_f1=macro_f1(references, predictions),
        unparseable=sum(p is None for p in predictions) / n if n else 0.0, chance=1.0 / len(labels),
        majority=majority_share(references), majority_label=counts.most_common(1)[0][0] if n else "",
        labels=list(labels), confusion=confusion(references, predictions, labels))


# ---------------------------------------------------------------------------------------------- open-ended
def simple_tokens(text: str) -> str:
    """Lower case, punctuation removed, single spaces (the tokenisation CIDEr-D gets here)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def bleu4(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) of sacrebleu with one reference per prediction."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus chrF (0-100) of sacrebleu."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def rouge_l(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-1) of rouge-score over the pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in zip(references, predictions)]
    return sum(scores) / len(scores) if scores else 0.0


def cider_d(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus CIDEr-D (pycocoevalcap, 0-10 per sample) with :func:`simple_tokens`; an empty text is scored as
    one placeholder token so that the scorer accepts it."""
    from pycocoevalcap.cider.cider import Cider

    if not references:
        return 0.0
    gts = {k: [simple_tokens(ref) or "_"] for k, ref in enumerate(references)}
    res = {k: [simple_tokens(pred) or "_"] for k, pred in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def words(text: str) -> int:
    """Words in a text (white-space separated)."""
    return len(text.split())


def refusal_rates(answers: Sequence[str]) -> Dict[str, float]:
    """Shares of answers that ``data_clean`` classifies as a refusal, or as hedged (a disclaimer it strips)."""
    kinds = Counter(classify_answer(a)[0] if a.strip() else "refusal" for a in answers)
    n = len(answers) or 1
    return {"refusal": kinds["refusal"] / n, "hedge": kinds["stripped"] / n}


@dataclass
class OpenEndedScores:
    """One section's text-overlap scores for one checkpoint."""

    n: int
    bleu4: float
    chrf: float
    rouge_l: float
    cider_d: float
    answer_words: float
    reference_words: float


def open_ended_scores(references: Sequence[str], predictions: Sequence[str]) -> OpenEndedScores:
    """Every open-ended number for paired reference and predicted texts."""
    n = len(references)
    return OpenEndedScores(
        n=n, bleu4=bleu4(references, predictions) if n else 0.0, chrf=chrf(references, predictions) if n else 0.0,
        rouge_l=rouge_l(references, predictions), cider_d=cider_d(references, predictions),
        answer_words=sum(map(words, predictions)) / n if n else 0.0,
        reference_words=sum(map(words, references)) / n if n else 0.0)
