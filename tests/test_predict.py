"""``facegpt-predict`` on the tiny MiniGPT-v2: answers equal the API's batched predict, bad lines and images are
reported with their line numbers and skipped (exit status 3), a re-run answers only the ids not yet in the output.

The first run builds the model through the command line's real path (``load_model`` of ``--cfg-path``); later runs
in this module reuse that built model (same config and options) so that the file stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

import minigpt4.api
from api_helpers import QUESTIONS, TINY_EVAL, face_picture, tiny_options
from minigpt4.tools import predict

NEW_TOKENS = 8


@pytest.fixture(scope="module")
def built() -> Dict[Any, Any]:
    return {}


@pytest.fixture()
def reuse_model(built: Dict[Any, Any], monkeypatch: pytest.MonkeyPatch) -> Dict[Any, Any]:
    """``load_model`` called once per (config, options, device); the command line gets that model each time."""
    real = minigpt4.api.load_model

    def load_once(cfg: Any, options: Any = None, device: Any = None, settings: Any = None) -> Any:
        key = (str(cfg), tuple(options or ()), str(device))
        if key not in built:
            built[key] = real(cfg, options, device, settings)
        return built[key]

    monkeypatch.setattr(minigpt4.api, "load_model", load_once)
    return built


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """Three faces in ``tmp_path/img`` and a bad picture."""
    (tmp_path / "img").mkdir()
    for i, name in enumerate(("a.png", "b.jpg", "c.png")):
        face_picture(tmp_path / "img" / name, i + 1)
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def _write_jsonl(path: Path, lines: List[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _argv(llama: Path, inp: Path, out: Path, *extra: str) -> List[str]:
    return ["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options", *tiny_options(llama), "--input", str(inp),
            "--output", str(out), "--device", "cpu", "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "2",
            "--no-progress", *extra]


def _read(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


GOOD = [{"id": "a", "image": "img/a.png", "question": QUESTIONS[0]},
        {"id": 2, "image": "img/b.jpg", "question": QUESTIONS[1]},
        {"id": "c", "image": "img/c.png", "question": QUESTIONS[2]}]


def test_answers_equal_the_api_and_bad_lines_are_reported(data: Path, tiny_llama_dir: Path, reuse_model: Dict,
                                                          capsys: pytest.CaptureFixture) -> None:
    lines: List[Any] = [GOOD[0], "{\"id\": \"x\", \"image\": ", GOOD[1],
                        {"id": "a", "image": "img/c.png", "question": "again?"},
                        {"id": "m", "question": "where is the image?"},
                        {"id": "bad", "image": "img/broken.jpg", "question": "Who?"},
                        "", GOOD[2], {"id": "gone", "image": "img/none.png", "question": "Who?"}]
    inp = _write_jsonl(data / "questions.jsonl", lines)
    out = data / "answers.jsonl"
    assert predict.main(_argv(tiny_llama_dir, inp, out)) == predict.EXIT_SKIPPED
    err = capsys.readouterr().err
    for line, reason in ((2, "invalid JSON"), (4, "duplicate id 'a' (first on line 1)"),
                         (5, "missing field(s) image"), (6, "cannot decode image"),
                         (9, f"image file not found: {data / 'img' / 'none.png'}")):
        assert f"{inp}:{line}: {reason}" in err
    assert "answered 3, skipped 5 (line(s) 2, 4, 5, 6, 9)" in err

    rows = _read(out)
    assert [r["id"] for r in rows] == ["a", 2, "c"]
    model = next(iter(reuse_model.values()))
    expected = model.predict([data / g["image"] for g in GOOD], [g["question"] for g in GOOD],
                             max_new_tokens=NEW_TOKENS)
    assert [r["answer"] for r in rows] == expected
    assert all(isinstance(r["tokens"], int) and 0 <= r["tokens"] <= NEW_TOKENS and r["seconds"] > 0 for r in rows)


def test_a_rerun_answers_only_the_missing_ids(data: Path, tiny_llama_dir: Path, reuse_model: Dict,
                                              capsys: pytest.CaptureFixture) -> None:
    inp = _write_jsonl(data / "questions.jsonl", GOOD)
    out = data / "answers.jsonl"
    assert predict.main(_argv(tiny_llama_dir, inp, out, "--limit", "1")) == predict.EXIT_OK
    first = out.read_text()
    assert [r["id"] for r in _read(out)] == ["a"]
    with out.open("a") as handle:
        handle.write('{"id": "c", "answ')  # a line cut by a crash: not finished, answered again
    assert predict.main(_argv(tiny_llama_dir, inp, out, "--image-root", str(data))) == predict.EXIT_OK
    assert "3 valid line(s), 1 already answered or left for later, 2 to answer" in capsys.readouterr().err
    assert out.read_text().startswith(first)
    rows = [r for r in (json.loads(x) for x in out.read_text().splitlines()[2:])]
    assert [r["id"] for r in rows] == [2, "c"]
    assert predict.main(_argv(tiny_llama_dir, inp, out)) == predict.EXIT_OK  # all done: nothing to build
    assert "0 to answer" in capsys.readouterr().err and len(out.read_text().splitlines()) == 4


def test_unusable_input_is_one_line_exit_2(tmp_path: Path, tiny_llama_dir: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nothing.jsonl"
    assert predict.main(_argv(tiny_llama_dir, missing, tmp_path / "out.jsonl")) == 2
    assert capsys.readouterr().err.strip() == \
        f"facegpt-predict: --input {missing}: no such file (a JSONL file of id/image/question lines)"
    inp = _write_jsonl(tmp_path / "q.jsonl", GOOD)
    assert predict.main(_argv(tiny_llama_dir, inp, tmp_path / "o.jsonl", "--max-new-tokens", "0")) == 2
    assert "max_new_tokens must be >= 1" in capsys.readouterr().err
