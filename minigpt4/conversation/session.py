"""A chat session: one image, one conversation, its transcript — the state behind the demo front ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from minigpt4.conversation.chat import AnswerStream, Chat, ImageInput, Reply
from minigpt4.conversation.conversation import Conversation
from minigpt4.prompting import IMAGE_PROMPT


class NoImageError(ValueError):
    """A question was asked before any image was loaded."""


class ChatSession:
    """Holds the current image (encoded once), the conversation and its transcript.

    ``load_image`` starts a new conversation about a new image; ``reset`` starts a new conversation about the same
    image (its embedding is reused); ``ask``/``stream`` add a question and produce the answer.
    """

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.image_source: Optional[str] = None
        self._embeds: Optional[torch.Tensor] = None
        self.conv: Conversation = chat.new_conversation()
        self.img_list: List[Any] = []

    @property
    def has_image(self) -> bool:
        """Whether an image is loaded."""
        return self._embeds is not None

    def load_image(self, image: ImageInput) -> None:
        """Open and encode ``image`` (raises ``ImageOpenError`` naming the file) and start a new conversation."""
        conv, img_list = self.chat.new_conversation(), []
        self.chat.upload_img(image, conv, img_list)
        self.chat.encode_img(img_list)
        self.conv, self.img_list = conv, img_list
        self._embeds = img_list[0]
        self.image_source = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"

    def reset(self) -> None:
        """A new conversation about the current image (nothing of the old one is kept)."""
        self.conv, self.img_list = self.chat.new_conversation(), []
        if self._embeds is not None:
            self.chat.attach_encoded(self._embeds, self.conv, self.img_list)

    def _ask(self, question: str) -> None:
        if not self.has_image:
            raise NoImageError("no image loaded: load one first (--image PATH, or /image PATH in the chat)")
        self.chat.ask(question, self.conv)

    def ask(self, question: str, **overrides: Any) -> Reply:
        """Ask and return the whole answer."""
        self._ask(question)
        try:
            return self.chat.reply(self.conv, self.img_list, **overrides)
        except BaseException:
            self._drop_open_question()
            raise

    def stream(self, question: str, **overrides: Any) -> AnswerStream:
        """Ask and return the answer stream (iterate it for text pieces)."""
        self._ask(question)
        try:
            return self.chat.stream_answer(self.conv, self.img_list, **overrides)
        except BaseException:
            self._drop_open_question()
            raise

    def _drop_open_question(self) -> None:
        """Undo a question that got no answer (e.g. the prompt did not fit), keeping the image turn."""
        messages = self.conv.messages
        if messages and messages[-1][0] == self.conv.roles[1] and messages[-1][1] is None:
            messages.pop()
        if messages and messages[-1][0] == self.conv.roles[0]:
            text = messages[-1][1] or ""
            if text.startswith(IMAGE_PROMPT):
                messages[-1][1] = IMAGE_PROMPT
            else:
                messages.pop()

    # ----------------------------------------------------------------------------- transcript
    def turns(self) -> List[Dict[str, Optional[str]]]:
        """``[{"user": ..., "assistant": ...}]`` with the image placeholder removed from the questions."""
        out = []
        for user, assistant in self.conv.turns():
            question = user.replace(IMAGE_PROMPT, "", 1).strip()
            if question or assistant is not None:
                out.append({"user": question, "assistant": assistant})
        return out

    def transcript_text(self) -> str:
        """The transcript as readable text."""
        lines = [f"[image: {self.image_source or 'none'}]"]
        for turn in self.turns():
            lines.append(f"You: {turn['user']}")
            if turn["assistant"] is not None:
                lines.append(f"Assistant: {turn['assistant']}")
        return "\n".join(lines)

    def transcript_dict(self) -> Dict[str, Any]:
        """The transcript with its context: image, template, generation settings, turns, the prompt string."""
        return {
            "image": self.image_source,
            "template": self.conv.name,
            "settings": {k: getattr(self.chat.settings, k) for k in self.chat.settings.names()},
            "turns": self.turns(),
            "prompt": self.conv.get_prompt() if self.conv.messages else "",
        }

    def save(self, path: Union[str, Path]) -> Path:
        """Write the transcript: JSON for a ``.json`` path, text otherwise. Returns the path."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.transcript_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            path.write_text(self.transcript_text() + "\n", encoding="utf-8")
        return path
