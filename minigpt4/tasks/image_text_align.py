"""``image_text_align``: teach the connector to name the words of its image's answers, without running the LLM.

The image tokens are pulled towards the LLM's input embeddings of the words their answers use
(:meth:`~minigpt4.models.minigpt_base.MiniGPTBase.word_align_step`), each answer's words weighted by how rare they
are among the training answers *to the same question* (:class:`~minigpt4.models.word_align.AnswerWordWeights`;
every answer an equal share of its sample's target): template words that every answer has ("The", "person", ".")
and the words every answer to that question has ("hair" in the hair-colour answers) weigh nothing, the words that
tell images apart ("blond", "striped", "IV") the most.
One step costs the tower, the projection and one ``[B·N, H] x [H, W]`` matmul, not the LLM's layers, so it runs on
far more images per second than the answer loss; it is a warm-up stage (as MiniGPT-4's stage 1 aligns before it
instructs), followed by ``image_text_pretrain`` from its checkpoint.

The weights are computed once, when the model is built, from every training split of the run (their records'
answers through the model's tokenizer); a dataset that streams (shards) has no records in memory and is refused.
A word-mixture model (``model.image_token_space: word_mixture``) without an image vocabulary gets the words with
weight as its vocabulary then (saved in this stage's checkpoint; a vocabulary loaded with ``model.ckpt`` is kept),
and, with ``model.word_group_tokens`` K, its K word groups (:meth:`AnswerWordWeights.word_groups`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.models.word_align import AnswerWordWeights
from minigpt4.models.word_mixture import GROUPS_BUFFER, VOCAB_BUFFER
from minigpt4.tasks.base_task import BaseTask

logger = get_logger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@registry.register_task("image_text_align")
class ImageTextAlignTask(BaseTask):
    """Word alignment of the image tokens (no LLM forward); see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.datasets: Dict[str, Dict[str, Any]] = {}
        self.word_weights: Optional[torch.Tensor] = None
        self.answer_weights: Optional[AnswerWordWeights] = None

    def build_datasets(self, cfg: Any) -> Dict[str, Dict[str, Any]]:
        self.datasets = super().build_datasets(cfg)
        return self.datasets

    def _answers(self) -> Iterator[Tuple[str, str, str]]:
        """``(dataset, question, answer)`` for every answer of every training record (a caption record's question
        is empty)."""
        for name, splits in self.datasets.items():
            train = splits.get("train")
            records = getattr(train, "annotation", None)
            if records is None:
                raise ValueError(f"run.task=image_text_align weighs words over the training answers, but "
                                 f"datasets.{name} streams (shards) and holds no records in memory; train this stage "
                                 "from the JSON annotation files")
            for rec in records:
                if not hasattr(rec, "answers"):
                    yield name, "", str(rec.get("caption", ""))
                    continue
                questions = list(getattr(rec, "questions", ()))
                for i, answer in enumerate(rec.answers):
                    yield name, questions[i] if i < len(questions) else "", answer

    def build_model(self, cfg: Any) -> nn.Module:
        """The model (``model.ckpt`` loaded), with the word weights computed and, for a word-mixture model without
        one, its image vocabulary set, before any wrapper (DDP, FSDP) sees its buffers."""
        model = super().build_model(cfg)
        weights = self.weights_for(model)
        if getattr(model, "word_mixture", False) and getattr(model, VOCAB_BUFFER).numel() == 0:
            vocab = torch.nonzero(weights > 0)[:, 0]  # (W,)
            model.set_image_vocabulary(vocab)
            tokenizer = model.tokenizer
            logger.info("image_text_align: the image tokens mix %d words of the training answers (e.g. %s)",
                        vocab.numel(), ", ".join(repr(tokenizer.decode([int(t)])) for t in vocab[:8]))
        count = int(getattr(model, "word_group_count", 0))
        if count and getattr(model, GROUPS_BUFFER).shape[0] != count:
            vocab = model.image_vocabulary()
            groups = self.answer_weights_for(model).word_groups(vocab.cpu(), count)  # (K, W)
            model.set_word_groups(groups)
            tokenizer = model.tokenizer
            logger.info("image_text_align: %d group tokens, one per question's words: %s", count, "; ".join(
                " / ".join(tokenizer.decode([int(vocab[i])]).strip() for i in torch.nonzero(row)[:, 0][:6])
                for row in groups))
        return model

    def weights_for(self, model: nn.Module) -> torch.Tensor:
        """The ``[V]`` word weights: each word's largest rarity over the questions (computed on first use; special
        tokens weigh 0). A word-mixture model's vocabulary is the words with weight."""
        return self.answer_weights_for(model).overall

    def answer_weights_for(self, model: nn.Module) -> AnswerWordWeights:
        """Each training answer's words at their rarity among the answers to its question (computed once)."""
        if self.answer_weights is None:
            inner = _unwrap(model)
            tokenizer = inner.tokenizer
            self.answer_weights = AnswerWordWeights(self._answers(), tokenizer.encode,
                                                    inner.llama_model.get_input_embeddings().weight.shape[0],
                                                    exclude_ids=tokenizer.special_ids)
            self.word_weights = self.answer_weights.overall
            top = torch.topk(self.word_weights, 5).indices.tolist()
            logger.info("image_text_align: %d words weighted by rarity among the answers to the same question (0 "
                        "for words all of them have); the rarest: %s", int((self.word_weights > 0).sum()),
                        ", ".join(repr(tokenizer.decode([t])) for t in top))
        return self.answer_weights

    def batch_weights(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        """``[B, V]``: each sample's answer words at their own question's weights; ``[V]`` (:meth:`weights_for`)
        for a batch without answer texts."""
        if "conv_a" in samples:
            answers = [list(turns) for turns in samples["conv_a"]]
        elif "answer" in samples:
            answers = [[str(a)] for a in samples["answer"]]
        else:
            return self.weights_for(model)
        return self.answer_weights_for(model).rows(answers)

    def train_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        # through the DDP/FSDP wrapper's forward
        return model(samples, align_words=self.batch_weights(model, samples))["loss"]

    def valid_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        return model(samples, align_words=self.batch_weights(model, samples))["loss"]
