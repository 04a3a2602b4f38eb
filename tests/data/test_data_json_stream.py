"""Streaming JSON readers against json.load, including strings that look like structure."""

from __future__ import annotations

import json

import pytest

from minigpt4.datasets.json_stream import JsonStreamError, iter_array, iter_object, iter_sections, top_level_kind


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
    with pytest.raises(JsonStreamError, match="expected a JSON array"):
        list(iter_array(fixtures_dir / "sections_good.json"))
    extra = tmp_path / "extra.json"
    extra.write_text("[1, 2]\n[3]")
    with pytest.raises(JsonStreamError, match=r"extra.json:2:1: .*extra data"):
        list(iter_array(extra))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf[1]")
    assert list(iter_array(bom)) == [(0, 1)]
