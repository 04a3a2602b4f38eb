"""The chat engine used by both command-line demos (and by any Python caller).

Typical use::

    chat = Chat(model, vis_processor, device="cuda:0", precision=policy_from_run_config(cfg.run, device))
    conv, img_list = chat.new_conversation(), []     # in the model's prompt format
    chat.upload_img("face.jpg", conv, img_list)     # opens the image now (clear error if it is not one)
    chat.encode_img(img_list)                         # once; later turns reuse the embeddings
    chat.ask("How old is this person?", conv)
    text, ids = chat.answer(conv, img_list)           # or: for piece in chat.stream_answer(conv, img_list): ...

The engine renders the conversation with the model's prompt format (or an upstream chat template chosen by name),
encodes it with the model's sample encoder (the same token ids training uses), lets the model write the image
embeddings into the image slots (``model.context_embeds``), generates with ``model.generate_from_embeds`` and stops
on ``model.stop_sequences()``. Image encoding and generation run under the ``precision`` policy (fp32 by default).
When the prompt does not fit ``max_length - max_new_tokens``, the oldest turns without an image are left out of
the prompt (the transcript keeps them) and the reply says how many.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from minigpt4.common.logger import get_logger
from minigpt4.common.precision import PrecisionPolicy
from minigpt4.conversation.conversation import Conversation, FormatConversation
from minigpt4.conversation.generation import AnswerCleaner, GenerationSettings
from minigpt4.processors.image_io import open_image
from minigpt4.prompting import IMAGE_HERE, IMAGE_PROMPT

logger = get_logger(__name__)

ImageInput = Union[str, Path, Image.Image, torch.Tensor]


class ContextTooLongError(ValueError):
    """The prompt does not fit even after dropping every turn that can be dropped."""


@dataclass
class PendingImage:
    """An uploaded image not encoded yet: a PIL image or a pixel tensor ``[3,S,S]`` / ``[1,3,S,S]``."""

    image: Union[Image.Image, torch.Tensor]
    source: str = ""


@dataclass
class Reply:
    """One answer: its text (as stored in the conversation), the generated ids, and what happened."""

    text: str
    ids: List[int]
    dropped_turns: int = 0
    interrupted: bool = False
    prompt: str = ""
    context_len: int = 0


class AnswerCancelled(Exception):
    """Raised inside the generation thread (through the streamer) to stop an answer early."""


class _IdQueueStreamer(BaseStreamer):
    """Hands each generated id batch from the generation thread to the consumer through a queue.

    Cancelling works through the streamer: once ``cancel`` is set, the next token raises :class:`AnswerCancelled`
    inside ``generate``, which ends the generation at once (the ids streamed so far are the partial answer).
    """

    def __init__(self, out: "queue.Queue[Any]", cancel: threading.Event) -> None:
        self.out = out
        self.cancel = cancel
        self.prompt_seen = False
        self.ids: List[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt ids (none for an embeddings-only prompt)
            self.prompt_seen = True
            return
        if self.cancel.is_set():
            raise AnswerCancelled()
        new = [int(i) for i in value.reshape(-1).tolist()]
        self.ids.extend(new)
        self.out.put(new)

    def end(self) -> None:
        """Nothing to flush: the generation thread reports completion itself."""


class Chat:
    """Upload an image, encode it once, ask, answer (whole or streamed), with multi-turn history.

    Args:
        model: a FaceGPT model (``encode_img``, ``prompt_format``, ``sample_encoder``, ``context_embeds``,
            ``generate_from_embeds``, ``stop_sequences``, ``llama_tokenizer``).
        vis_processor: the eval image processor (PIL image → ``[3,S,S]``), from the model config's ``preprocess``.
        device: where images are sent (the model must already be there).
        template: the conversation template; None = the model's prompt format (:class:`FormatConversation`);
            an upstream template (``upstream_template("minigptv2")``) reproduces upstream's chat layout.
        settings: default generation settings (greedy unless changed).
        precision: the precision policy image encoding and generation run under (the run config's, see
            :func:`~minigpt4.common.precision.policy_from_run_config`); None = fp32 on ``device``.
    """

    def __init__(self, model: Any, vis_processor: Callable[[Any], torch.Tensor],
                 device: Union[str, torch.device] = "cpu", template: Optional[Conversation] = None,
                 settings: Optional[GenerationSettings] = None, precision: Optional[PrecisionPolicy] = None) -> None:
        self.model = model
        self.vis_processor = vis_processor
        self.device = torch.device(device)
        self.template = template
        self.settings = settings or GenerationSettings()
        self.precision = precision or PrecisionPolicy("fp32", self.device.type)

    # ------------------------------------------------------------------------ conversation
    def new_conversation(self) -> Conversation:
        """A fresh conversation: in the model's prompt format, or a copy of the template given to the engine."""
        if self.template is None:
            if getattr(self.model, "prompt_format", None) is None:
                raise ValueError("Chat was built without a template and the model has no prompt_format; pass "
                                 "template=upstream_template(name)")
            self.template = FormatConversation.for_format(self.model.prompt_format)
        return self.template.copy()

    def upload_img(self, image: ImageInput, conv: Conversation, img_list: list) -> str:
        """Add an image to the conversation (a user turn holding the placeholder); returns ``"Received."``.

        A path is opened immediately, so a missing or undecodable file raises
        :class:`~minigpt4.processors.image_io.ImageOpenError` here, naming the file.
        """
        if isinstance(image, (str, Path)):
            opener = getattr(self.vis_processor, "open", open_image)
            pending = PendingImage(opener(image), source=str(image))
        elif isinstance(image, Image.Image):
            pending = PendingImage(image.convert("RGB") if image.mode != "RGB" else image, source="<PIL image>")
        elif isinstance(image, torch.Tensor):
            if image.dim() not in (3, 4) or image.shape[-3] != 3:
                raise ValueError(f"an image tensor must be [3,S,S] or [1,3,S,S], got {tuple(image.shape)}")
            pending = PendingImage(image, source="<tensor>")
        else:
            raise TypeError(f"upload_img takes a path, a PIL image or a tensor, not {type(image).__name__}")
        conv.append_message(conv.roles[0], IMAGE_PROMPT)
        img_list.append(pending)
        return "Received."

    def attach_encoded(self, embeds: torch.Tensor, conv: Conversation, img_list: list) -> None:
        """Add an already encoded image (``[1, N, H]``, e.g. kept from an earlier conversation) as a user turn."""
        conv.append_message(conv.roles[0], IMAGE_PROMPT)
        img_list.append(embeds)

    def encode_img(self, img_list: list) -> None:
        """Replace every not-yet-encoded image in ``img_list`` by its embedding ``[1, N, H]`` (cached there)."""
        for i, item in enumerate(img_list):
            if not isinstance(item, PendingImage):
                continue
            pixels = item.image
            if isinstance(pixels, Image.Image):
                pixels = self.vis_processor(pixels)
            if pixels.dim() == 3:
                pixels = pixels.unsqueeze(0)  # (3, S, S) -> (1, 3, S, S)
            with torch.inference_mode(), self.precision.autocast():
                embeds, _ = self.model.encode_img(pixels.to(self.device))
            img_list[i] = embeds

    def ask(self, text: str, conv: Conversation) -> None:
        """Add a user question; right after an image it joins that turn (``<Img><ImageHere></Img> text``)."""
        last = conv.messages[-1] if conv.messages else None
        if last is not None and last[0] == conv.roles[0] and last[1] is not None and last[1].endswith("</Img>"):
            last[1] = f"{last[1]} {text}"
        else:
            conv.append_message(conv.roles[0], text)

    # ------------------------------------------------------------------------------ answer
    def answer(self, conv: Conversation, img_list: list, **overrides: Any) -> Tuple[str, List[int]]:
        """Generate the answer to the last question; returns ``(text, generated ids)`` (upstream's shape)."""
        reply = self.reply(conv, img_list, **overrides)
        return reply.text, reply.ids

    def reply(self, conv: Conversation, img_list: list, **overrides: Any) -> Reply:
        """Like :meth:`answer` but returns the full :class:`Reply` (dropped turns, prompt, context length)."""
        settings = self.settings.replace(**overrides) if overrides else self.settings
        embs, prompt, dropped = self._prepare(conv, img_list, settings)
        cleaner = self._cleaner(conv)
        try:
            ids = self._generate(embs, settings)
        except BaseException:
            conv.messages.pop()  # no answer: close the open assistant slot again
            raise
        reply = Reply(cleaner.text(ids), ids, dropped, False, prompt, int(embs.shape[1]))
        conv.messages[-1][1] = reply.text
        return reply

    def stream_answer(self, conv: Conversation, img_list: list, **overrides: Any) -> "AnswerStream":
        """Start generating; iterate the returned :class:`AnswerStream` for text pieces as they are produced.

        With ``num_beams > 1`` (transformers cannot stream beam search) the whole answer arrives as one piece.
        """
        settings = self.settings.replace(**overrides) if overrides else self.settings
        embs, prompt, dropped = self._prepare(conv, img_list, settings)
        return AnswerStream(self, conv, embs, settings, self._cleaner(conv), prompt, dropped)

    def prepare_context(self, conv: Conversation, img_list: list,
                        settings: GenerationSettings) -> Tuple[torch.Tensor, str, int]:
        """Open the assistant slot and embed the context as :meth:`reply` would: ``(embeds [1, L, H], prompt
        text, dropped turns)``, for callers that batch several conversations into one generation."""
        return self._prepare(conv, img_list, settings)

    def answer_cleaner(self, conv: Conversation) -> AnswerCleaner:
        """How generated ids become this conversation's answer text (stop sequences, role marker)."""
        return self._cleaner(conv)

    # ---------------------------------------------------------------------------- internals
    def _cleaner(self, conv: Conversation) -> AnswerCleaner:
        if isinstance(conv, FormatConversation):  # stop texts: the decoded stop sequences (EOS, end_sym)
            return AnswerCleaner(self.model.llama_tokenizer, self.model.stop_sequences(), [],
                                 conv.prompt_format.role_marker)
        sep = conv.sep if conv.sep.strip() else ""
        return AnswerCleaner(self.model.llama_tokenizer, self.model.stop_sequences(), [sep], conv.roles[1])

    def _prepare(self, conv: Conversation, img_list: list,
                 settings: GenerationSettings) -> Tuple[torch.Tensor, str, int]:
        """Open the assistant slot, fit the prompt into the context budget, embed it."""
        if any(isinstance(i, PendingImage) for i in img_list):
            self.encode_img(img_list)
        if not conv.messages or conv.messages[-1][0] != conv.roles[0]:
            raise ValueError("the conversation has no open question; call ask() first")
        conv.append_message(conv.roles[1], None)
        try:
            prompt_conv, dropped, embs = self._fit_context(conv, img_list, settings)
        except Exception:
            conv.messages.pop()  # leave the conversation as it was
            raise
        return embs, prompt_conv.get_prompt(), dropped

    def context_budget(self, settings: GenerationSettings) -> int:
        """Positions the prompt may use: ``max_length - max_new_tokens``, and no more than the LLM allows."""
        budget = settings.context_limit
        llm_config = getattr(getattr(self.model, "llama_model", None), "config", None)
        max_pos = getattr(llm_config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and max_pos > 0:
            budget = min(budget, max_pos - settings.max_new_tokens)
        return budget

    def context_ids(self, conv: Conversation, img_list: list) -> List[int]:
        """The token ids the model gets for ``conv`` (``IMAGE_SLOT_ID`` where ``img_list``'s embeddings go)."""
        pieces, add_bos = conv.prompt_pieces()
        sizes = [int(e.shape[-2]) for e in img_list]  # image tokens of each cached embedding [1, N, H]
        return self.model.sample_encoder.encode_pieces(pieces, add_bos, sizes)

    def _embed(self, ids: List[int], img_list: list) -> torch.Tensor:
        with torch.inference_mode(), self.precision.autocast():
            return self.model.context_embeds(ids, img_list)

    def _fit_context(self, conv: Conversation, img_list: list,
                     settings: GenerationSettings) -> Tuple[Conversation, int, torch.Tensor]:
        """The conversation as it fits the budget: drop the oldest question/answer pairs that hold no image."""
        budget = self.context_budget(settings)
        work, dropped = conv, 0
        ids = self.context_ids(work, img_list)
        while len(ids) > budget:
            index = _oldest_droppable_pair(work)
            if index is None:
                raise ContextTooLongError(
                    f"the prompt needs {len(ids)} positions but only {budget} are available "
                    f"(max_length {settings.max_length} - max_new_tokens {settings.max_new_tokens}); "
                    "start a new conversation, ask a shorter question, or raise max_length / lower max_new_tokens"
                )
            if work is conv:
                work = conv.copy()
            del work.messages[index:index + 2]
            dropped += 1
            ids = self.context_ids(work, img_list)
        embs = self._embed(ids, img_list)
        if dropped:
            logger.warning("the conversation is longer than max_length - max_new_tokens = %d positions: the %d oldest "
                           "turn(s) were left out of the prompt (the transcript keeps them)", budget, dropped)
        return work, dropped, embs

    def _generate(self, embs: torch.Tensor, settings: GenerationSettings,
                  streamer: Optional[BaseStreamer] = None) -> List[int]:
        """Run the model's generation on ``embs`` ``[1, L, H]`` (stops: ``model.stop_sequences()``); new ids."""
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
        attention_mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)  # (1, L)
        with torch.inference_mode(), self.precision.autocast():
            out = self.model.generate_from_embeds(embs, attention_mask, streamer=streamer,
                                                  **settings.generate_kwargs())
        return [int(i) for i in out[0].tolist()]


