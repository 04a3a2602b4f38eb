"""The one thread that owns the model: it takes requests from a bounded queue and answers them in turn.

Every request goes through the chat engine (:class:`~minigpt4.conversation.chat.Chat`, the one the command-line
demos use): a conversation in the model's prompt format, images uploaded and encoded, the question asked, the
answer streamed. Results travel back through the job's ``emit`` callback as events:
``("delta", text)`` while streaming, then ``("done", Completion)`` or ``("error", ApiError)``.

Requests are queued, not batched: the engine answers one conversation at a time. A full queue refuses a new request
at once (:class:`QueueFullError`, HTTP 503 with ``Retry-After``) instead of letting latency grow without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.conversation.chat import Chat, ContextTooLongError
from minigpt4.conversation.generation import SettingsError, find_stop
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

    def __init__(self, chat: Chat, max_queue: int = 16, retry_after_s: int = 5) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.chat = chat
        self.max_queue = max_queue
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
            job = self._queue.get()
            if job is None:
                return
            self._busy.set()
            try:
                self._gate.wait()
                if job.cancelled.is_set():
                    continue
                job.emit(("done", self.answer(job)))
            except ApiError as err:
                job.emit(("error", err))
            except Exception as err:  # a bug or a model failure: the server answers 500 and goes on
                logger.exception("the request failed")
                job.emit(("error", ApiError(500, f"internal error while answering: {type(err).__name__}: {err}",
                                            "internal_error", kind="server_error")))
            finally:
                self.served += 1
                self._busy.clear()

    def answer(self, job: Job) -> Completion:
        """Answer one request with the chat engine, emitting ``("delta", text)`` events as the answer grows."""
        request, start = job.request, time.monotonic()
        conv, img_list = self.chat.new_conversation(), []
        for turn in request.turns:
            if turn.role == "assistant":
                conv.append_message(conv.roles[1], turn.text)
                continue
            for image in turn.images:
                self.chat.upload_img(image, conv, img_list)
            if turn.text:
                self.chat.ask(turn.text, conv)
        try:
            stream = self.chat.stream_answer(conv, img_list, **request.overrides)
        except (ContextTooLongError, SettingsError) as err:
            raise ApiError(400, str(err), "context_length_exceeded" if isinstance(err, ContextTooLongError)
                           else "invalid_parameter") from None
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
        return Completion(final, self._finish_reason(reply.ids, request, scanner.hit), reply.context_len,
                          len(reply.ids), time.monotonic() - start)

    def _finish_reason(self, ids: List[int], request: ChatRequest, stopped: bool) -> str:
        """``stop`` (a stop sequence or string ended it) or ``length`` (``max_tokens`` reached first)."""
        if stopped or len(ids) < request.max_tokens:
            return "stop"
        return "stop" if find_stop(ids, self.chat.model.stop_sequences()) is not None else "length"
