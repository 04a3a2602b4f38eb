"""The package logger's console handler follows ``sys.stderr`` as it is when a record is written."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from minigpt4.common.logger import get_logger, setup_logging


def test_console_handler_writes_to_the_current_stderr_not_a_closed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(logging.INFO, rank=0)
    get_logger("minigpt4.test_logger").info("to the first stream")
    first.close()  # e.g. a test's captured stderr, closed when that test ended
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("minigpt4.test_logger").info("to the second stream")
    text = second.getvalue()
    assert "to the second stream" in text and "Logging error" not in text


def test_an_explicit_stream_is_kept() -> None:
    stream = io.StringIO()
    setup_logging(logging.INFO, rank=0, stream=stream)
    try:
        get_logger("minigpt4.test_logger").info("kept")
        assert "kept" in stream.getvalue()
    finally:
        setup_logging(logging.INFO, rank=0)
