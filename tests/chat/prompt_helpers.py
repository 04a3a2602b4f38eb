"""Helpers of the chat tests: the training ids of a conversation up to its last answer (what chat must feed)."""

from __future__ import annotations

from typing import Any, List, Sequence

import torch

from minigpt4.prompting import IGNORE_INDEX

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def last_answer_start(labels: Sequence[int]) -> int:
    """Index where the last run of trained labels (the last answer) begins."""
    trained = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
    start = trained[-1]
    while start - 1 in trained:
        start -= 1
    return start


def training_prefix(model: Any, pixels: torch.Tensor, questions: List[str], answers: List[str]) -> List[int]:
    """The training ids of ``questions``/``answers`` (one conversation sample, through the model's sample encoder)
    up to the first token of the last answer."""
    batch = model.sample_encoder.encode_batch({"image": pixels[None], "conv_q": [questions], "conv_a": [answers]})
    assert batch["truncation"]["answers_truncated"] == 0, "raise model.max_txt_len for this conversation"
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    return ids[:last_answer_start(labels)]
