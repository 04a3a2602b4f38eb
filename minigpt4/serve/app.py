"""The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Build it with :func:`create_app` around a ready :class:`~minigpt4.conversation.chat.Chat` (the engine the
command-line demos use); :mod:`minigpt4.serve.cli` builds the engine from a config and runs the app with uvicorn.
Every error is OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt4.common.logger import get_logger
from minigpt4.conversation.chat import Chat
from minigpt4.serve.errors import ApiError
from minigpt4.serve.protocol import ChatRequest, ServeLimits, parse_body, parse_request
from minigpt4.serve.worker import ChatWorker, Completion, Job

logger = get_logger(__name__)


@dataclass
class ServeConfig:
    """How the server behaves (the ``facegpt-serve`` flags)."""

    model_id: str = "facegpt"
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key: Optional[str] = None
    max_queue: int = 16
    retry_after_s: int = 5
    max_batch: int = 4


def error_response(err: ApiError) -> JSONResponse:
    """``err`` as a JSON response with its status and headers."""
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(chat: Chat, config: Optional[ServeConfig] = None) -> FastAPI:
    """The server app; its worker thread starts with the app (lifespan) and is ``app.state.worker``."""
    config = config or ServeConfig()
    worker = ChatWorker(chat, config.max_queue, config.retry_after_s, config.max_batch)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        logger.info("serving %s (queue %d, batch %d, api key %s)", config.model_id, config.max_queue, config.max_batch,
                    "required" if config.api_key else "off")
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="FaceGPT OpenAI-compatible server", lifespan=lifespan)
    app.state.worker, app.state.config = worker, config
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return error_response(ApiError(err.status_code, f"{request.method} {request.url.path}: {err.detail}", code))

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        """API key on /v1 routes; a declared body over the size limit is refused before it is read."""
        if request.url.path.startswith("/v1") and config.api_key and not _key_ok(request, config.api_key):
            return error_response(ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                           "invalid_api_key"))
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.limits.max_request_bytes:
            return error_response(_too_big(config.limits))
        return await call_next(request)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "model": config.model_id, "busy": worker.busy, "queued": worker.depth,
                "max_queue": config.max_queue, "served": worker.served}

    @app.get("/v1/models")
    async def models() -> Dict[str, Any]:
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": created,
                                            "owned_by": "facegpt"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        raw = await _read_body(request, config.limits)
        parsed = await run_in_threadpool(_parse, raw, config, chat)  # base64 and image decoding off the loop
        events: "asyncio.Queue[Any]" = asyncio.Queue()
        job = Job(parsed, _emitter(asyncio.get_running_loop(), events))
        worker.submit(job)  # QueueFullError → 503 with Retry-After
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if parsed.stream:
            return StreamingResponse(_sse(events, job, completion_id, parsed), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            done = await _wait_done(events)
        except asyncio.CancelledError:  # the client went away
            job.cancelled.set()
            raise
        return _completion_body(done, completion_id, parsed)

    return app


def _parse(raw: bytes, config: ServeConfig, chat: Chat) -> ChatRequest:
    return parse_request(parse_body(raw), config.model_id, chat.settings, config.limits)


def _emitter(loop: asyncio.AbstractEventLoop, events: "asyncio.Queue[Any]") -> Callable[[Any], None]:
    """A thread-safe ``emit`` for the worker that hands events to this request's queue on the server's loop."""

    def emit(event: Any) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed (server shutting down): nobody waits for this answer
            pass

    return emit


def _key_ok(request: Request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _too_big(limits: ServeLimits) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limits.max_request_bytes} bytes; "
                         "send a smaller image", "request_too_large")


async def _read_body(request: Request, limits: ServeLimits) -> bytes:
    """The body, refusing it (413) as soon as it passes the size limit (also without a Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_request_bytes:
            raise _too_big(limits)
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_done(events: "asyncio.Queue[Any]") -> Completion:
    """Skip the deltas; return the completion or raise the worker's error."""
    while True:
        kind, payload = await events.get()
        if kind == "done":
            return payload
        if kind == "error":
            raise payload


def _usage(done: Completion) -> Dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _completion_body(done: Completion, completion_id: str, request: ChatRequest) -> Dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason, "logprobs": None}],
            "usage": _usage(done)}


def _chunk(completion_id: str, request: ChatRequest, delta: Dict[str, Any], finish: Optional[str] = None,
           usage: Optional[Dict[str, int]] = None, choices: bool = True) -> str:
    body: Dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": request.model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                            if choices else []}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


async def _sse(events: "asyncio.Queue[Any]", job: Job, completion_id: str,
               request: ChatRequest) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; an error mid-stream is sent as
    an ``{"error": ...}`` event before ``[DONE]``."""
    try:
        yield _chunk(completion_id, request, {"role": "assistant", "content": ""})
        while True:
            kind, payload = await events.get()
            if kind == "delta":
                yield _chunk(completion_id, request, {"content": payload})
            elif kind == "done":
                yield _chunk(completion_id, request, {}, finish=payload.finish_reason)
                if request.include_usage:
                    yield _chunk(completion_id, request, {}, usage=_usage(payload), choices=False)
                break
            else:
                yield f"data: {json.dumps(payload.body())}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a no-op once answered; stops the generation when the client disconnected
