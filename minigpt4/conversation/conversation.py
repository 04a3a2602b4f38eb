"""Conversation templates of MiniGPT-4 / MiniGPT-v2 and the rule that picks one for a model config.

A :class:`Conversation` holds a system text, two role strings (user, assistant) and the messages so far; its
:meth:`Conversation.get_prompt` renders the exact prompt string upstream's demos fed to ``get_context_emb``
(the image stays a ``<Img><ImageHere></Img>`` placeholder; the model splices the image embeddings in its place).

The three upstream templates (``CONV_VISION_Vicuna0``, ``CONV_VISION_LLama2``, ``CONV_VISION_minigptv2``) keep
their strings exactly. :class:`ChatTemplateConversation` has the same interface for LLMs that ship their own
chat template (``model.prompt_format: tokenizer_chat_template``, e.g. SmolLM2): its prompt is rendered by the
tokenizer's ``apply_chat_template``.

:func:`template_for` chooses the template from the model config; the rule is written out in its docstring.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Dict, List, Optional, Protocol, Tuple

from omegaconf import DictConfig, OmegaConf

#: what a user turn with an image starts with (the model splits the prompt on ``<ImageHere>``)
IMAGE_PLACEHOLDER = "<Img><ImageHere></Img>"
IMAGE_TOKEN = "<ImageHere>"


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


class ChatTemplateRenderer(Protocol):
    """What :class:`ChatTemplateConversation` needs from a tokenizer."""

    def apply_chat_template(self, messages: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        ...


@dataclass
class ChatTemplateConversation(Conversation):
    """A conversation whose prompt is the tokenizer's own chat template (ChatML for SmolLM2, ...).

    Messages are stored like upstream's (``[role, text]`` with the role strings ``"user"``/``"assistant"``);
    the image placeholder stays inside the user message text, where the model finds it after rendering.
    """

    renderer: Optional[ChatTemplateRenderer] = None

    def get_prompt(self) -> str:
        """Render the messages with ``renderer.apply_chat_template``; an open assistant slot adds the generation
        prompt."""
        if self.renderer is None:
            raise ValueError("ChatTemplateConversation needs a tokenizer with apply_chat_template (renderer=...)")
        chat: List[Dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        open_slot = False
        for role, text in self.messages:
            if text is None:
                open_slot = True
                continue
            chat.append({"role": str(role), "content": text})
        return self.renderer.apply_chat_template(chat, add_generation_prompt=open_slot)

    def copy(self) -> "ChatTemplateConversation":
        """Copy the messages, share the renderer (a tokenizer is not copied)."""
        renderer, self.renderer = self.renderer, None
        try:
            clone = copy.deepcopy(self)
        finally:
            self.renderer = renderer
        clone.renderer = renderer
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

CONV_CHAT_TEMPLATE = ChatTemplateConversation(
    system="",
    roles=("user", "assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="",
    name="chat_template",
)

#: template name → template (``--template`` on the demos accepts these names)
TEMPLATES: Dict[str, Conversation] = {
    "vicuna0": CONV_VISION_Vicuna0,
    "llama2": CONV_VISION_LLama2,
    "minigptv2": CONV_VISION_minigptv2,
    "chat_template": CONV_CHAT_TEMPLATE,
}

#: upstream's choice by (arch, model_type); ``None`` matches every model type of the arch
_BY_MODEL_TYPE: Dict[Tuple[str, Optional[str]], str] = {
    ("minigpt4", "pretrain_vicuna0"): "vicuna0",
    ("minigpt4", "pretrain_llama2"): "llama2",
    ("minigpt_v2", None): "minigptv2",
}


class TemplateError(ValueError):
    """No conversation template can be chosen for a model config."""


def template_name_for(model_cfg: Any) -> str:
    """The template name for a ``model:`` config.

    Rule, in order:

    1. ``prompt_format: tokenizer_chat_template`` → ``chat_template`` (the tokenizer's own template);
    2. ``arch: minigpt_v2`` (every model type, ``tiny`` included) → ``minigptv2``;
    3. ``arch: minigpt4`` with ``model_type`` ``pretrain_vicuna0`` → ``vicuna0``, ``pretrain_llama2`` → ``llama2``
       (upstream's table);
    4. any other ``minigpt4`` model type (``tiny``, a user preset) follows its training prompt: a
       ``prompt_template`` starting with ``###`` or ``end_sym: "###"`` → ``vicuna0``; a ``prompt_template``
       containing ``[INST]`` or ``end_sym: "</s>"`` → ``llama2``; otherwise :class:`TemplateError`.
    """
    arch = str(_get(model_cfg, "arch", ""))
    model_type = str(_get(model_cfg, "model_type", ""))
    if _get(model_cfg, "prompt_format", "upstream") == "tokenizer_chat_template":
        return "chat_template"
    for key in ((arch, model_type), (arch, None)):
        if key in _BY_MODEL_TYPE:
            return _BY_MODEL_TYPE[key]
    if arch == "minigpt4":
        prompt_template = str(_get(model_cfg, "prompt_template", "") or "")
        end_sym = str(_get(model_cfg, "end_sym", "") or "").strip()
        if prompt_template.lstrip().startswith("###") or (not prompt_template and end_sym == "###"):
            return "vicuna0"
        if "[INST]" in prompt_template or (not prompt_template and end_sym == "</s>"):
            return "llama2"
    raise TemplateError(
        f"cannot choose a conversation template for model.arch={arch!r} model.model_type={model_type!r} "
        f"(prompt_template={_get(model_cfg, 'prompt_template', '')!r}, end_sym={_get(model_cfg, 'end_sym', '')!r}); "
        "set model.prompt_template to '###Human: {} ###Assistant: ' (Vicuna v0) or '[INST] {} [/INST] ' (LLaMA-2), "
        f"or pass --template with one of {sorted(TEMPLATES)}"
    )


def template_for(model_cfg: Any, tokenizer: Optional[ChatTemplateRenderer] = None,
                 name: Optional[str] = None) -> Conversation:
    """A fresh copy of the template for ``model_cfg`` (or the one called ``name``).

    ``tokenizer`` is required for the ``chat_template`` template (its ``apply_chat_template`` renders the prompt).
    """
    name = name or template_name_for(model_cfg)
    if name not in TEMPLATES:
        raise TemplateError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    conv = TEMPLATES[name].copy()
    if isinstance(conv, ChatTemplateConversation):
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise TemplateError("the chat_template conversation needs the model's tokenizer (apply_chat_template)")
        conv.renderer = tokenizer
        conv.system = _get(model_cfg, "system_prompt", None) or ""  # the system turn the model trained with
    return conv


def _get(cfg: Any, key: str, default: Any) -> Any:
    """``cfg.key`` for a DictConfig, dataclass or dict; ``default`` when absent or ``???`` (a reader for partial
    configs, e.g. a preset without ``model_type``; the config schema holds the real defaults)."""
    if isinstance(cfg, DictConfig):
        return default if key not in cfg or OmegaConf.is_missing(cfg, key) else cfg[key]
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)
