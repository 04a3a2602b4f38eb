"""``image_text_align``: teach the connector to name the words of its image's answers, without running the LLM.

The image tokens are pulled towards the LLM's input embeddings of the words their answers use
(:meth:`~minigpt4.models.minigpt_base.MiniGPTBase.word_align_step`), each word weighted by how rare it is among
the training answers (``log(D / df)``, :func:`~minigpt4.models.word_align.document_frequency_weights`): template
words that every answer has ("The", "person", ".") weigh nothing, the words that tell images apart ("blond",
"striped", "IV") the most. One step costs the tower, the projection and one ``[B·N, H] x [H, V]`` matmul, not the
LLM's layers, so it runs on far more images per second than the answer loss; it is a warm-up stage (as MiniGPT-4's
stage 1 aligns before it instructs), followed by ``image_text_pretrain`` from its checkpoint.

The weights are computed once, at the first step, from every training split of the run (their records' answers
through the model's tokenizer); a dataset that streams (shards) has no records in memory and is refused.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from minigpt4.common.logger import get_logger
from minigpt4.common.registry import registry
from minigpt4.models.word_align import document_frequency_weights
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

    def build_datasets(self, cfg: Any) -> Dict[str, Dict[str, Any]]:
        self.datasets = super().build_datasets(cfg)
        return self.datasets

    def _answers(self) -> Iterator[List[str]]:
        for name, splits in self.datasets.items():
            train = splits.get("train")
            records = getattr(train, "annotation", None)
            if records is None:
                raise ValueError(f"run.task=image_text_align weighs words over the training answers, but "
                                 f"datasets.{name} streams (shards) and holds no records in memory; train this stage "
                                 "from the JSON annotation files")
            for rec in records:
                yield list(rec.answers) if hasattr(rec, "answers") else [str(rec.get("caption", ""))]

    def weights_for(self, model: nn.Module) -> torch.Tensor:
        """The ``[V]`` word weights (computed on first use)."""
        if self.word_weights is None:
            inner = _unwrap(model)
            vocab = inner.llama_model.get_input_embeddings().weight.shape[0]
            tokenizer = inner.tokenizer
            docs = ([t for answer in answers for t in tokenizer.encode(answer)]
                    for answers in self._answers())
            self.word_weights = document_frequency_weights(docs, vocab)
            top = torch.topk(self.word_weights, 5).indices.tolist()
            logger.info("image_text_align: words weighted by rarity over the training answers (0 for words every "
                        "answer has); the rarest: %s", ", ".join(repr(tokenizer.decode([t])) for t in top))
        return self.word_weights

    def train_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        return model(samples, align_words=self.weights_for(model))["loss"]  # through the DDP/FSDP wrapper's forward

    def valid_step(self, model: nn.Module, samples: Dict[str, Any]) -> torch.Tensor:
        return model(samples, align_words=self.weights_for(model))["loss"]
