"""Word alignment of the image tokens (``model.word_align_weight``): an extra loss that teaches a vision tower
trained from scratch to emit tokens the LLM can read.

Why: a pretrained LLM copies words from its context readily. With the words of an image's answers ("blond",
"striped", "IV") written into the image slots as the LLM's own token embeddings, the SmolLM2 demo model answers
with those words; with freshly initialised image tokens it does not, and while LoRA learns the answer formats it
learns to look past the image (measured: the answer positions' attention on the image tokens falls). This loss
moves the image tokens towards the embeddings of the words their answers use, so that the LLM's copying reads them.

The loss: the cosine similarity of every image token with every input embedding of the LLM, over a temperature
``[B, N, V]``; pooled over the image's tokens with logsumexp (a word is named when one token names it) ``[B, V]``;
the cross-entropy of that distribution against the row's answer tokens, each weighted by the LLM's own (detached)
loss on it. Template words the LLM already predicts from the text ("The", "person", ".") weigh about nothing after
the first steps; the words it cannot predict without the image ("blond") weigh the most. (Measured on the demo:
with equal weights, or weights by rarity within the batch, the image tokens drifted towards the template words,
cosine 0.4, and the labels stayed at chance.) A row's loss is its weighted mean; the batch's is the mean over the
rows with weight. The embeddings are detached: only the vision tower and the projection learn from this loss, for
the price of one ``[B·N, H] x [H, V]`` matmul.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from minigpt4.models.connectors import ModelConfigError


def check_word_align(weight: float, temperature: float) -> None:
    """One-line error for an impossible ``word_align_weight`` / ``word_align_temperature``."""
    if weight < 0:
        raise ModelConfigError(f"model.word_align_weight must be >= 0 (0 turns the loss off), got {weight}")
    if temperature <= 0:
        raise ModelConfigError(f"model.word_align_temperature must be > 0 (e.g. 0.05), got {temperature}")


def answer_word_weights(rows: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, batch: int, vocab_size: int,
                        exclude_ids: Iterable[int] = ()) -> torch.Tensor:
    """``[batch, V]``: the summed ``weights`` of each row's answer tokens per token id. ``rows``, ``ids`` and
    ``weights`` are ``[T]``, one entry per answer token; ``exclude_ids`` (special tokens) and ids outside the table
    get no weight."""
    keep = (ids >= 0) & (ids < vocab_size)  # (T,)
    for token in exclude_ids:
        keep &= ids != int(token)
    table = torch.zeros(batch, vocab_size, device=weights.device, dtype=torch.float32)  # (B, V)
    table.index_put_((rows[keep], ids[keep]), weights[keep].float().detach(), accumulate=True)
    return table


def word_align_loss(image_embeds: torch.Tensor, word_weights: torch.Tensor, embedding_weight: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """The word-alignment loss (see the module docstring) of image tokens ``[B, N, H]`` against the LLM's input
    embeddings ``[V, H]``, with the answer words' weights ``[B, V]`` (:func:`answer_word_weights`); 0 (with a
    graph) when no row has weight."""
    total = word_weights.sum(dim=1)  # (B,)
    rows = total > 0
    if not bool(rows.any()):
        return image_embeds.sum() * 0.0
    img = F.normalize(image_embeds[rows].float(), dim=-1)  # (R, N, H)
    vocab = F.normalize(embedding_weight.detach().float(), dim=-1)  # (V, H)
    sims = img @ vocab.T / temperature  # (R, N, H) x (H, V) -> (R, N, V)
    logp = torch.logsumexp(sims, dim=1).log_softmax(dim=-1)  # (R, V): pooled over the N tokens
    per_row = -(logp * word_weights[rows]).sum(dim=1) / total[rows]  # (R,)
    return per_row.mean()


def document_frequency_weights(documents: Iterable[Iterable[int]], vocab_size: int) -> torch.Tensor:
    """``[V]``: ``log(D / df)`` per token id over ``D`` documents (each a collection of token ids, counted once);
    0 for ids no document holds. A word in every document ("The", ".") weighs 0; a word in one answer in four
    ("happy") weighs log 4."""
    df = torch.zeros(vocab_size, dtype=torch.float64)  # (V,)
    count = 0
    for doc in documents:
        ids = torch.tensor(sorted({int(t) for t in doc if 0 <= int(t) < vocab_size}), dtype=torch.long)
        df[ids] += 1
        count += 1
    if count == 0:
        raise ValueError("no answers to weigh the words by: the training split is empty")
    weights = torch.zeros(vocab_size, dtype=torch.float32)
    seen = df > 0
    weights[seen] = torch.log(count / df[seen]).float()
    return weights


#: answers to one question text below this many are weighed with the rest of their dataset instead
MIN_QUESTION_ANSWERS = 10


def _question_groups(items: List[Tuple[Hashable, str, Any]],
                     min_answers: int) -> Dict[Tuple[Hashable, Optional[str]], List[Any]]:
    """``(dataset, question, x)`` → ``{group: [x, ...]}``: by dataset and question text (case and spacing ignored);
    a question with fewer than ``min_answers`` answers joins its dataset's pool (key ``(dataset, None)``)."""
    keyed = [(dataset, " ".join(str(question).lower().split()), x) for dataset, question, x in items]
    sizes = Counter((dataset, question) for dataset, question, _ in keyed)
    groups: Dict[Tuple[Hashable, Optional[str]], List[Any]] = defaultdict(list)
    for dataset, question, x in keyed:
        groups[(dataset, question) if sizes[(dataset, question)] >= min_answers else (dataset, None)].append(x)
    return dict(groups)


