"""Word-mixture image tokens (``model.image_token_space: word_mixture``): each image token the LLM reads is a
mixture of the LLM's own input embeddings of a fixed set of words, the *image vocabulary*.

Why: a pretrained LLM reads its own word embeddings at once (measured on the CPU demo: the true attribute words
written into the four image slots were answered 97-100 % right after 45 LoRA steps), but a free linear projection
trained on a few hundred images learns to name the words of its *training* images and not of held-out ones. Here the
projection's output only chooses *which* words: token ``n`` of an image is

    p_n = softmax(cos(proj_n, E[vocab]) / T)          # (W,): a distribution over the image vocabulary
    token_n = normalise(p_n @ E[vocab]) * text_norm   # (H,): a word-embedding mixture at the text embeddings' norm

so whatever the projection learns, the LLM receives words. The vocabulary is the training answers' distinguishing
words (those with rarity weight > 0, see :func:`~minigpt4.models.word_align.question_rarity_weights`), chosen by the
alignment stage (``run.task: image_text_align``) at its first step and saved in the checkpoint as the buffer
:data:`VOCAB_BUFFER`, so chat and evaluation need no data. The alignment loss for these tokens is
:func:`word_mixture_loss`: the cross-entropy of the image's answer words (weighted by rarity) against the mean of
its tokens' distributions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: name of the ``[W]`` long buffer holding the image vocabulary's token ids (saved with the trainable weights)
VOCAB_BUFFER = "image_word_vocab"
#: the values of ``model.image_token_space``
SPACES = ("free", "word_mixture")


def word_logits(tokens: torch.Tensor, words: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of each projected token ``[B, N, H]`` with each vocabulary embedding ``[W, H]``, over the
    temperature: ``[B, N, W]`` (fp32)."""
    tok = F.normalize(tokens.float(), dim=-1)  # (B, N, H)
    voc = F.normalize(words.detach().float(), dim=-1)  # (W, H)
    return tok @ voc.T / temperature  # (B, N, H) x (H, W) -> (B, N, W)


def mix_words(logits: torch.Tensor, words: torch.Tensor, norm: float) -> torch.Tensor:
    """The tokens the LLM reads: each row of ``logits`` ``[B, N, W]`` as a softmax mixture of ``words`` ``[W, H]``,
    rescaled to ``norm``: ``[B, N, H]``."""
    mix = logits.softmax(dim=-1) @ words.detach().float()  # (B, N, W) x (W, H) -> (B, N, H)
    return F.normalize(mix, dim=-1) * norm


def word_mixture_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Alignment loss of word-mixture tokens: ``logits`` ``[B, N, W]`` (:func:`word_logits`), ``targets`` ``[B, W]``
    (each image's answer words at their weights, any scale). Each row's targets are normalised to a distribution;
    the loss is its cross-entropy against the mean of the row's ``N`` token distributions (the tokens share the
    image's words between them), averaged over the rows with weight; 0 (with a graph) when none has."""
    total = targets.sum(dim=1)  # (B,)
    rows = total > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0
    want = targets[rows].float() / total[rows, None]  # (R, W)
    mean = logits[rows].softmax(dim=-1).mean(dim=1)  # (R, N, W) -> (R, W)
    return -(want * torch.log(mean.clamp_min(1e-9))).sum(dim=1).mean()
