"""Conversations for the chat engine: the model's own prompt format, and upstream's chat templates.

* :class:`FormatConversation` (the default) renders through the model's :class:`~minigpt4.prompting.PromptFormat`,
  the object training renders with: the token ids chat feeds the model equal the training ids of the same
  conversation up to the answer. A config with a custom ``prompt_template`` chats with that template.
* :class:`Conversation` with one of upstream's templates (``CONV_VISION_Vicuna0``, ``CONV_VISION_LLama2``,
  ``CONV_VISION_minigptv2``, strings kept exactly; chosen with ``--template NAME``) reproduces upstream's chat
  layout, which differs from its training layout (system text, role strings, a second BOS).

Both keep messages as ``[role, text]`` pairs and expose :meth:`Conversation.prompt_pieces`, which the chat engine
encodes with the model's sample encoder (the image stays an ``<ImageHere>`` slot filled by the model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Dict, List, Optional, Tuple

from minigpt4.prompting import PromptError, PromptFormat, PromptPiece


class SeparatorStyle(Enum):
    """How messages are joined: one separator after every message, or two alternating ones."""

    SINGLE = auto()
    TWO = auto()


@dataclass
class Conversation:
    """A conversation rendered upstream's way.

    ``messages`` is a list of ``[role, text]`` pairs; an assistant entry with ``text=None`` is the open slot
    the model is about to fill. ``offset`` is kept from upstream (its Gradio view skipped that many messages).
    """

    system: str
    roles: Tuple[str, str]
    messages: List[List[Optional[str]]] = field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: Optional[str] = None
    skip_next: bool = False
    conv_id: Any = None
    name: str = "custom"

    def get_prompt(self) -> str:
        """The prompt string: system, then each message as role + text + separator; an open slot is the role alone.

        Only ``None`` is an open slot; upstream also rendered an empty answer ``""`` as one (a following turn then
        lost its separator), here an empty answer keeps its separator.
        """
        if self.sep_style == SeparatorStyle.SINGLE:
            seps = [self.sep, self.sep]
        elif self.sep_style == SeparatorStyle.TWO:
            if self.sep2 is None:
                raise ValueError(f"conversation template {self.name!r}: SeparatorStyle.TWO needs sep2")
            seps = [self.sep, self.sep2]
        else:  # pragma: no cover - the enum has two members
            raise ValueError(f"unknown separator style {self.sep_style}")
        parts = [self.system + seps[0]]
        for i, (role, message) in enumerate(self.messages):
            parts.append(f"{role}{message}{seps[i % 2]}" if message is not None else str(role))
        return "".join(parts)

    def append_message(self, role: str, message: Optional[str]) -> None:
        """Add ``[role, message]``; ``message=None`` opens the assistant slot."""
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        """An independent copy (messages are copied, so the template itself never changes)."""
        return copy.deepcopy(self)

    def prompt_pieces(self) -> Tuple[List[PromptPiece], bool]:
        """Upstream's chat layout: the whole prompt string as one piece, BOS first (``get_context_emb``)."""
        return [PromptPiece(self.get_prompt())], True

    def turns(self) -> List[Tuple[str, Optional[str]]]:
        """``(user text, assistant text or None)`` pairs, in order."""
        pairs: List[Tuple[str, Optional[str]]] = []
        for role, text in self.messages:
            if role == self.roles[0]:
                pairs.append((text or "", None))
            elif pairs and pairs[-1][1] is None:
                pairs[-1] = (pairs[-1][0], text)
            else:
                pairs.append(("", text))
        return pairs

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable description (template name, system, roles, messages, separators)."""
        return {
            "template": self.name,
            "system": self.system,
            "roles": list(self.roles),
            "messages": [list(m) for m in self.messages],
            "offset": self.offset,
            "sep_style": self.sep_style.name,
            "sep": self.sep,
            "sep2": self.sep2,
            "conv_id": self.conv_id,
        }

    dict = to_dict  # upstream's name


@dataclass
class FormatConversation(Conversation):
    """A conversation rendered by the model's :class:`~minigpt4.prompting.PromptFormat`: the same pieces, and so
    the same token ids, as the training sample of that conversation up to the answer being generated.

    Messages are stored like upstream's (``[role, text]``, roles ``"user"``/``"assistant"``); consecutive user
    messages (an image turn, then the question) form one question, joined by a space.
    """

    prompt_format: Optional[PromptFormat] = None

    @classmethod
    def for_format(cls, prompt_format: PromptFormat) -> "FormatConversation":
        """An empty conversation in ``prompt_format`` (named after it: ``vicuna0``, ``minigptv2``, ``custom``...)."""
        return cls(system=prompt_format.system_prompt or "", roles=("user", "assistant"), sep="",
                   name=prompt_format.name, prompt_format=prompt_format)

    def questions_and_answers(self) -> Tuple[List[str], List[str]]:
        """Questions and the answers given so far (one fewer than questions while the assistant's slot is open)."""
        questions: List[str] = []
        answers: List[str] = []
        for role, text in self.messages:
            if role == self.roles[0]:
                if len(questions) > len(answers):
                    questions[-1] = f"{questions[-1]} {text or ''}"
                else:
                    questions.append(text or "")
            elif text is not None:
                if len(answers) != len(questions) - 1:
                    raise PromptError("an assistant message without a question before it")
                answers.append(text)
        return questions, answers

    def prompt_pieces(self) -> Tuple[List[PromptPiece], bool]:
        """The prompt format's pieces of this conversation, and whether a BOS id goes first."""
        if self.prompt_format is None:
            raise TemplateError("FormatConversation needs its prompt_format")
        questions, answers = self.questions_and_answers()
        if not questions:
            return [], self.prompt_format.adds_bos
        return self.prompt_format.conversation_pieces(questions, answers), self.prompt_format.adds_bos

    def get_prompt(self) -> str:
        """The rendered prompt (display form; the encoder tokenizes :meth:`prompt_pieces`)."""
        pieces, _ = self.prompt_pieces()
        return self.prompt_format.render(pieces) if pieces else ""

    def copy(self) -> "FormatConversation":
        """Copy the messages, share the prompt format (its tokenizer is not copied)."""
        fmt, self.prompt_format = self.prompt_format, None
        try:
            clone = copy.deepcopy(self)
        finally:
            self.prompt_format = fmt
        clone.prompt_format = fmt
        return clone


# --------------------------------------------------------------------------------- templates

_V1_SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions."
)