def question_rarity_weights(answers: Iterable[Tuple[Hashable, str, Iterable[int]]], vocab_size: int,
                            min_answers: int = MIN_QUESTION_ANSWERS) -> torch.Tensor:
    """``[V]``: each word's rarity among the answers *to the same question*, its largest over the questions.

    ``answers`` holds ``(dataset, question, token ids)`` per answer. Answers are grouped by dataset and question
    text (case and spacing ignored); a group of fewer than ``min_answers`` answers joins its dataset's pool (free-form
    questions, e.g. ShareGPT's, each asked once). Within a group a word weighs ``log(D_g / df_g)``
    (:func:`document_frequency_weights`): a word that every answer to "What colour is the hair?" has ("hair") weighs
    0 there, the word that tells those answers apart ("blond") the most. Rarity over all answers at once would
    instead weigh "hair" as much as "blond" (it is absent from the other questions' answers), and an image's tokens
    would spend themselves on naming which questions were asked. :class:`AnswerWordWeights` gives each answer its
    own question's weights; this is their largest over the questions (which words any answer weighs).
    """
    items = [(dataset, question, list(ids)) for dataset, question, ids in answers]
    if not items:
        raise ValueError("no answers to weigh the words by: the training split is empty")
    weights = torch.zeros(vocab_size, dtype=torch.float32)  # (V,)
    for docs in _question_groups(items, min_answers).values():
        weights = torch.maximum(weights, document_frequency_weights(docs, vocab_size))
    return weights


def branch_tokens(sequences: Iterable[Sequence[int]]) -> frozenset:
    """The tokens at which answers part ways: every token that follows a prefix some other answer continues
    differently (or ends at).

    For "The person wears glasses." / "... wears no accessories." / "... wears e|arr|ings." they are " glasses",
    " no" and " e": the rest of each answer ("accessories", "arr", "ings") follows from its first distinguishing
    token, so it is not a choice the image has to make. For "The head is upright." / "... is tilted to the left." /
    "... to the right." they are "upright", "tilted", "left" and "right" ("to", "the" follow from "tilted")."""
    # In sorted order the answers below one prefix are contiguous, so every place where two answers part ways is
    # where two *neighbours* part ways: O(N log N) compares and one pass, not a trie of every prefix (long free
    # descriptions, thousands of them per question, would make that quadratic in their length).
    ordered = sorted({tuple(int(t) for t in s) for s in sequences})
    found = set()
    for a, b in zip(ordered, ordered[1:]):  # a < b: b extends a, or they differ at position k
        k = 0
        while k < len(a) and a[k] == b[k]:
            k += 1
        found.update(seq[k] for seq in (a, b) if k < len(seq))
    return frozenset(found)


