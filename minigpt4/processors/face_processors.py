"""FaceGPT's text processor ``face_text``: keeps instructions intact.

Upstream ran instructions through ``blip_caption``, which lowercases, deletes ``.!"()*#:;~`` and silently cuts
everything after 50 words — long GPT-4V prompts lost their end. ``face_text`` only strips the ends and
collapses runs of whitespace (newlines included) into one space. ``max_words`` (``null`` = no limit) cuts to
that many words; every cut is counted in :attr:`FaceTextProcessor.truncated` and the first one is logged, and
the face datasets report the total when they are built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from minigpt4.common.logger import get_logger, log_once
from minigpt4.common.registry import registry
from minigpt4.common.schema import ProcessorConfig, registry_field
from minigpt4.processors.base_processor import BaseProcessor

logger = get_logger(__name__)
_WS = re.compile(r"\s+")


@dataclass
class FaceTextConfig(ProcessorConfig):
    """Options of ``face_text``."""

    name: str = registry_field("face_text", "processor")
    prompt: str = ""
    max_words: Optional[int] = None  # null: never cut


@registry.register_processor("face_text")
class FaceTextProcessor(BaseProcessor):
    """``prompt + text`` with whitespace collapsed; case and punctuation kept; optional counted word cut."""

    config_schema = FaceTextConfig

    def __init__(self, prompt: str = "", max_words: Optional[int] = None) -> None:
        if max_words is not None and max_words < 1:
            raise ValueError(f"face_text: max_words must be >= 1 or null, got {max_words}")
        self.prompt = prompt
        self.max_words = max_words
        self.truncated = 0

    def __call__(self, text: str) -> str:
        words = _WS.sub(" ", text).strip().split(" ")
        if self.max_words is not None and len(words) > self.max_words:
            self.truncated += 1
            log_once(logger, f"face_text-cut-{id(self)}",
                     "face_text: cut an instruction of %d words to max_words=%d (further cuts are counted)",
                     len(words), self.max_words)
            words = words[: self.max_words]
        return self.prompt + " ".join(words)

    @classmethod
    def from_config(cls, cfg: Any = None) -> "FaceTextProcessor":
        c = cls.typed_config(cfg)
        return cls(prompt=c.prompt, max_words=c.max_words)
