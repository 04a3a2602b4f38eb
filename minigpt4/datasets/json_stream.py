"""Streaming readers for large JSON files: one record at a time, never the whole file.

The share-captioner file is a 1.5 GB JSON array; ``json.load`` needs several times that in memory. These
readers feed chunks of text to ``json.JSONDecoder.raw_decode`` and yield each element of a top-level array
(:func:`iter_array`) or each member of a top-level object (:func:`iter_object`, and :func:`iter_sections`,
which also streams the array under every key). Memory stays at about one chunk plus one record.

Errors are :class:`JsonStreamError` with the file, line and column (1-based) of the problem and the fix; a file
that is valid JSON of the wrong layout (a list where an object is expected) is a :class:`JsonShapeError`.
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Any, Iterator, Optional, Tuple

from minigpt4.common.errors import UserError

CHUNK_CHARS = 1 << 20
_WS = " \t\n\r"
_DECODER = json.JSONDecoder()
SYNTAX_FIX = "correct the file at that line and column (a missing or extra comma, quote or bracket)"
TRUNCATED_FIX = "the file ends before its JSON is complete (cut off while copying or writing?): copy or write it again"
TRAILING_COMMA_FIX = "remove the trailing comma (JSON allows none before ']' or '}')"
_KIND_NAMES = {"[": "a JSON list", "{": "a JSON object"}


class JsonStreamError(UserError, ValueError):
    """Malformed JSON; ``str()`` names the file, line and column, what is wrong and the fix."""

    def __init__(self, path: str, line: int, col: int, msg: str, fix: str = SYNTAX_FIX) -> None:
        super().__init__(f"{path}:{line}:{col}: invalid JSON: {msg}. Fix: {fix}")
        self.path, self.line, self.col, self.reason, self.fix = path, line, col, msg, fix


class JsonShapeError(JsonStreamError):
    """Valid JSON of the wrong layout (e.g. a list of records where a section object is expected)."""

    def __init__(self, path: str, found: str, expected: str, fix: str = "") -> None:
        ValueError.__init__(self, f"{path}: holds {found}, but {expected} is expected here"
                            + (f". Fix: {fix}" if fix else ""))
        self.path, self.line, self.col, self.reason, self.fix = path, 1, 1, f"{found} instead of {expected}", fix


def _not_utf8(path: str) -> JsonStreamError:
    """The error for a file with bytes that are not UTF-8, at the line and byte of the first such byte."""
    line, offset, pending = 1, 0, b""
    with open(path, "rb") as fp:
        while True:
            block = fp.read(1 << 16)
            data = pending + block
            try:
                _, used = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as err:
                good = data[: err.start]
                col = err.start - (good.rfind(b"\n") + 1) + 1
                return JsonStreamError(path, line + good.count(b"\n"), col, f"byte 0x{data[err.start]:02x} (byte "
                                       f"offset {offset + err.start}) is not UTF-8 text", "save the file as UTF-8")
            line += data[:used].count(b"\n")
            offset, pending = offset + used, data[used:]
            if not block:
                return JsonStreamError(path, line, 1, "the file is not UTF-8 text", "save the file as UTF-8")


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
        try:
            data = self.fp.read(self.chunk)
        except UnicodeDecodeError:
            raise _not_utf8(self.path) from None
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

    def fail(self, pos: int, msg: str, cut: bool = False) -> JsonStreamError:
        """An error at buffer index ``pos``, with the fix that fits: trailing comma, cut-off file or syntax.
        ``cut``: the value at ``pos`` ran into the end of the file."""
        line, col = self.where(pos)
        return JsonStreamError(self.path, line, col, msg, self._fix_for(pos, cut))

    def _fix_for(self, pos: int, cut: bool = False) -> str:
        if pos < len(self.buf) and self.buf[pos] in "]}" and self.buf[:pos].rstrip(_WS).endswith(","):
            return TRAILING_COMMA_FIX
        if self.eof and (cut or not self.buf[pos:].strip(_WS)):
            return TRUNCATED_FIX
        return SYNTAX_FIX

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
                cut = err.msg.startswith("Unterminated")  # json's "Unterminated string starting at"
                raise self.fail(err.pos, "a string starts here and is never closed" if cut else err.msg,
                                cut=cut) from None
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


ARRAY_FIX = ("a ShareGPT/LLaVA annotation file is a JSON list of records; a file of sections (name -> records) "
             "belongs to the facegpt4vision builder")
SECTIONS_FIX = ("a FaceGPT4Vision file is a JSON object (section name -> list of records); a plain list of records "
                "belongs to the sharegpt_face builder")


def _top(r: _Reader, want: str, expected: str, fix: str = "") -> None:
    """Consume the top-level opening bracket ``want``; the other kind of JSON value is a shape error."""
    ch = r.peek()
    if not ch:
        raise JsonStreamError(r.path, 1, 1, "the file is empty", "write the annotations into it, or point the "
                              "config at the right file")
    if ch != want and ch in _KIND_NAMES:
        raise JsonShapeError(r.path, _KIND_NAMES[ch], expected, fix)
    r.expect(want, expected)


def _end(r: _Reader) -> None:
    if r.peek():
        raise r.fail(r.pos, "extra data after the top-level value")


def iter_array(path: "str | os.PathLike[str]", chunk: int = CHUNK_CHARS) -> Iterator[Tuple[int, Any]]:
    """Yield ``(index, element)`` for each element of the top-level JSON array in ``path``."""
    fp, r = _open(path, chunk)
    with fp:
        _top(r, "[", "a JSON list '[' of records", ARRAY_FIX)
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
        _top(r, "{", "a JSON object '{'")
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
        _top(r, "{", "a JSON object '{' (section name -> list of records)", SECTIONS_FIX)
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
    try:
        with open(path, "r", encoding="utf-8-sig") as fp:
            while True:
                ch = fp.read(1)
                if not ch:
                    raise JsonStreamError(os.fspath(path), 1, 1, "the file is empty", "write the annotations into "
                                          "it, or point the config at the right file")
                if ch not in _WS:
                    break
    except UnicodeDecodeError:
        raise _not_utf8(os.fspath(path)) from None
    if ch == "[":
        return "array"
    if ch == "{":
        return "object"
    raise JsonStreamError(os.fspath(path), 1, 1, f"expected '[' or '{{' at the top level, found {ch!r}",
                          "an annotation file is a JSON list of records or a JSON object of sections")


def layout_problem(path: "str | os.PathLike[str]", expected: str, fix: str = "") -> Optional[str]:
    """None when the file's top-level JSON value is ``expected`` (``"array"`` or ``"object"``), else the problem
    in words (an unreadable start of the file included); cheap: reads the first characters only."""
    try:
        found = top_level_kind(path)
    except JsonStreamError as err:
        return str(err)
    if found == expected:
        return None
    names = {"array": "a JSON list", "object": "a JSON object"}
    return f"{os.fspath(path)} holds {names[found]}, but {names[expected]} is expected here" + (
        f"; {fix}" if fix else "")
