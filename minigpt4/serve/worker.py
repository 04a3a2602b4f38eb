"""The one thread that owns the model: it takes requests from a bounded queue and answers them in turn.

Every request goes through the chat engine (:class:`~minigpt4.conversation.chat.Chat`, the one the command-line
demos use): a conversation in the model's prompt format, images uploaded and encoded, the question asked, the
answer streamed. Results travel back through the job's ``emit`` callback as events:
``("delta", text)`` while streaming, then ``("done", Completion)`` or ``("error", ApiError)``.

When several non-streamed requests with the same generation settings are waiting, the worker answers up to
``max_batch`` of them in one batched generation (each conversation embedded by the engine, the batch left-padded
with zero vectors and attention 0); a streamed request, or one with other settings, is answered on its own. A full
queue refuses a new request at once (:class:`QueueFullError`, HTTP 503 with ``Retry-After``) instead of letting
latency grow without bound.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Iterator, List, Optional, Sequence, Tuple

import torch

from minigpt4.common.logger import get_logger
from minigpt4.conversation.chat import Chat, ContextTooLongError
from minigpt4.conversation.conversation import Conversation
from minigpt4.conversation.generation import (AnswerCleaner, GenerationSettings, SettingsError, find_stop,
                                              padded_generate_kwargs)
from minigpt4.serve.errors import ApiError
from minigpt4.serve.protocol import ChatRequest

logger = get_logger(__name__)

Event = Tuple[str, Any]


@dataclass
class Completion:
    """A finished answer: its text, why it ended, and the token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass
class Job:
    """One request waiting for (or being answered by) the worker."""

    request: ChatRequest
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)


class QueueFullError(ApiError):
    """The queue holds ``max_queue`` requests already: HTTP 503 with ``Retry-After``."""

    def __init__(self, max_queue: int, retry_after_s: int) -> None:
        super().__init__(503, f"the server is busy: {max_queue} requests are already waiting; retry after "
                              f"{retry_after_s} s", "queue_full", kind="server_error",
                         headers={"Retry-After": str(retry_after_s)})