def _oldest_droppable_pair(conv: Conversation) -> Optional[int]:
    """Index of the oldest answered user turn without an image (never the open question), or None."""
    messages = conv.messages
    for i in range(len(messages) - 2):
        role, text = messages[i]
        nxt_role, nxt_text = messages[i + 1]
        if role == conv.roles[0] and nxt_role == conv.roles[1] and nxt_text is not None \
                and IMAGE_HERE not in (text or ""):
            return i
    return None


class AnswerStream:
    """Iterate for the answer's text pieces as they are generated; :attr:`reply` is set once it is done.

    :meth:`cancel` (e.g. on Ctrl-C) stops the generation at the next token; the partial answer is kept in the
    conversation, and :attr:`reply` has ``interrupted=True``.
    """

    def __init__(self, chat: Chat, conv: Conversation, embs: torch.Tensor, settings: GenerationSettings,
                 cleaner: AnswerCleaner, prompt: str, dropped: int) -> None:
        self.conv = conv
        self.cleaner = cleaner
        self.reply: Optional[Reply] = None
        self._meta = (prompt, int(embs.shape[1]), dropped)
        self._cancel = threading.Event()
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._ids: List[int] = []
        self._shown = ""
        self._streamer = _IdQueueStreamer(self._queue, self._cancel)
        streamer = self._streamer if settings.num_beams == 1 else None
        self._thread = threading.Thread(target=self._run, args=(chat, embs, settings, streamer), daemon=True)
        self._thread.start()

    def _run(self, chat: Chat, embs: torch.Tensor, settings: GenerationSettings,
             streamer: Optional[BaseStreamer]) -> None:
        try:
            self._queue.put(("done", chat._generate(embs, settings, streamer)))
        except AnswerCancelled:
            self._queue.put(("done", list(self._streamer.ids)))
        except BaseException as err:  # handed to the consumer thread, which re-raises it
            self._queue.put(("error", err))

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if isinstance(item, list):
                self._ids.extend(item)
                piece = self._advance(self.cleaner.partial(self._ids))
                if piece:
                    yield piece
                continue
            kind, payload = item
            if kind == "error":
                self._finish(self._ids)
                raise payload
            piece = self._finish(payload)
            if piece:
                yield piece
            return

    def _advance(self, text: str) -> str:
        """The new part of ``text`` beyond what was shown (nothing when decoding changed earlier characters)."""
        if not text.startswith(self._shown):
            return ""
        piece, self._shown = text[len(self._shown):], text
        return piece

    def _finish(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        prompt, context_len, dropped = self._meta
        self.reply = Reply(self.cleaner.text(ids), ids, dropped, self._cancel.is_set(), prompt, context_len)
        self.conv.messages[-1][1] = self.reply.text
        if not self.reply.text.startswith(self._shown):
            logger.debug("streamed text %r is not a prefix of the final answer %r", self._shown, self.reply.text)
            return ""
        return self._advance(self.reply.text)

    def cancel(self) -> Reply:
        """Stop generating, wait for the generation thread, and return the (partial) reply."""
        self._cancel.set()
        if self.reply is None:
            for _ in self:  # drain: the streamer ends generation at the next token
                pass
        self._thread.join()
        assert self.reply is not None
        return self.reply

    def text(self) -> str:
        """Consume the whole stream and return the final answer text."""
        for _ in self:
            pass
        assert self.reply is not None
        return self.reply.text
