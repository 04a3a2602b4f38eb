"""Streaming readers for large JSON files: one record at a time, never the whole file.

The share-captioner file is a 1.5 GB JSON array; ``json.load`` needs several times that in memory. These
readers feed chunks of text to ``json.JSONDecoder.raw_decode`` and yield each element of a top-level array
(:func:`iter_array`) or each member of a top-level object (:func:`iter_object`, and :func:`iter_sections`,
which also streams the array under every key). Memory stays at about one chunk plus one record.

Errors are :class:`JsonStreamError` with the file, line and column (1-based) of the problem.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Tuple

CHUNK_CHARS = 1 << 20
_WS = " \t\n\r"
_DECODER = json.JSONDecoder()


class JsonStreamError(ValueError):
    """Malformed JSON; ``str()`` names the file, line and column."""

    def __init__(self, path: str, line: int, col: int, msg: str) -> None:
        super().__init__(f"{path}:{line}:{col}: invalid JSON: {msg}")
        self.path, self.line, self.col, self.reason = path, line, col, msg


class _Reader:
    """A text buffer over a file with absolute line tracking and a raw_decode that refills as needed."""

    def __init__(self, fp: Any, path: str, chunk: int) -> None:
        self.fp, self.path, self.chunk = fp, path, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.lines_before = 0  # newlines in text already dropped from buf
        self.line_start = 0  # index in buf where the current line starts (may be negative after a trim)

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.fp.read(self.chunk)
        if not data:
            self.eof = True
            return False
        if self.pos > self.chunk:  # drop consumed text, keeping line accounting
            dropped = self.buf[: self.pos]
            self.lines_before += dropped.count("\n")
            nl = dropped.rfind("\n")
            self.line_start = (nl + 1 if nl >= 0 else self.line_start) - self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        self.buf += data
        return True

    def where(self, pos: int) -> Tuple[int, int]:
        """(line, column) of buffer index ``pos``, both 1-based."""
        head = self.buf[:pos]
        nl = head.rfind("\n")
        line = self.lines_before + head.count("\n") + 1
        col = pos - (nl + 1 if nl >= 0 else self.line_start) + 1
        return line, col

    def fail(self, pos: int, msg: str) -> JsonStreamError:
        line, col = self.where(pos)
        return JsonStreamError(self.path, line, col, msg)

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str, what: str) -> str:
        ch = self.peek()
        if not ch or ch not in chars:
            raise self.fail(self.pos, f"expected {what}, found {ch!r}" if ch else f"expected {what}, found end of file")
        self.pos += 1
        return ch

    def value(self) -> Any:
        """Decode the next JSON value, reading more text while it may be incomplete."""
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                maybe_cut = err.pos >= len(self.buf) - 16 or err.msg.startswith("Unterminated")
                if maybe_cut and self._fill():
                    continue
                raise self.fail(err.pos, err.msg) from None
            if end > len(self.buf) - 32 and not self.eof and self._fill():
                continue  # a number near the end may be cut ("1e", "-0."): decode again with more text
            self.pos = end
            return obj


def _open(path: "str | os.PathLike[str]", chunk: int) -> Tuple[Any, _Reader]:
    fp = open(path, "r", encoding="utf-8-sig")
    return fp, _Reader(fp, os.fspath(path), chunk)


def _array_items(r: _Reader) -> Iterator[Tuple[int, Any]]:
    """Elements of the array whose '[' was just consumed."""
    if r.peek() == "]":
        r.pos += 1
        return
    index = 0
    while True:
        yield index, r.value()
        index += 1
        if r.expect(",]", "',' or ']' after array element") == "]":
            return


def _end(r: _Reader) -> None:
    if r.peek():
        raise r.fail(r.pos, "extra data after the top-level value")


def iter_array(path: "str | os.PathLike[str]", chunk: int = CHUNK_CHARS) -> Iterator[Tuple[int, Any]]:
    """Yield ``(index, element)`` for each element of the top-level JSON array in ``path``."""
    fp, r = _open(path, chunk)
    with fp:
        r.expect("[", "a JSON array '['")
        yield from _array_items(r)
        _end(r)


def _object_keys(r: _Reader) -> Iterator[str]:
    """Keys of the object whose '{' was just consumed; after each key the reader sits before its value."""
    if r.peek() == "}":
        r.pos += 1
        return
    while True:
        if r.peek() != '"':
            raise r.fail(r.pos, "expected a string key")
        key = r.value()
        r.expect(":", "':' after object key")
        yield key
        if r.expect(",}", "',' or '}' after object member") == "}":
            return


def iter_object(path: "str | os.PathLike[str]", chunk: int = CHUNK_CHARS) -> Iterator[Tuple[str, Any]]:
    """Yield ``(key, value)`` for each member of the top-level JSON object (values decoded whole)."""
    fp, r = _open(path, chunk)
    with fp:
        r.expect("{", "a JSON object '{'")
        for key in _object_keys(r):
            yield key, r.value()
        _end(r)


def iter_sections(path: "str | os.PathLike[str]", chunk: int = CHUNK_CHARS) -> Iterator[Tuple[str, Any]]:
    """Yield ``(key, items)`` per member of the top-level object.

    When the value is an array, ``items`` is an iterator of ``(index, record)`` streamed from the file (it is
    drained automatically if the caller moves on without consuming it); otherwise ``items`` is the decoded
    value itself.
    """
    fp, r = _open(path, chunk)
    with fp:
        r.expect("{", "a JSON object '{' (section name -> list of records)")
        for key in _object_keys(r):
            if r.peek() == "[":
                r.pos += 1
                items = _array_items(r)
                yield key, items
                for _ in items:  # drain what the caller did not read
                    pass
            else:
                yield key, r.value()
        _end(r)


def top_level_kind(path: "str | os.PathLike[str]") -> str:
    """``"array"`` or ``"object"``: the first non-whitespace character of the file (BOM ignored)."""
    with open(path, "r", encoding="utf-8-sig") as fp:
        while True:
            ch = fp.read(1)
            if not ch:
                raise JsonStreamError(os.fspath(path), 1, 1, "empty file")
            if ch not in _WS:
                break
    if ch == "[":
        return "array"
    if ch == "{":
        return "object"
    raise JsonStreamError(os.fspath(path), 1, 1, f"expected '[' or '{{' at the top level, found {ch!r}")