class StopScanner:
    """Applies the request's ``stop`` strings to a growing answer: what is safe to send, and where it ends."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hit = False

    def cut(self, text: str) -> str:
        """``text`` up to the first stop string (sets :attr:`hit` when one occurs)."""
        positions = [p for p in (text.find(s) for s in self.stops) if p >= 0]
        if positions:
            self.hit = True
            return text[:min(positions)]
        return text

    def safe(self, text: str) -> str:
        """The part of an unfinished ``text`` that no later stop string can remove."""
        text = self.cut(text)
        if self.hit:
            return text
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return text[:len(text) - hold]


class ChatWorker:
    """Owns the chat engine; :meth:`submit` queues a job (or raises :class:`QueueFullError`)."""

    def __init__(self, chat: Chat, max_queue: int = 16, retry_after_s: int = 5, max_batch: int = 1) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError(f"max_queue and max_batch must be >= 1, got {max_queue} and {max_batch}")
        self.chat = chat
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.largest_batch = 0
        self._held_over: Deque[Job] = collections.deque()  # taken off the queue while batching, not batchable
        self.retry_after_s = retry_after_s
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue(maxsize=max_queue)
        self._gate = threading.Event()
        self._gate.set()
        self._busy = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.served = 0

    # ------------------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="facegpt-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current job, then end the thread (queued jobs are answered first)."""
        if self._thread is not None:
            self._gate.set()
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def hold(self) -> None:
        """Let the worker take the next job but not start it until :meth:`release` (a pause for maintenance
        and for tests that need a busy server)."""
        self._gate.clear()

    def release(self) -> None:
        """Undo :meth:`hold`."""
        self._gate.set()

    @property
    def busy(self) -> bool:
        """Whether a job has been taken off the queue and is not finished."""
        return self._busy.is_set()

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (not counting the one being answered)."""
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFullError` when ``max_queue`` jobs are waiting."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(self.max_queue, self.retry_after_s) from None

    # ------------------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            job = self._held_over.popleft() if self._held_over else self._queue.get()
            if job is None:
                return
            self._busy.set()
            self._gate.wait()
            jobs = [j for j in [job, *self._batch_mates(job)] if not j.cancelled.is_set()]
            self.largest_batch = max(self.largest_batch, len(jobs))
            try:
                if len(jobs) == 1:
                    jobs[0].emit(("done", self.answer(jobs[0])))
                elif jobs:
                    self.answer_batch(jobs)
            except Exception as err:  # a bug or a model failure: the server answers 500 and goes on
                logger.exception("answering %d request(s) failed", len(jobs))
                for failed in jobs:
                    failed.emit(("error", ApiError(500, f"internal error while answering: {type(err).__name__}: "
                                                        f"{err}", "internal_error", kind="server_error")))
            finally:
                self.served += len(jobs)
                self._busy.clear()

    def _batch_mates(self, first: Job) -> List[Job]:
        """Waiting jobs that can share ``first``'s batch (non-streamed, same settings), up to ``max_batch``."""
        if self.max_batch == 1 or not _batchable(first):
            return []
        mates: List[Job] = []
        while len(mates) < self.max_batch - 1 and not self._held_over:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and _batchable(job) and job.request.overrides == first.request.overrides:
                mates.append(job)
            else:
                self._held_over.append(job)  # answered next (the stop sentinel too)
        return mates

    def conversation(self, request: ChatRequest) -> Tuple[Conversation, list]:
        """The request's turns as an engine conversation (images uploaded, not encoded yet)."""
        conv, img_list = self.chat.new_conversation(), []
        for turn in request.turns:
            if turn.role == "assistant":
                conv.append_message(conv.roles[1], turn.text)
                continue
            for image in turn.images:
                self.chat.upload_img(image, conv, img_list)
            if turn.text:
                self.chat.ask(turn.text, conv)
        return conv, img_list

    def answer(self, job: Job) -> None:
        """Answer one request with the chat engine, emitting ``("delta", text)`` events as the answer grows."""
        try:
            job.emit(("done", self._answer_one(job)))
        except ApiError as err:
            job.emit(("error", err))

    def _answer_one(self, job: Job) -> Completion:
        request, start = job.request, time.monotonic()
        conv, img_list = self.conversation(request)
        with _as_api_error():
            stream = self.chat.stream_answer(conv, img_list, **request.overrides)
        scanner, text, sent = StopScanner(request.stop), "", ""
        for piece in stream:
            text += piece
            safe = scanner.safe(text)
            if safe.startswith(sent) and len(safe) > len(sent):
                job.emit(("delta", safe[len(sent):]))
                sent = safe
            if scanner.hit or job.cancelled.is_set():
                stream.cancel()
                break
        reply = stream.reply if stream.reply is not None else stream.cancel()
        final = scanner.cut(reply.text)
        if final.startswith(sent) and len(final) > len(sent):
            job.emit(("delta", final[len(sent):]))
        return self._completion(final, reply.ids, request, scanner.hit, reply.context_len, start)

    def answer_batch(self, jobs: List[Job]) -> None:
        """Answer non-streamed requests with equal settings in one batched generation (greedy answers equal
        :meth:`answer`'s); a request whose prompt does not fit gets its error and the others go on."""
        start = time.monotonic()
        settings = self.chat.settings.replace(**jobs[0].request.overrides)
        ready: List[Tuple[Job, AnswerCleaner, torch.Tensor]] = []
        for job in jobs:
            conv, img_list = self.conversation(job.request)
            try:
                with _as_api_error():
                    embs, _prompt, _dropped = self.chat.prepare_context(conv, img_list, settings)  # (1, L, H)
            except ApiError as err:
                job.emit(("error", err))
                continue
            ready.append((job, self.chat.answer_cleaner(conv), embs))
        if not ready:
            return
        rows = self._generate_padded([embs for _, _, embs in ready], settings)
        for (job, cleaner, embs), ids in zip(ready, rows):
            scanner = StopScanner(job.request.stop)
            text = scanner.cut(cleaner.text(ids))
            job.emit(("done", self._completion(text, cleaner.ids_before_stop(ids) + self._stop_ids(ids), job.request,
                                               scanner.hit, int(embs.shape[1]), start)))

    def _generate_padded(self, embeds: List[torch.Tensor], settings: GenerationSettings) -> List[List[int]]:
        """Left-pad the ``[1, L_i, H]`` contexts to ``[B, L, H]`` (zero vectors, attention 0) and generate."""
        length = max(int(e.shape[1]) for e in embeds)
        first = embeds[0]
        batch = first.new_zeros((len(embeds), length, first.shape[-1]))  # (B, L, H)
        mask = torch.zeros((len(embeds), length), dtype=torch.long, device=first.device)  # (B, L)
        for i, emb in enumerate(embeds):
            batch[i, length - emb.shape[1]:] = emb[0]
            mask[i, length - emb.shape[1]:] = 1
        kwargs = padded_generate_kwargs(settings, mask)
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.inference_mode(), self.chat.precision.autocast():
            out = self.chat.model.generate_from_embeds(batch, mask, **kwargs)  # (B, T)
        return [[int(i) for i in row] for row in out.tolist()]

    def _stop_ids(self, ids: List[int]) -> List[int]:
        """The stop sequence that ended ``ids`` (nothing when none did): the batch pads rows after it."""
        cut = find_stop(ids, self.chat.model.stop_sequences())
        if cut is None:
            return []
        return next(list(s) for s in self.chat.model.stop_sequences() if list(ids[cut:cut + len(s)]) == list(s))

    def _completion(self, text: str, ids: List[int], request: ChatRequest, stopped: bool, prompt_tokens: int,
                    start: float) -> Completion:
        return Completion(text, self._finish_reason(ids, request, stopped), prompt_tokens, len(ids),
                          time.monotonic() - start)

    def _finish_reason(self, ids: List[int], request: ChatRequest, stopped: bool) -> str:
        """``stop`` (a stop sequence or string ended it) or ``length`` (``max_tokens`` reached first)."""
        if stopped or len(ids) < request.max_tokens:
            return "stop"
        return "stop" if find_stop(ids, self.chat.model.stop_sequences()) is not None else "length"


def _batchable(job: Job) -> bool:
    return not job.request.stream and job.request.overrides.get("num_beams", 1) == 1


@contextlib.contextmanager
def _as_api_error() -> Iterator[None]:
    """Turn the engine's user-facing errors (prompt too long, invalid settings) into 400 responses."""
    try:
        yield
    except ContextTooLongError as err:
        raise ApiError(400, str(err), "context_length_exceeded") from None
    except SettingsError as err:
        raise ApiError(400, str(err), "invalid_parameter") from None
