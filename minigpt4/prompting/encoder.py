"""The sample encoder: collated text samples → token ids, labels, attention mask and image slots.

It runs in the data-loader workers (as part of the loader's ``collate_fn``, see :class:`EncodingCollater`), so the
training process receives ready tensors. The model embeds ``input_ids`` and writes the image embeddings into the
positions holding :data:`~minigpt4.prompting.markers.IMAGE_SLOT_ID` (one scatter). Chat and batched generation use
the same encoder (:meth:`SampleEncoder.encode_pieces`, :meth:`SampleEncoder.encode_prompts`).

Training layout, token for token as upstream::

    [BOS][condition before <ImageHere>][image slots][condition after][answers + end_sym ...][answer pad][condition pad]

* the condition (image + first question) is tokenized segment by segment around ``<ImageHere>`` (each segment gets
  SentencePiece's leading ``▁``), right-padded to the longest in the batch and capped at ``max_context_len``;
* the answer block (``answer + end_sym``; in conversations also the text before each later answer, untrained) is
  tokenized piece by piece, right-padded and capped at ``max_txt_len``;
* per sample the condition's padding moves behind the answer block; one BOS id is put first (upstream format);
* labels are ``IGNORE_INDEX`` everywhere but the answer tokens and ``end_sym``; pad positions get attention 0.
  Upstream also masked every token equal to the pad id (a literal ``$$``); that is kept only while the pad is not
  EOS or part of ``end_sym`` (with SmolLM2 the pad is ``<|im_end|>``, which must stay a target).

Every cut is counted in the batch's ``truncation`` entry (the model adds them up and logs them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from minigpt4.prompting.format import PromptError, PromptFormat, PromptPiece
from minigpt4.prompting.markers import IGNORE_INDEX, IMAGE_HERE, IMAGE_PROMPT, IMAGE_SLOT_ID

#: keys the encoder adds to a batch
ENCODED_KEYS = ("input_ids", "attention_mask", "labels", "input_lens", "image_tokens", "truncation")
TRUNCATION_KEYS = ("samples", "answers_truncated", "contexts_truncated")


@dataclass
class _Rows:
    """Per-sample token lists of one block (condition or answers) before padding."""

    ids: List[List[int]] = field(default_factory=list)
    labels: List[List[int]] = field(default_factory=list)
    atts: List[List[int]] = field(default_factory=list)


def _pad(row: List[int], length: int, fill: int) -> List[int]:
    """``row`` cut or right-padded with ``fill`` to ``length``."""
    return row[:length] + [fill] * max(0, length - len(row))


@dataclass
class SampleEncoder:
    """Turns collated samples into the model's token inputs (see the module docstring).

    Args:
        prompt_format: the model's :class:`PromptFormat` (its tokenizer tokenizes).
        image_tokens: embeddings per image (Q-Former queries, or merged patches).
        max_txt_len: cap of the answer block (tokens).
        max_context_len: cap of the condition block (positions, image slots included).
        prompt_list: v1 stage-2 instruction prompts (already wrapped); one is drawn per batch when samples bring
            no ``instruction_input``.
    """

    prompt_format: PromptFormat
    image_tokens: int
    max_txt_len: int
    max_context_len: int
    prompt_list: List[str] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the prompt format."""
        return self.prompt_format.require_tokenizer()

    @property
    def _mask_pad_id(self) -> bool:
        """Upstream also masked every pad id in targets/attention; only safe when pad is not EOS / end_sym."""
        tok = self.tokenizer
        return tok.pad_id != tok.eos_id and tok.pad_id not in tok.encode(self.prompt_format.end_sym)

    # ------------------------------------------------------------------ training batches
    def __call__(self, samples: Dict[str, Any]) -> Dict[str, Any]:
        return self.encode_batch(samples)

    def encode_batch(self, samples: Dict[str, Any]) -> Dict[str, Any]:
        """``samples`` plus ``input_ids``/``attention_mask``/``labels`` ``[B, L]``, ``input_lens`` ``[B]`` (condition
        lengths without BOS), ``image_tokens`` and ``truncation`` counts. An encoded batch is returned as it is."""
        if "input_ids" in samples:
            return samples
        has_image = samples.get("image") is not None
        conditions, answer_pieces = self._texts(samples, has_image)
        cond = self._condition_rows(conditions, has_image)
        answers = self._answer_rows(answer_pieces, conversation="conv_q" in samples)
        out = dict(samples)
        out.update(self._assemble(cond, answers))
        out["image_tokens"] = self.image_tokens
        return out

    def _texts(self, samples: Dict[str, Any], has_image: bool) -> Tuple[List[Optional[str]], List[List[PromptPiece]]]:
        """Condition text (None: image only) and answer-block pieces of every sample."""
        fmt = self.prompt_format
        if "conv_q" in samples:
            pieces = [fmt.conversation_pieces(q, a) for q, a in zip(*self._conversations(samples))]
            return [p[0].text for p in pieces], [p[1:] for p in pieces]
        if "answer" not in samples:
            raise PromptError("a training batch needs 'answer' (single-turn) or 'conv_q' and 'conv_a' "
                              f"(multi-turn); this one has {sorted(samples)}")
        answers = list(samples["answer"])
        batch = int(samples["image"].shape[0]) if has_image else len(answers)
        instructions = self._instructions(samples, batch)
        return instructions, [[PromptPiece(a + fmt.end_sym, True)] for a in answers]

    def _instructions(self, samples: Dict[str, Any], batch: int) -> List[Optional[str]]:
        """Per-sample condition texts of a single-turn batch (wrapped with ``chat_template``)."""
        if "instruction_input" in samples:
            instructions = list(samples["instruction_input"])
            if len(instructions) != batch:
                raise PromptError(f"{len(instructions)} instruction_input strings for a batch of {batch}")
            return [self.prompt_format.single_turn_condition(t) for t in instructions]
        if self.prompt_list:
            return [random.choice(self.prompt_list)] * batch  # upstream: one prompt for the whole batch
        return [None] * batch

    @staticmethod
    def _conversations(samples: Dict[str, Any]) -> Tuple[List[List[str]], List[List[str]]]:
        """``conv_q``/``conv_a`` as lists of turns (list-of-lists, or upstream's ``connect_sym``-joined strings)."""
        conv_q, conv_a = list(samples["conv_q"]), list(samples["conv_a"])
        if conv_q and isinstance(conv_q[0], str):
            if "connect_sym" not in samples:
                raise PromptError("conv_q holds joined strings but the batch has no connect_sym to split them")
            sym = samples["connect_sym"]
            sym = sym if isinstance(sym, str) else sym[0]
            conv_q = [q.split(sym) for q in conv_q]
            conv_a = [a.split(sym) for a in conv_a]
        if len(conv_q) != len(conv_a):
            raise PromptError(f"{len(conv_q)} conv_q entries but {len(conv_a)} conv_a entries")
        for i, (qs, ans) in enumerate(zip(conv_q, conv_a)):
            if len(qs) != len(ans) or not qs:
                raise PromptError(f"conversation sample {i}: {len(qs)} questions but {len(ans)} answers")
        return [list(q) for q in conv_q], [list(a) for a in conv_a]

    def _condition_ids(self, text: Optional[str], has_image: bool, index: int) -> List[int]:
        """Token ids of one condition: segments around ``<ImageHere>`` tokenized alone, image slots between."""
        if text is None:
            if not has_image:
                raise PromptError("a sample without image needs an instruction")
            return [IMAGE_SLOT_ID] * self.image_tokens
        if not has_image:
            if IMAGE_HERE in text:
                raise PromptError(f"sample {index}: the prompt has {text.count(IMAGE_HERE)} {IMAGE_HERE} "
                                  "placeholder(s) but the batch holds 0 images")
            return self.tokenizer.encode(text)
        segments = text.split(IMAGE_HERE)
        if len(segments) != 2:
            raise PromptError(
                f"sample {index}: the prompt has {len(segments) - 1} {IMAGE_HERE} placeholder(s) but 1 image "
                f"embedding block of {self.image_tokens} tokens was given; every instruction needs exactly one "
                f"'{IMAGE_PROMPT}'. Prompt: {text[:200]!r}"
            )
        before, after = (self.tokenizer.encode(s) for s in segments)
        return before + [IMAGE_SLOT_ID] * self.image_tokens + after

    def _condition_rows(self, texts: List[Optional[str]], has_image: bool) -> _Rows:
        rows = _Rows()
        for i, text in enumerate(texts):
            ids = self._condition_ids(text, has_image, i)
            rows.ids.append(ids)
            rows.atts.append([1] * len(ids))
        return rows

    def _answer_rows(self, pieces: List[List[PromptPiece]], conversation: bool) -> _Rows:
        """Answer-block ids, labels and attention per sample (upstream's single-turn / conversation pad rules)."""
        tok, rows = self.tokenizer, _Rows()
        pad, mask_pad = tok.pad_id, self._mask_pad_id
        for sample in pieces:
            ids: List[int] = []
            labels: List[int] = []
            for piece in sample:
                piece_ids = tok.encode(piece.text)
                ids += piece_ids
                labels += piece_ids if piece.trained else [IGNORE_INDEX] * len(piece_ids)
            if mask_pad and not conversation:  # upstream: every pad id is masked, a literal "$$" in an answer too
                labels = [IGNORE_INDEX if i == pad else t for i, t in zip(ids, labels)]
            atts = [0 if (mask_pad and conversation and i == pad) else 1 for i in ids]  # conversation: ids != pad
            rows.ids.append(ids)
            rows.labels.append(labels)
            rows.atts.append(atts)
        return rows

    def _assemble(self, cond: _Rows, answers: _Rows) -> Dict[str, Any]:
        """Pad both blocks, join them per sample (condition, answers, condition padding), add BOS and labels."""
        pad, bos = self.tokenizer.pad_id, self.prompt_format.adds_bos
        cond_len = min(max(len(r) for r in cond.ids), self.max_context_len)
        ans_len = min(max((len(r) for r in answers.ids), default=0), self.max_txt_len)
        ids, atts, labels, lens = [], [], [], []
        for c_ids, a_ids, a_att, a_lab in zip(cond.ids, answers.ids, answers.atts, answers.labels):
            n = min(len(c_ids), cond_len)
            head = [self.tokenizer.bos_id] if bos else []
            ids.append(head + c_ids[:n] + _pad(a_ids, ans_len, pad) + [pad] * (cond_len - n))
            atts.append([int(n > 0)] * len(head) + [1] * n + _pad(a_att, ans_len, 0) + [0] * (cond_len - n))
            labels.append([IGNORE_INDEX] * (len(head) + n) + _pad(a_lab, ans_len, IGNORE_INDEX)
                          + [IGNORE_INDEX] * (cond_len - n))
            lens.append(n)
        truncation = {
            "samples": len(ids),
            "answers_truncated": sum(len(r) > self.max_txt_len for r in answers.ids),
            "contexts_truncated": sum(len(r) > self.max_context_len for r in cond.ids),
        }
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),  # (B, L)
            "attention_mask": torch.tensor(atts, dtype=torch.long),  # (B, L)
            "labels": torch.tensor(labels, dtype=torch.long),  # (B, L)
            "input_lens": torch.tensor(lens, dtype=torch.long),  # (B,)
            "truncation": truncation,
        }

    # ------------------------------------------------------------------ inference
    def encode_pieces(self, pieces: Sequence[PromptPiece], add_bos: bool,
                      image_tokens: Sequence[int] = ()) -> List[int]:
        """Token ids of a rendered prompt: each piece tokenized on its own, split at ``<ImageHere>`` into segments
        tokenized alone with ``image_tokens[k]`` slots for the k-th image; BOS first when ``add_bos``."""
        found = sum(p.text.count(IMAGE_HERE) for p in pieces)
        if found != len(image_tokens):
            raise PromptError(f"the prompt has {found} {IMAGE_HERE} placeholder(s) but {len(image_tokens)} image "
                              "embedding(s) were given")
        ids: List[int] = [self.tokenizer.bos_id] if add_bos and self.tokenizer.bos_id is not None else []
        images = iter(image_tokens)
        for piece in pieces:
            segments = piece.text.split(IMAGE_HERE)
            for k, segment in enumerate(segments):
                ids += self.tokenizer.encode(segment)
                if k < len(segments) - 1:
                    ids += [IMAGE_SLOT_ID] * int(next(images))
        return ids

    def encode_prompt(self, prompt: str, image_tokens: Sequence[int] = ()) -> List[int]:
        """Upstream's inference layout of a prompt string (``get_context_emb``): segments around ``<ImageHere>``
        tokenized alone, BOS first in the upstream format."""
        return self.encode_pieces([PromptPiece(prompt)], self.prompt_format.adds_bos, image_tokens)

    def encode_prompts(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One image per prompt, left-padded (pad id, attention 0): ids ``[B, L]`` and mask ``[B, L]``."""
        rows = [self.encode_prompt(p, [self.image_tokens]) for p in prompts]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_id
        ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows], dtype=torch.long)  # (B, L)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)  # (B, L)
        return ids, mask


class EncodingCollater:
    """A loader ``collate_fn``: the dataset's collater, then the sample encoder (both run in the worker)."""

    def __init__(self, collate: Callable[[List[Any]], Any], encoder: SampleEncoder) -> None:
        self.collate = collate
        self.encoder = encoder

    def __call__(self, items: List[Any]) -> Any:
        batch = self.collate(items)
        if not isinstance(batch, dict):  # nothing left (every item skipped) or a batch this encoder cannot read
            return batch
        return self.encoder.encode_batch(batch)
