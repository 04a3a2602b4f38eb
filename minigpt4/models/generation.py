"""Generation helpers: stop rules derived from the tokenizer, and answer clean-up.

Upstream's chat hard-coded stop ids for the LLaMA vocabulary (``[835]`` and ``[2277, 29937]`` for Vicuna's
``###``, ``[2]`` for ``</s>``). Here the stop sequences are computed from whatever tokenizer the model has:
the EOS id, and ``end_sym`` as it tokenizes at the start of a segment and right after other text.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from transformers import StoppingCriteria

from minigpt4.models.tokenizer import LLMTokenizer

#: ordinary characters after which ``end_sym`` is tokenized to find its mid-text form
_PROBES = ("a", ".", "!", ")")


def end_sym_token_variants(tokenizer: LLMTokenizer, end_sym: str) -> List[List[int]]:
    """The token sequences ``end_sym`` gets under ``tokenizer``: at a segment start and right after a character.

    E.g. Vicuna's ``###`` under the LLaMA vocabulary: ``[835]`` (``▁###``) and ``[2277, 29937]`` (``##``, ``#``).
    """
    if not end_sym:
        return []
    variants: List[List[int]] = []
    start = tokenizer.encode(end_sym)
    if start:
        variants.append(start)
    for probe in _PROBES:
        head = tokenizer.encode(probe)
        full = tokenizer.encode(probe + end_sym)
        if full[: len(head)] == head and len(full) > len(head):
            variants.append(full[len(head):])
    return dedupe(variants)


def dedupe(sequences: Sequence[Sequence[int]]) -> List[List[int]]:
    """Drop repeated sequences, keeping the first occurrence's order."""
    seen, out = set(), []
    for seq in sequences:
        key = tuple(int(i) for i in seq)
        if key and key not in seen:
            seen.add(key)
            out.append(list(key))
    return out


def stop_sequences_for(tokenizer: LLMTokenizer, end_sym: Optional[str]) -> List[List[int]]:
    """EOS plus every tokenization of ``end_sym`` (see :func:`end_sym_token_variants`)."""
    seqs: List[List[int]] = []
    if tokenizer.eos_id is not None:
        seqs.append([int(tokenizer.eos_id)])
    if end_sym and end_sym.strip():
        seqs.extend(end_sym_token_variants(tokenizer, end_sym))
    return dedupe(seqs)


class StopOnSequences(StoppingCriteria):
    """Stops each sequence of the batch once its generated ids end with one of ``stops``.

    Returns a ``(B,)`` bool tensor (transformers 5 style), so finished rows stop while the others go on.
    """

    def __init__(self, stops: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.stops = [torch.tensor(list(s), dtype=torch.long) for s in stops if len(s)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for stop in self.stops:
            n = stop.numel()
            if input_ids.shape[1] < n:
                continue
            tail = input_ids[:, -n:]  # (B, n)
            done |= (tail == stop.to(input_ids.device)).all(dim=1)
        return done


def clean_answer(text: str, cut_at: Sequence[str], drop: Sequence[str] = ()) -> str:
    """Upstream's post-processing: cut at the first stop string, remove ``drop`` strings, keep the text after the
    last ``[/INST]``, strip."""
    for stop in cut_at:
        if stop and stop.strip():
            text = text.split(stop)[0]
    for piece in drop:
        if piece:
            text = text.replace(piece, "")
    return text.split("[/INST]")[-1].strip()