CONV_VISION_Vicuna0 = Conversation(
    system=_V1_SYSTEM,
    roles=("Human: ", "Assistant: "),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    name="vicuna0",
)

CONV_VISION_LLama2 = Conversation(
    system=_V1_SYSTEM,
    roles=("<s>[INST] ", " [/INST] "),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="",
    name="llama2",
)

CONV_VISION_minigptv2 = Conversation(
    system="",
    roles=("<s>[INST] ", " [/INST]"),
    messages=[],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="",
    name="minigptv2",
)

#: upstream's chat templates by name (``--template`` on the demos): upstream's chat layout, exactly
TEMPLATES: Dict[str, Conversation] = {
    "vicuna0": CONV_VISION_Vicuna0,
    "llama2": CONV_VISION_LLama2,
    "minigptv2": CONV_VISION_minigptv2,
}

class TemplateError(ValueError):
    """An unknown conversation template, or a conversation that cannot be rendered."""


def upstream_template(name: str) -> Conversation:
    """A fresh copy of upstream's chat template ``name`` (see :data:`TEMPLATES`)."""
    if name not in TEMPLATES:
        raise TemplateError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name].copy()


# --------------------------------------------------------------------------------- upstream's other names here
_UPSTREAM_COMPAT_NAMES = ("Chat", "StoppingCriteriaSub")


def __getattr__(name: str) -> Any:
    """Upstream kept ``Chat`` and ``StoppingCriteriaSub`` in this module, and code written for it (VLMEvalKit's
    MiniGPT-4 wrapper) imports them from here: they come from :mod:`minigpt4.conversation.upstream_compat`, loaded on
    first use (it imports the chat engine, which imports this module)."""
    if name in _UPSTREAM_COMPAT_NAMES:
        from minigpt4.conversation import upstream_compat

        return getattr(upstream_compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
