"""OpenAI chat-completions requests → a checked :class:`ChatRequest` (limits applied, images decoded).

What a request may hold: ``messages`` (``system``/``developer`` messages are accepted and ignored: the model's
prompt format has its own system prompt; ``user`` content is a string or a list of ``text`` and ``image_url``
parts; ``assistant`` content is text), ``model``, ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
(absent or 0 = greedy, the engine's default; > 0 = sampling), ``top_p``, ``stop`` (a string or up to 4), ``seed``,
``n`` (1 only), ``stream`` and ``stream_options.include_usage``. Other OpenAI fields are ignored.

Images are ``data:image/...;base64,...`` URLs; ``http(s)`` URLs are refused unless the server allows remote
images. Every refusal is an :class:`~minigpt4.serve.errors.ApiError` naming the field and the fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from PIL import Image, ImageOps

from minigpt4.conversation.generation import GenerationSettings, SettingsError
from minigpt4.processors.image_io import to_rgb
from minigpt4.serve.errors import ApiError, bad_request

MAX_STOPS = 4
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
IGNORED_ROLES = ("system", "developer")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    max_request_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_tokens_cap: int = 1024
    max_images: int = 8
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0


@dataclass
class Turn:
    """One user or assistant turn: its text and (user turns) the decoded images, in order."""

    role: str
    text: str
    images: List[Image.Image] = field(default_factory=list)


@dataclass
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    turns: List[Turn]
    overrides: Dict[str, Any]
    max_tokens: int
    stop: List[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False

    @property
    def image_count(self) -> int:
        """Images over all turns."""
        return sum(len(t.images) for t in self.turns)


def parse_body(raw: bytes) -> Dict[str, Any]:
    """The JSON object in ``raw`` (400 ``invalid_json`` otherwise)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON ({err}); send a JSON object", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}", "invalid_json")
    return body


def parse_request(body: Dict[str, Any], model_id: str, base: GenerationSettings, limits: ServeLimits) -> ChatRequest:
    """Check ``body`` against the served model and ``limits``; decode its images."""
    model = body.get("model", model_id)
    if model != model_id:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {model_id!r} (GET /v1/models)",
                       "model_not_found", param="model")
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", "unsupported_parameter", "n")
    turns = _parse_messages(body.get("messages"), limits)
    max_tokens = _max_tokens(body, base, limits)
    overrides = _sampling(body, max_tokens)
    try:
        settings = base.replace(**overrides)
        if settings.max_length <= settings.max_new_tokens:
            raise SettingsError(f"max_tokens must be below the server's max_length {settings.max_length}")
    except SettingsError as err:
        raise bad_request(str(err), "invalid_parameter") from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "invalid_parameter", "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage", False)) if isinstance(options, dict) else False
    return ChatRequest(model_id, turns, overrides, max_tokens, _stops(body.get("stop")), stream, include_usage)


# -------------------------------------------------------------------------------- messages


def _parse_messages(messages: Any, limits: ServeLimits) -> List[Turn]:
    """Alternating user/assistant turns ending with a user question, with at least one image."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects", "invalid_messages",
                          "messages")
    turns: List[Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with role and content", "invalid_messages", where)
        role = message.get("role")
        if role in IGNORED_ROLES:
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be user, assistant or system, not {role!r}", "invalid_messages",
                              f"{where}.role")
        text, images = _parse_content(message.get("content"), role, where, limits)
        if turns and turns[-1].role == role:  # consecutive messages of one role form one turn
            turns[-1].text = "\n".join(t for t in (turns[-1].text, text) if t)
            turns[-1].images.extend(images)
        else:
            turns.append(Turn(role, text, images))
    if not turns or turns[0].role != "user":
        raise bad_request("the conversation must start with a user message", "invalid_messages", "messages")
    if turns[-1].role != "user" or not turns[-1].text.strip():
        raise bad_request("the last message must be a user message with a text question", "invalid_messages",
                          "messages")
    count = sum(len(t.images) for t in turns)
    if count == 0:
        raise bad_request("no image in the conversation: add an image_url part (a data:image/...;base64 URL) to a "
                          "user message", "missing_image", "messages")
    if count > limits.max_images:
        raise bad_request(f"{count} images in the conversation; at most {limits.max_images}", "too_many_images",
                          "messages")
    return turns


def _parse_content(content: Any, role: str, where: str, limits: ServeLimits) -> tuple:
    """``(text, images)`` of one message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or a list of parts", "invalid_messages",
                          f"{where}.content")
    texts: List[str] = []
    images: List[Image.Image] = []
    for j, part in enumerate(content):
        pwhere = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise bad_request(f"{pwhere}: images are accepted in user messages only", "invalid_messages", pwhere)
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise bad_request(f"{pwhere}.image_url.url must be a string", "invalid_image_url", pwhere)
            images.append(load_image_url(url, pwhere, limits))
        else:
            raise bad_request(f"{pwhere} must be {{type: text, text}} or {{type: image_url, image_url: {{url}}}}",
                              "invalid_messages", pwhere)
    return "\n".join(texts), images


