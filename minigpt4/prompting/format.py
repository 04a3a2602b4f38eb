"""``PromptFormat``: how a model's conversations become text, for training and for chat alike.

One object per model, built from the ``model:`` config (:meth:`PromptFormat.from_config`) and written back to it
(:meth:`PromptFormat.to_config`). It owns the instruction template, the end symbol, the system prompt, the
single-turn wrapping switch and the stop rules. A conversation is rendered as a list of :class:`PromptPiece`
objects; the sample encoder tokenizes each piece on its own (as upstream did), so chat and training see the very
same token ids up to the answer being generated.

Two kinds (``model.prompt_format``):

* ``upstream`` — ``prompt_template`` wraps every question (``'###Human: {} ###Assistant: '`` for Vicuna v0,
  ``'[INST] {} [/INST] '`` for LLaMA-2 v1, ``'[INST] {} [/INST]'`` for MiniGPT-v2); the encoder puts one BOS id
  first; each answer is followed by ``end_sym`` (null: ``"\\n"``, upstream's default); before every later question
  the tokenizer's BOS text and the wrapped question are inserted (upstream's conversation layout).
* ``tokenizer_chat_template`` (FaceGPT, e.g. SmolLM2) — the tokenizer's own chat template renders the system
  turn, the user turns and the generation prompt; no BOS id is added (the template writes its own begin tokens);
  ``end_sym`` null means the tokenizer's end-of-turn (EOS) token; between an answer's end-of-turn and the next
  answer the template's own text is inserted, untrained.

Single-turn samples are wrapped only when ``chat_template`` (upstream's switch) is set; conversations and chat are
always wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from minigpt4.prompting.stops import stop_sequences_for

KINDS = ("upstream", "tokenizer_chat_template")
#: upstream's instruction templates by the names upstream's chat used for them
PRESET_TEMPLATES: Dict[str, str] = {
    "vicuna0": "###Human: {} ###Assistant: ",
    "llama2": "[INST] {} [/INST] ",
    "minigptv2": "[INST] {} [/INST]",
}
#: the name of a format rendered by the tokenizer's chat template
CHAT_TEMPLATE_NAME = "chat_template"
#: upstream's class default for ``end_sym``
UPSTREAM_DEFAULT_END_SYM = "\n"
_ANSWER_SENTINEL = "<<FACEGPT_ANSWER_{}>>"


class PromptError(ValueError):
    """A prompt or conversation does not fit the model (placeholders, templates, turn counts)."""


@dataclass(frozen=True)
class PromptPiece:
    """A stretch of prompt text tokenized on its own; ``trained`` pieces (answer + end symbol) carry labels."""

    text: str
    trained: bool = False


def _cfg_value(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for a DictConfig, dict or dataclass (``default`` when absent)."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        return cfg[key] if key in cfg else default
    except TypeError:
        return getattr(cfg, key, default)


@dataclass
class PromptFormat:
    """A model's prompt format (see the module docstring). ``tokenizer`` renders chat templates and BOS text."""

    kind: str = "upstream"
    template: str = ""
    end_sym: str = UPSTREAM_DEFAULT_END_SYM
    system_prompt: Optional[str] = None
    wrap_single_turn: bool = False
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PromptError(f"model.prompt_format={self.kind!r} is not one of {list(KINDS)}")

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any = None) -> "PromptFormat":
        """The format of a ``model:`` section (``prompt_format``, ``prompt_template``, ``end_sym``,
        ``system_prompt``, ``chat_template``); ``tokenizer`` resolves a null ``end_sym`` of chat-template models."""
        kind = str(_cfg_value(cfg, "prompt_format", "upstream") or "upstream")
        end_sym = _cfg_value(cfg, "end_sym", None)
        if end_sym is None:
            end_sym = cls._default_end_sym(kind, tokenizer)
        return cls(kind=kind, template=str(_cfg_value(cfg, "prompt_template", "") or ""), end_sym=str(end_sym),
                   system_prompt=_cfg_value(cfg, "system_prompt", None) or None,
                   wrap_single_turn=bool(_cfg_value(cfg, "chat_template", False)), tokenizer=tokenizer)

    @staticmethod
    def _default_end_sym(kind: str, tokenizer: Any) -> str:
        if kind != "tokenizer_chat_template":
            return UPSTREAM_DEFAULT_END_SYM
        if tokenizer is None:
            return ""  # a model on the meta device has no tokenizer; nothing is rendered there
        if not tokenizer.eos_token:
            raise PromptError("model.end_sym is null and the tokenizer has no EOS token; set model.end_sym")
        return str(tokenizer.eos_token)

    def to_config(self) -> Dict[str, Any]:
        """The ``model:`` keys that rebuild this format with :meth:`from_config` (``end_sym`` resolved)."""
        return {"prompt_format": self.kind, "prompt_template": self.template, "end_sym": self.end_sym,
                "system_prompt": self.system_prompt, "chat_template": self.wrap_single_turn}

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """``vicuna0`` / ``llama2`` / ``minigptv2`` for upstream's templates, ``chat_template``, else ``custom``."""
        if self.kind == "tokenizer_chat_template":
            return CHAT_TEMPLATE_NAME
        for name, template in PRESET_TEMPLATES.items():
            if self.template == template:
                return name
        return "custom"

    @property
    def adds_bos(self) -> bool:
        """Whether the encoder puts a BOS id first (upstream format; chat templates write their own)."""
        return self.kind == "upstream"

    @property
    def role_marker(self) -> str:
        """Text that may open a generated answer and is dropped from it (the template's tail, e.g. ``[/INST]``)."""
        if self.kind != "upstream" or "{}" not in self.template:
            return ""
        return self.template.split("{}")[-1].strip()

    def stop_sequences(self) -> List[List[int]]:
        """Token-id sequences that end an answer: EOS and every tokenization of ``end_sym``."""
        return stop_sequences_for(self.require_tokenizer(), self.end_sym)

    # ------------------------------------------------------------------ rendering
    def wrap(self, text: str) -> str:
        """One question in this format (``prompt_template`` or the chat template with its generation prompt)."""
        if self.kind == "tokenizer_chat_template":
            messages = self._system_turn() + [{"role": "user", "content": text}]
            return self.require_tokenizer().apply_chat_template(messages, add_generation_prompt=True)
        if "{}" not in self.template:
            raise PromptError(
                f"model.prompt_template={self.template!r} has no '{{}}' where the instruction goes; set it, "
                "e.g. --options \"model.prompt_template=[INST] {} [/INST]\""
            )
        return self.template.format(text)

    def single_turn_condition(self, instruction: str) -> str:
        """The condition text of a single-turn sample: wrapped only with ``chat_template`` (upstream's switch)."""
        return self.wrap(instruction) if self.wrap_single_turn else instruction

    def single_turn_pieces(self, instruction: str, answer: str) -> List[PromptPiece]:
        """``[condition, answer + end_sym]`` of a single-turn training sample."""
        return [PromptPiece(self.single_turn_condition(instruction)), PromptPiece(answer + self.end_sym, True)]

    def conversation_pieces(self, questions: Sequence[str], answers: Sequence[str]) -> List[PromptPiece]:
        """A conversation as pieces: wrapped first question, then ``answer + end_sym`` (trained) and the text before
        the next answer (untrained), in turn.

        With as many answers as questions this is a training sample; with one answer fewer it ends with the text
        that opens the assistant's slot (chat): the same pieces, cut before the answer to be generated.
        """
        n_q, n_a = len(questions), len(answers)
        if n_q == 0 or n_a not in (n_q, n_q - 1):
            raise PromptError(f"a conversation needs as many answers as questions (training) or one fewer (chat); "
                              f"got {n_q} question(s) and {n_a} answer(s)")
        condition, separators = self._condition_and_separators(list(questions), n_a)
        pieces = [PromptPiece(condition)]
        for k, answer in enumerate(answers):
            pieces.append(PromptPiece(answer + self.end_sym, True))
            if k + 1 < n_q:
                pieces.append(PromptPiece(separators[k]))
        return pieces

    def render(self, pieces: Sequence[PromptPiece]) -> str:
        """The pieces as one display string (with the BOS text the encoder adds as an id)."""
        bos = (self.tokenizer.bos_token or "") if self.adds_bos and self.tokenizer is not None else ""
        return bos + "".join(p.text for p in pieces)

    # ------------------------------------------------------------------ internals
    def require_tokenizer(self) -> Any:
        """The tokenizer (an error for a format without one, e.g. of a model built on the meta device)."""
        if self.tokenizer is None:
            raise PromptError("this prompt format has no tokenizer (a model built on the meta device?)")
        return self.tokenizer

    def _system_turn(self) -> List[Dict[str, str]]:
        """``system_prompt`` as a system message (null or empty: the chat template's own default applies)."""
        return [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []

    def _condition_and_separators(self, questions: List[str], n_answers: int) -> Tuple[str, List[str]]:
        """First question wrapped, and the untrained text before each later answer."""
        if self.kind == "upstream":
            bos = self.require_tokenizer().bos_token or ""
            return self.wrap(questions[0]), [bos + self.wrap(q) for q in questions[1:]]
        return self._chat_template_parts(questions, n_answers)

    def _chat_template_parts(self, questions: List[str], n_answers: int) -> Tuple[str, List[str]]:
        """Render with sentinel answers and cut the text at them; the text after each answer's ``end_sym`` up to
        the next answer is a separator."""
        sentinels = [_ANSWER_SENTINEL.format(k) for k in range(n_answers)]
        messages: List[Dict[str, str]] = self._system_turn()
        for question, sentinel in zip(questions, sentinels):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": sentinel}]
        open_slot = n_answers < len(questions)
        if open_slot:
            messages.append({"role": "user", "content": questions[-1]})
        rendered = self.require_tokenizer().apply_chat_template(messages, add_generation_prompt=open_slot)
        parts: List[str] = []
        for sentinel in sentinels:
            head, sep, rendered = rendered.partition(sentinel)
            if not sep:
                raise PromptError("the tokenizer's chat template rewrites assistant messages; it cannot be used for "
                                  "conversations (use model.prompt_format: upstream)")
            parts.append(head)
        if not parts:  # a first question with its open slot
            return rendered, []
        tails = parts[1:] + ([rendered] if open_slot else [])
        separators = []
        for part in tails:
            if not part.startswith(self.end_sym):
                raise PromptError(f"the chat template does not end an assistant turn with end_sym={self.end_sym!r} "
                                  f"(it writes {part[:20]!r}); set model.end_sym to the template's end-of-turn text")
            separators.append(part[len(self.end_sym):])
        return parts[0], separators
