"""Streaming JSON readers against json.load, including strings that look like structure."""

from __future__ import annotations

import json

import pytest

from minigpt4.common.errors import is_user_error
from minigpt4.datasets.json_stream import (
    TRAILING_COMMA_FIX,
    TRUNCATED_FIX,
    JsonShapeError,
    JsonStreamError,
    iter_array,
    iter_object,
    iter_sections,
    layout_problem,
    top_level_kind,
)


@pytest.mark.parametrize("chunk", [1, 3, 17, 1 << 20])
def test_iter_array_equals_json_load_on_tricky_strings(fixtures_dir, chunk: int) -> None:
    path = fixtures_dir / "tricky_strings.json"
    expected = json.loads(path.read_text(encoding="utf-8"))
    got = list(iter_array(path, chunk=chunk))
    assert [i for i, _ in got] == list(range(len(expected)))
    assert [v for _, v in got] == expected


def test_iter_array_handles_numbers_and_literals_cut_by_chunks(tmp_path) -> None:
    data = [12345678, -0.000125, True, False, None, "x", 1e300, [], {}]
    path = tmp_path / "n.json"
    path.write_text(json.dumps(data))
    for chunk in (1, 2, 5):
        assert [v for _, v in iter_array(path, chunk=chunk)] == data


def test_iter_array_streams_records_before_reading_the_end(tmp_path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[{"a": 1}, {"a": 2}, {"a": ')  # truncated file
    it = iter_array(path, chunk=4)
    assert next(it) == (0, {"a": 1})
    assert next(it) == (1, {"a": 2})
    with pytest.raises(JsonStreamError, match=r"cut.json:1:\d+: invalid JSON"):
        next(it)


def test_bad_syntax_reports_line_and_column_like_json(fixtures_dir) -> None:
    path = fixtures_dir / "sharegpt_bad_syntax.json"
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(path.read_text())
    for chunk in (5, 1 << 20):
        with pytest.raises(JsonStreamError) as err:
            list(iter_array(path, chunk=chunk))
        assert (err.value.line, err.value.col) == (ref.value.lineno, ref.value.colno) == (3, 12)
        assert "sharegpt_bad_syntax.json:3:12" in str(err.value) and "delimiter" in str(err.value)


def test_sections_stream_with_empty_and_trailing_space_names(fixtures_dir) -> None:
    path = fixtures_dir / "sections_good.json"
    expected = json.loads(path.read_text())
    seen = {}
    for key, items in iter_sections(path, chunk=7):
        seen[key] = [rec for _, rec in items]
    assert seen == expected
    assert "Facial Characteristics Short " in seen and seen["Multi-Person Interaction"] == []
    # skipping a section's items entirely still leaves the reader on the next section
    keys = [key for key, _ in iter_sections(path, chunk=7)]
    assert keys == list(expected)
    assert dict(iter_object(path, chunk=7)) == expected


def test_top_level_kind_and_wrong_shape_errors(fixtures_dir, tmp_path) -> None:
    assert top_level_kind(fixtures_dir / "sharegpt_good.json") == "array"
    assert top_level_kind(fixtures_dir / "sections_good.json") == "object"
    with pytest.raises(JsonShapeError, match="holds a JSON object, but a JSON list .* is expected") as err:
        list(iter_array(fixtures_dir / "sections_good.json"))
    assert "invalid JSON" not in str(err.value) and "facegpt4vision builder" in str(err.value)
    with pytest.raises(JsonShapeError, match="holds a JSON list, but a JSON object") as err:
        list(iter_sections(fixtures_dir / "sharegpt_good.json"))
    assert "invalid JSON" not in str(err.value) and "sharegpt_face builder" in str(err.value)
    assert layout_problem(fixtures_dir / "sharegpt_good.json", "array") is None
    assert "holds a JSON list" in layout_problem(fixtures_dir / "sharegpt_good.json", "object")
    extra = tmp_path / "extra.json"
    extra.write_text("[1, 2]\n[3]")
    with pytest.raises(JsonStreamError, match=r"extra.json:2:1: .*extra data"):
        list(iter_array(extra))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf[1]")
    assert list(iter_array(bom)) == [(0, 1)]


@pytest.mark.parametrize("text, where, fix", [
    ('[{"a": 1},\n {"b": 2},\n]', "3:1", TRAILING_COMMA_FIX),  # trailing comma in a list
    ('{"S": [],\n "T": [],\n}', "3:1", TRAILING_COMMA_FIX),  # ... and in a section object
    ('[{"a": 1},\n {"b": 2', "2:9", TRUNCATED_FIX),  # cut inside a record
    ('[{"a": 1},\n {"b": "some te', "2:8", TRUNCATED_FIX),  # cut inside a string
    ('[{"a": 1},\n ', "2:2", TRUNCATED_FIX),  # cut between records
])
def test_errors_say_where_and_how_to_fix(tmp_path, text: str, where: str, fix: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(text)
    reader = iter_sections if text.startswith("{") else iter_array
    for chunk in (3, 1 << 20):
        with pytest.raises(JsonStreamError) as err:
            list(reader(path, chunk=chunk))
        assert str(err.value).startswith(f"{path}:{where}: invalid JSON: ") and str(err.value).endswith(fix)
        assert is_user_error(err.value)


def test_a_syntax_error_inside_the_file_is_not_called_truncated(tmp_path) -> None:
    path = tmp_path / "f.json"
    path.write_text('[1, 2, x, 4]')
    with pytest.raises(JsonStreamError, match=r"f.json:1:8: invalid JSON: Expecting value. Fix: correct the file"):
        list(iter_array(path))


def test_empty_and_non_utf8_files_are_named(tmp_path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    for read in (iter_array, iter_sections, top_level_kind):
        with pytest.raises(JsonStreamError, match=r"empty.json:1:1: invalid JSON: the file is empty"):
            list(read(empty)) if read is not top_level_kind else read(empty)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'[{"a": 1},\n {"b": "caf\xe9"}]')
    for read in (iter_array, top_level_kind):
        with pytest.raises(JsonStreamError, match=r"latin1.json:2:12: .*byte 0xe9 \(byte offset 22\) is not UTF-8 "
                                                  r"text. Fix: save the file as UTF-8"):
            list(read(latin1)) if read is not top_level_kind else read(latin1)
