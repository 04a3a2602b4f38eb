"""Stop rules derived from the tokenizer and the end symbol.

Upstream's chat hard-coded stop ids for the LLaMA vocabulary (``[835]`` and ``[2277, 29937]`` for Vicuna's
``###``, ``[2]`` for ``</s>``). Here the stop sequences are computed from whatever tokenizer the model has:
the EOS id, and ``end_sym`` as it tokenizes at the start of a segment and right after other text.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

#: ordinary characters after which ``end_sym`` is tokenized to find its mid-text form
_PROBES = ("a", ".", "!", ")")


def dedupe(sequences: Sequence[Sequence[int]]) -> List[List[int]]:
    """Drop repeated (and empty) sequences, keeping the first occurrence's order."""
    seen, out = set(), []
    for seq in sequences:
        key = tuple(int(i) for i in seq)
        if key and key not in seen:
            seen.add(key)
            out.append(list(key))
    return out


def end_sym_token_variants(tokenizer: Any, end_sym: str) -> List[List[int]]:
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


def stop_sequences_for(tokenizer: Any, end_sym: Optional[str]) -> List[List[int]]:
    """EOS plus every tokenization of ``end_sym`` (see :func:`end_sym_token_variants`)."""
    seqs: List[List[int]] = []
    if tokenizer.eos_id is not None:
        seqs.append([int(tokenizer.eos_id)])
    if end_sym and end_sym.strip():
        seqs.extend(end_sym_token_variants(tokenizer, end_sym))
    return dedupe(seqs)