class AnswerWordWeights:
    """Each training answer's words at their rarity among the answers to *its* question
    (:func:`question_rarity_weights`' groups): in "Yes, this is a human face." the words "human" and "face" weigh
    0 (every answer to that question has them) even where another question's answers make them rare.

    :meth:`rows` gives the ``[B, V]`` targets of a batch from its answer texts (each answer an equal share); an
    answer not seen in training (validation) gets its words' largest weight over the questions (:attr:`overall`).
    """

    def __init__(self, answers: Iterable[Tuple[Hashable, str, str]], tokenize: Callable[[str], Sequence[int]],
                 vocab_size: int, min_answers: int = MIN_QUESTION_ANSWERS, exclude_ids: Iterable[int] = ()) -> None:
        self.vocab_size = int(vocab_size)
        self._tokenize = tokenize
        self._exclude = {int(t) for t in exclude_ids}
        self._tokens: Dict[str, List[int]] = {}
        self._sequences: Dict[str, List[int]] = {}
        items = [(dataset, question, str(answer)) for dataset, question, answer in answers]
        if not items:
            raise ValueError("no answers to weigh the words by: the training split is empty")
        self.per_answer: Dict[str, Dict[int, float]] = {}
        self.overall = torch.zeros(self.vocab_size, dtype=torch.float32)  # (V,)
        #: per question group, the words at which its answers part ways (:func:`branch_tokens`, weight > 0), in
        #: the order first seen
        self.question_words: List[frozenset] = []
        for texts in _question_groups(items, min_answers).values():
            df = Counter(t for text in texts for t in set(self.tokens(text)))
            # log(D / df) as in document_frequency_weights, but in float64: the per-answer targets are normalised
            # from these values, and float32-rounded ones move a seeded run's targets (by up to 3e-8 on the demo)
            weight = {t: math.log(len(texts) / c) for t, c in df.items()}
            branches = branch_tokens(self.sequence(text) for text in set(texts))
            self.question_words.append(frozenset(t for t in branches if weight.get(t, 0.0) > 0))
            for t, w in weight.items():
                self.overall[t] = max(float(self.overall[t]), w)
            for text in set(texts):
                mine = self.per_answer.setdefault(text, {})
                for t in self.tokens(text):
                    mine[t] = max(mine.get(t, 0.0), weight[t])

    def sequence(self, text: str) -> List[int]:
        """The token ids of ``text`` inside the table, in order, special tokens left out (cached)."""
        if text not in self._sequences:
            self._sequences[text] = [int(t) for t in self._tokenize(text)
                                     if 0 <= int(t) < self.vocab_size and int(t) not in self._exclude]
        return self._sequences[text]

    def tokens(self, text: str) -> List[int]:
        """The distinct token ids of ``text`` inside the table, special tokens left out (cached)."""
        if text not in self._tokens:
            self._tokens[text] = sorted(set(self.sequence(text)))
        return self._tokens[text]

    def rows(self, answers: Sequence[Sequence[str]]) -> torch.Tensor:
        """``[B, V]``: per row (one sample's answers), the sum over its answers of each answer's word weights
        normalised to 1, so that every answer gets the same share of the row's target (an image's skin-type answer,
        whose words are rare among all answers, does not outweigh its head-tilt answer); an answer whose words all
        weigh 0 adds nothing. Measured on the demo (seed 0, 32 held-out questions per type): accessory 43.8 %
        against 34.4 % with the raw weights summed, pattern 68.8 against 56.2 %."""
        table = torch.zeros(len(answers), self.vocab_size, dtype=torch.float32)  # (B, V)
        for row, texts in enumerate(answers):
            for text in texts:
                known = self.per_answer.get(text)
                words = {t: known.get(t, 0.0) if known is not None else float(self.overall[t])
                         for t in self.tokens(text)}
                total = sum(words.values())
                for t, w in words.items():
                    if total > 0 and w > 0:
                        table[row, t] += w / total
        return table

    def word_groups(self, vocab: torch.Tensor, count: int) -> torch.Tensor:
        """``[count, W]`` bool over ``vocab`` (``[W]`` token ids): the word groups of ``model.word_group_tokens``.

        A group is the words at which the answers to one question part ways (:func:`branch_tokens` with weight > 0,
        :attr:`question_words`: the first piece of "earrings", not the pieces that follow from it); questions with the
        same words (two wordings of one question) are one group, and a group of one word has nothing to choose
        between. The ``count`` groups with the fewest words are kept (a closed question, "upright / tilted / left /
        right", before a free description's dozens of words; ties in the order first seen); fewer groups than
        ``count`` is a one-line error naming how many there are."""
        position = {int(t): i for i, t in enumerate(vocab.tolist())}
        groups: List[frozenset] = []
        for words in self.question_words:
            inside = frozenset(position[t] for t in words if t in position)
            if len(inside) > 1 and inside not in groups:
                groups.append(inside)
        if len(groups) < count:
            raise ModelConfigError(f"model.word_group_tokens={count}, but the training answers have {len(groups)} "
                                   f"word group(s) (questions whose answers differ by at least two words); set "
                                   f"model.word_group_tokens={len(groups)} or lower")
        chosen = sorted(range(len(groups)), key=lambda i: (len(groups[i]), i))[:count]
        table = torch.zeros(count, len(position), dtype=torch.bool)  # (K, W)
        for row, i in enumerate(sorted(chosen)):
            table[row, sorted(groups[i])] = True
        return table
