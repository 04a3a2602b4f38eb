"""Closed-set accuracy by loss ranking (``facegpt-eval --mode rank``): no generation.

For a section whose answers form a small closed set (expression, Fitzpatrick type, human or not, ...), every
held-out question is answered by ranking the set's answers by the model's loss on each (lowest mean token
negative log-likelihood wins), as upstream's ``multi_select`` ranks candidates. Accuracy is reported beside two
baselines: uniform chance (1 / number of answers) and the majority answer's share. Sections with more distinct
answers than ``max_candidates`` (free-text descriptions) are skipped and listed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from minigpt4.common.precision import PrecisionPolicy


@dataclass
class SectionResult:
    """Accuracy of one question type."""

    section: str
    n: int
    correct: int
    candidates: List[str]
    majority: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def chance(self) -> float:
        return 1.0 / len(self.candidates) if self.candidates else 0.0


@dataclass
class EvalReport:
    """All sections, plus those skipped as open-ended."""

    sections: List[SectionResult] = field(default_factory=list)
    skipped: Dict[str, int] = field(default_factory=dict)  # section -> number of distinct answers

    def table(self) -> str:
        """A terminal table: section, n, accuracy, chance, majority baseline."""
        rows = [f"{'question type':<44} {'n':>5} {'accuracy':>9} {'chance':>7} {'majority':>9}"]
        for r in self.sections:
            rows.append(f"{r.section.strip():<44} {r.n:>5} {r.accuracy:>9.1%} {r.chance:>7.1%} {r.majority:>9.1%}")
        for name, k in self.skipped.items():
            rows.append(f"{name.strip():<44} (open-ended: {k} distinct answers, not scored)")
        return "\n".join(rows)

    def to_dict(self) -> Dict[str, Any]:
        out = {"sections": [], "skipped": self.skipped}
        for r in self.sections:
            out["sections"].append({**asdict(r), "accuracy": r.accuracy, "chance": r.chance})
        return out


@torch.no_grad()
def candidate_losses(model: Any, images: torch.Tensor, instructions: Sequence[str],
                     candidates: Sequence[str], precision: Optional[PrecisionPolicy] = None) -> torch.Tensor:
    """Mean answer-token NLL of each candidate for each sample: ``(B, K)``; the model runs under ``precision``
    (the run config's policy; None = fp32)."""
    batch = images.shape[0]
    precision = precision or PrecisionPolicy("fp32", images.device.type)
    losses = []
    for cand in candidates:
        batch_in = model.sample_encoder.encode_batch(
            {"image": images, "instruction_input": list(instructions), "answer": [cand] * batch}
        )
        with precision.autocast():
            inputs = model.build_llm_inputs(batch_in)
            logits = model.llama_model(inputs_embeds=inputs.inputs_embeds,
                                       attention_mask=inputs.attention_mask).logits  # (B, L, V)
        labels = inputs.labels[:, 1:]  # (B, L-1): token t is predicted at position t-1
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none")  # (B, L-1)
        mask = (labels != -100).float()
        losses.append((nll * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B,)
    return torch.stack(losses, dim=1)  # (B, K)


def answer_pairs(dataset: Any) -> List[tuple]:
    """``(section, answer)`` of every single-turn record, read from the annotations (no image is opened)."""
    records = getattr(dataset, "annotation", None)
    if records and hasattr(records[0], "answers"):
        return [(r.section, r.answers[0]) for r in records if len(r.answers) == 1]
    return [(it["section"], it["answer"]) for it in (dataset[i] for i in range(len(dataset)))
            if "instruction_input" in it]


def _section_of(dataset: Any, index: int) -> Optional[str]:
    records = getattr(dataset, "annotation", None)
    rec = records[index] if records is not None and index < len(records) else None
    return getattr(rec, "section", None)


def closed_sets(pairs: Sequence[tuple], max_candidates: int) -> tuple[Dict[str, List[str]], Dict[str, int]]:
    """Answer set per section; sections with more than ``max_candidates`` answers are returned as skipped."""
    answers: Dict[str, set] = defaultdict(set)
    for section, answer in pairs:
        answers[section].add(answer)
    keep = {s: sorted(a) for s, a in answers.items() if 1 < len(a) <= max_candidates}
    skipped = {s: len(a) for s, a in answers.items() if s not in keep}
    return keep, skipped


def evaluate_closed_set(model: Any, dataset: Any, *, max_candidates: int = 8, batch_size: int = 8,
                        candidate_pool: Any = None, max_per_section: Optional[int] = None,
                        precision: Optional[PrecisionPolicy] = None) -> EvalReport:
    """Score every single-turn item of ``dataset`` whose section has a closed answer set.

    Args:
        model: a FaceGPT model (``build_llm_inputs``, ``llama_model``).
        dataset: items with ``image``, ``instruction_input``, ``answer``, ``section`` (e.g. a held-out split).
        max_candidates: sections with more distinct answers are open-ended and skipped.
        candidate_pool: another dataset whose answers also belong to the closed sets (pass the training split,
            so an answer absent from the held-out split is still a candidate).
        max_per_section: score at most this many items per section (the first ones, in dataset order).
        precision: the precision policy the model runs under (the run config's; None = fp32).
    """
    pairs = answer_pairs(dataset) + (answer_pairs(candidate_pool) if candidate_pool is not None else [])
    sets, skipped = closed_sets(pairs, max_candidates)
    by_section: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for i in range(len(dataset)):
        section = _section_of(dataset, i)
        if section is not None and (section not in sets or len(by_section[section]) == (max_per_section or -1)):
            continue  # known from the annotation alone: skip without opening the image
        item = dataset[i]
        if "instruction_input" in item and item["section"] in sets and \
                len(by_section[item["section"]]) != (max_per_section or -1):
            by_section[item["section"]].append(item)
    model.eval()
    report = EvalReport(skipped=skipped)
    for section, group in sorted(by_section.items()):
        cands = sets[section]
        correct = 0
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            images = torch.stack([it["image"] for it in chunk]).to(model.device)  # (B, 3, S, S)
            losses = candidate_losses(model, images, [it["instruction_input"] for it in chunk], cands, precision)
            picks = losses.argmin(dim=1).tolist()
            correct += sum(cands[p] == it["answer"] for p, it in zip(picks, chunk))
        counts = Counter(it["answer"] for it in group)
        report.sections.append(SectionResult(section, len(group), correct, cands, max(counts.values()) / len(group)))
    return report
