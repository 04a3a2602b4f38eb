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

*Group tokens* (``model.word_group_tokens: K``): the image also gets ``K`` tokens, one per *word group* (the tokens
at which the answers to one question part ways: "upright", "tilted", "left", "right" for the head-tilt question;
:func:`~minigpt4.models.word_align.branch_tokens`), each its tokens' mean distribution restricted to the group's
words and renormalised:

    q_g = mean_n(p_n)[group g] / its sum                # (|g|,): which of the question's words the image names
    token_g = normalise(q_g @ E[group g]) * text_norm   # (H,)

The four mixed tokens spend their mass on the words that are easy to name from the pixels (hair colour 19 % of an
image's mass on the demo, the tilt words 2.5 %); a group token gives every question one token of its own, at full
strength, whatever its share of the mass. The groups are chosen by the alignment stage and saved as
:data:`GROUPS_BUFFER`; the alignment loss then adds each group's own cross-entropy (:func:`group_mixture_loss`), so
that the words of a question with little mass are told apart as well as those with much.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: name of the ``[W]`` long buffer holding the image vocabulary's token ids (saved with the trainable weights)
VOCAB_BUFFER = "image_word_vocab"
#: name of the ``[K, W]`` bool buffer: row ``g`` marks the image-vocabulary words of word group ``g``
GROUPS_BUFFER = "image_word_groups"
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


def group_distributions(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``logits`` ``[B, N, W]`` (:func:`word_logits`), ``groups`` ``[K, W]`` (bool) → ``[B, K, W]``: per image and
    group, the mean of its ``N`` token distributions restricted to the group's words, renormalised (0 outside)."""
    mean = logits.softmax(dim=-1).mean(dim=1)  # (B, N, W) -> (B, W)
    masked = mean[:, None, :] * groups.to(mean.device, mean.dtype)[None]  # (B, 1, W) x (1, K, W) -> (B, K, W)
    return masked / masked.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def group_tokens(logits: torch.Tensor, groups: torch.Tensor, words: torch.Tensor, norm: float) -> torch.Tensor:
    """The ``K`` group tokens the LLM reads after the mixed ones: ``[B, K, H]``, each group's words (``words``
    ``[W, H]``) mixed by :func:`group_distributions`, rescaled to ``norm``."""
    mix = group_distributions(logits, groups) @ words.detach().float()  # (B, K, W) x (W, H) -> (B, K, H)
    return F.normalize(mix, dim=-1) * norm


def group_mixture_loss(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per word group, the cross-entropy of the image's target words inside the group (renormalised) against
    :func:`group_distributions`, over the rows whose targets have a word in it; the mean over the groups that some
    row has. ``targets`` ``[B, W]`` as in :func:`word_mixture_loss`; 0 (with a graph) when no row has any."""
    dist = group_distributions(logits, groups)  # (B, K, W)
    want = targets.float()[:, None, :] * groups.to(targets.device, torch.float32)[None]  # (B, K, W)
    total = want.sum(dim=-1)  # (B, K)
    has = total > 0  # (B, K)
    if not bool(has.any()):
        return logits.sum() * 0.0
    ce = -(want / total.clamp_min(1e-12)[..., None] * torch.log(dist.clamp_min(1e-9))).sum(dim=-1)  # (B, K)
    per_group = (ce * has).sum(dim=0) / has.sum(dim=0).clamp_min(1)  # (K,): mean over the rows that have it
    return per_group[has.any(dim=0)].mean()
