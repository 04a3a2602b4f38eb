"""Helpers of the server tests: a test image as a data URL, and the real app run by uvicorn on a free port."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import numpy as np
from PIL import Image


def face_png(path: Path, size: Tuple[int, int] = (96, 80), seed: int = 0) -> Path:
    """A face-like PNG (skin oval, eyes, mouth, a little noise) at ``path``."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3)) + rng.uniform(20, 80, size=3)
    img[((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.34 * w)) ** 2 <= 1] = (224, 172, 140)
    for cx in (0.38 * w, 0.62 * w):
        img[((yy - 0.42 * h) ** 2 + (xx - cx) ** 2) <= (0.05 * w) ** 2] = (40, 30, 30)
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def data_url(path: Path) -> str:
    """``data:image/png;base64,...`` of the file's bytes."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def blank_png_url(width: int, height: int) -> str:
    """A data URL of a grey PNG of the given size (PNG compresses it to a few bytes)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user_message(image_url: str, question: str) -> dict:
    """An OpenAI user message with an image part and a text part."""
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": question}]}


@contextlib.contextmanager
def running_server(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL ``http://host:port``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