# ---------------------------------------------------------------------------------- images


def load_image_url(url: str, where: str, limits: ServeLimits) -> Image.Image:
    """Decode a ``data:image/...;base64,`` URL (or fetch an http(s) one when allowed) into an RGB image."""
    match = _DATA_URL.match(url)
    if match:
        try:
            data = base64.b64decode(url[match.end():], validate=False)
        except (binascii.Error, ValueError) as err:
            raise bad_request(f"{where}: the data URL is not valid base64 ({err})", "invalid_image", where) from None
        return decode_image(data, where, limits)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        if not limits.allow_remote_images:
            raise bad_request(f"{where}: remote image URLs are refused by this server; send the image inline as a "
                              "data:image/...;base64 URL (or start the server with --allow-remote-images)",
                              "remote_image_refused", where)
        return decode_image(_fetch(url, where, limits), where, limits)
    raise bad_request(f"{where}: unsupported image URL (starts {url[:30]!r}); use data:image/...;base64,...",
                      "invalid_image_url", where)


def _fetch(url: str, where: str, limits: ServeLimits) -> bytes:
    """The bytes at ``url`` (at most the request-size limit)."""
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout_s) as response:  # noqa: S310 (http(s) only)
            data = response.read(limits.max_request_bytes + 1)
    except OSError as err:
        raise bad_request(f"{where}: cannot fetch {url}: {err}", "image_fetch_failed", where) from None
    if len(data) > limits.max_request_bytes:
        raise bad_request(f"{where}: the image at {url} is over {limits.max_request_bytes} bytes", "image_too_large",
                          where)
    return data


def decode_image(data: bytes, where: str, limits: ServeLimits) -> Image.Image:
    """Image bytes → an upright RGB image, refusing more than ``limits.max_image_pixels`` before decoding."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError:
        raise _too_many_pixels(where, None, limits) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise bad_request(f"{where}: the data is not a decodable image ({type(err).__name__}: {err})",
                          "invalid_image", where) from None
    if width * height > limits.max_image_pixels:
        raise _too_many_pixels(where, (width, height), limits)
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise bad_request(f"{where}: the image cannot be decoded ({type(err).__name__}: {err})", "invalid_image",
                          where) from None


def _too_many_pixels(where: str, size: Optional[tuple], limits: ServeLimits) -> ApiError:
    shown = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return bad_request(f"{where}: the image is {shown}; this server accepts at most {limits.max_image_pixels} "
                       "pixels: resize it first", "image_too_large", where)


# ------------------------------------------------------------------------------ generation


def _max_tokens(body: Dict[str, Any], base: GenerationSettings, limits: ServeLimits) -> int:
    """``max_completion_tokens`` or ``max_tokens``, checked against the cap (default: the server's setting)."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return min(base.max_new_tokens, limits.max_tokens_cap)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer, got {value!r}", "invalid_parameter", name)
    if value > limits.max_tokens_cap:
        raise bad_request(f"{name}={value} is over this server's cap of {limits.max_tokens_cap}; ask for fewer "
                          "tokens", "max_tokens_too_large", name)
    return value


def _number(body: Dict[str, Any], name: str) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number, got {value!r}", "invalid_parameter", name)
    return float(value)


def _sampling(body: Dict[str, Any], max_tokens: int) -> Dict[str, Any]:
    """Generation-setting overrides: temperature > 0 samples (with top_p); absent or 0 is greedy."""
    overrides: Dict[str, Any] = {"max_new_tokens": max_tokens}
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    if temperature is not None and not 0 <= temperature <= 2:
        raise bad_request(f"temperature must be in [0, 2], got {temperature}", "invalid_parameter", "temperature")
    if temperature:
        overrides.update(do_sample=True, temperature=temperature)
        if top_p is not None:
            overrides["top_p"] = top_p
    else:
        overrides["do_sample"] = False
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_request(f"seed must be an integer, got {seed!r}", "invalid_parameter", "seed")
        overrides["seed"] = seed
    return overrides


def _stops(stop: Any) -> List[str]:
    """``stop`` as a list of non-empty strings (at most :data:`MAX_STOPS`)."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise bad_request(f"stop must be a string or a list of at most {MAX_STOPS} strings", "invalid_parameter",
                          "stop")
    return [s for s in stops if s]
