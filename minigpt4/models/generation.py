"""Generation: the model's inference methods (a mixin of ``MiniGPTBase``), stop rules and answer clean-up.

Every inference path goes through the sample encoder and the model's one image scatter, as training does:

* chat: the chat engine encodes the conversation (``model.sample_encoder.encode_pieces``), embeds it with
  :meth:`GenerationMixin.context_embeds` and generates with :meth:`GenerationMixin.generate_from_embeds`;
* upstream's prompt-string API: :meth:`GenerationMixin.get_context_emb` / :meth:`GenerationMixin.context_layout`
  (segments around ``<ImageHere>`` tokenized alone, BOS first in the upstream format) and the batched
  :meth:`GenerationMixin.generate` (left-padded with zero vectors, attention 0).

Stop rules come from the prompt format (EOS and every tokenization of ``end_sym``). No autocast is opened here:
callers wrap generation in their precision policy.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from transformers import StoppingCriteria

from minigpt4.prompting import PromptError
from minigpt4.prompting.stops import dedupe, end_sym_token_variants, stop_sequences_for  # noqa: F401  (re-exported)


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


def _image_rows(img_list: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], List[int]]:
    """Cached image embeddings (each ``[1, N, H]`` or ``[N, H]``) as one row ``[1, sum N, H]`` and their sizes."""
    if not img_list:
        return None, []
    rows = [e if e.dim() == 3 else e[None] for e in img_list]  # (N, H) -> (1, N, H)
    return torch.cat(rows, dim=1), [int(r.shape[1]) for r in rows]  # (1, sum N, H)


class GenerationMixin:
    """Inference methods of ``MiniGPTBase`` (they use its tokenizer, encoder, embedding scatter and LLM)."""

    def stop_sequences(self) -> List[List[int]]:
        """Token-id sequences that end an answer (the prompt format's stop rule)."""
        return self.prompt_format.stop_sequences()

    def context_embeds(self, ids: Sequence[int], img_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[1, L, H]`` of one encoded context (image slots filled from ``img_list`` in order)."""
        images, _ = _image_rows(img_list)
        if images is not None:
            images = images.to(self.device)
        row = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # (1, L)
        return self.embed_with_images(row, images)

    def context_layout(self, prompt: str, img_list: Sequence[torch.Tensor]) -> List[int]:
        """Token ids of :meth:`get_context_emb`'s positions (``IMAGE_SLOT_ID`` for image embeddings)."""
        return self.sample_encoder.encode_prompt(prompt, _image_rows(img_list)[1])

    def get_context_emb(self, prompt: str, img_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upstream's inference context ``[1, L, H]`` of a prompt string: segments around ``<ImageHere>``
        tokenized alone, the first with BOS (upstream format), image embeddings in the slots."""
        return self.context_embeds(self.context_layout(prompt, img_list), img_list)

    def generate_from_embeds(
        self,
        embs: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        streamer: Any = None,
        stop_sequences: Optional[List[List[int]]] = None,
        **gen_kwargs: Any,
    ) -> torch.Tensor:
        """Generate from embeddings ``[B, L, H]`` (left padding in ``attention_mask``); returns only the new ids
        ``[B, T]``. Stops at :meth:`stop_sequences` (per row); ``streamer`` receives tokens as they come."""
        from transformers import StoppingCriteriaList

        if attention_mask is None:
            attention_mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)
        stops = self.stop_sequences() if stop_sequences is None else stop_sequences
        criteria = StoppingCriteriaList([StopOnSequences(stops)]) if stops else None
        tok = self.tokenizer
        return self.llama_model.generate(
            inputs_embeds=embs, attention_mask=attention_mask, stopping_criteria=criteria, streamer=streamer,
            pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id, **gen_kwargs,
        )

    def batch_context(self, images: torch.Tensor, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (zero vectors, attention 0) contexts ``[B, L, H]`` and mask ``[B, L]`` for a batch."""
        img_embeds, _ = self.encode_img(images)
        if len(texts) != img_embeds.shape[0]:
            raise PromptError(f"{len(texts)} texts for {img_embeds.shape[0]} images")
        ids, mask = self.sample_encoder.encode_prompts(texts)  # (B, L) x2
        mask = mask.to(self.device)
        embs = self.embed_with_images(ids, img_embeds)  # (B, L, H)
        return embs * mask[..., None].to(embs.dtype), mask

    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, texts: Sequence[str], **kwargs: Any) -> torch.Tensor:
        """New token ids ``[B, T]`` of :meth:`generate` (before decoding)."""
        embs, mask = self.batch_context(images, texts)
        if not kwargs.get("do_sample"):  # sampling knobs would only raise transformers warnings
            kwargs = {k: v for k, v in kwargs.items() if k not in ("top_p", "temperature")}
        return self.generate_from_embeds(embs, mask, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        num_beams: int = 1,
        max_new_tokens: int = 20,
        min_length: int = 1,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        temperature: float = 1.0,
        do_sample: bool = False,
    ) -> List[str]:
        """Upstream's batched inference: one context per (image, text), left-padded; cleaned answers."""
        ids = self.generate_ids(images, texts, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                min_length=min_length, top_p=top_p, repetition_penalty=repetition_penalty,
                                length_penalty=length_penalty, temperature=temperature, do_sample=do_sample)
        tok = self.tokenizer
        cut_at = [s for s in (tok.eos_token, self.end_sym) if s]
        return [clean_answer(tok.decode(row, skip_special_tokens=True), cut_at, [tok.bos_token or ""]) for row in ids]
