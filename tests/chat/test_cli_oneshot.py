"""One-shot mode of the demos (``--prompt`` or questions on standard input) and their one-line errors."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import pytest
import sentencepiece
import torch

from minigpt4.conversation.cli import (
    V1_DEMO,
    V2_DEMO,
    InteractiveChat,
    build_parser,
    clean_question,
    escape_controls,
    is_blank,
    run_demo,
)
from minigpt4.conversation.session import ChatSession

from chat_demo_helpers import DEMO, TINY_EVAL, run_demo_subprocess

SPECS = {"minigpt4": V1_DEMO, "minigpt_v2": V2_DEMO}


def _load_script(arch: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(DEMO[arch].stem, DEMO[arch])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(arch: str, args: List[str], stdin: str = "") -> tuple:
    out, err = io.StringIO(), io.StringIO()
    status = run_demo(SPECS[arch], args, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_importing_the_scripts_does_nothing(capsys: pytest.CaptureFixture) -> None:
    for arch in DEMO:
        module = _load_script(arch)
        assert callable(module.main)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("arch", ["minigpt4", "minigpt_v2"])
def test_main_prints_exactly_the_engine_answers(arch: str, tiny_options: List[str], face_image: Path,
                                                tiny_chats: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    """main([...]) in-process: the answers on stdout, nothing else; they are the chat engine's answers."""
    argv = ["--cfg-path", str(TINY_EVAL[arch]), "--options", *tiny_options, "--image", str(face_image), "--device",
            "cpu", "--max-new-tokens", "10", "--prompt", "Describe the face.", "--prompt", "Is the person smiling?"]
    torch.manual_seed(0)  # the tiny vision tower is random: build it as the tiny_chats fixture did
    status = _load_script(arch).main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    session = ChatSession(tiny_chats[arch])
    session.load_image(face_image)
    expected = [session.ask(q, max_new_tokens=10).text for q in ("Describe the face.", "Is the person smiling?")]
    assert out == "".join(escape_controls(a) + "\n" for a in expected)  # random weights emit control characters
    assert "Traceback" not in err


def test_questions_from_stdin_as_json_lines(tiny_options: List[str], face_image: Path) -> None:
    args = ["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options", *tiny_options, "--image", str(face_image),
            "--max-new-tokens", "6", "--format", "jsonl", "--independent", "-q"]
    status, out, err = _run("minigpt_v2", args, stdin="How old?\n\n  How old?  \nAnything else?\n")
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in records] == ["How old?", "How old?", "Anything else?"]
    assert records[0]["answer"] == records[1]["answer"], "--independent: the same question, the same fresh answer"
    assert err == ""


@pytest.mark.slow  # ~35 s on 2 cores (a whole Python process); main(argv) is covered in-process above, and the
# script as a process by the interactive pty tests
def test_demo_script_as_a_subprocess(tiny_options: List[str], face_image: Path, tmp_path: Path) -> None:
    args = ["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options", *tiny_options, "--image", str(face_image),
            "--max-new-tokens", "8", "--prompt", "What is in the image?"]
    done = run_demo_subprocess("minigpt_v2", args, tmp_path)
    assert done.returncode == 0, done.stderr
    # answers only: one answer ending in a newline (random tiny weights may emit control characters, so the
    # answer is not split on them)
    assert done.stdout.endswith("\n") and done.stdout.strip()
    assert "Traceback" not in done.stderr and "conversation template: minigptv2" in done.stderr


# ------------------------------------------------------------------------------------- errors

def _bad_inputs(tiny_llama_dir: Path, face_image: Path, not_an_image: Path, tmp_path: Path) -> list:
    v2, v1 = str(TINY_EVAL["minigpt_v2"]), str(TINY_EVAL["minigpt4"])
    ok = f"model.llama_model={tiny_llama_dir}"
    weightless = tmp_path / "empty_llm"
    weightless.mkdir()
    return [
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "--image", str(tmp_path / "missing.jpg")], 2,
         f"error: image file not found: {tmp_path / 'missing.jpg'}"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "--image", str(tmp_path)], 2,
         f"error: --image {tmp_path} is a folder, not an image file"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "--image", str(not_an_image)], 2,
         f"error: cannot decode image {not_an_image}"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, f"model.ckpt={tmp_path / 'ckpt.pth'}",
                        "--image", str(face_image)], 2,
         f"model.ckpt: file does not exist: {tmp_path / 'ckpt.pth'}"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", f"model.llama_model={tmp_path / 'no_llm'}",
                        "--image", str(face_image)], 2,
         f"model.llama_model: file or folder does not exist: {tmp_path / 'no_llm'}"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", f"model.llama_model={weightless}", "--image",
                        str(face_image)], 2, "has no config.json"),
        ("minigpt_v2", ["--cfg-path", v2, "--image", str(face_image)], 2,
         "model.llama_model: required value is not set"),
        ("minigpt_v2", ["--cfg-path", v1, "--options", ok, "--image", str(face_image)], 2,
         "is a model.arch=minigpt4 config; this demo runs minigpt_v2: use demo_v1_command_line.py"),
        ("minigpt4", ["--cfg-path", v2, "--options", ok, "--image", str(face_image)], 2,
         "is a model.arch=minigpt_v2 config; this demo runs minigpt4: use demo_v2_command_line.py"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok], 2, "one-shot mode (--prompt or questions on standard "
                                                               "input) needs --image PATH"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "--image", str(face_image), "--temperature", "0"], 2,
         "temperature must be > 0"),
        ("minigpt_v2", ["--cfg-path", str(tmp_path / "nope.yaml"), "--image", str(face_image)], 2,
         "YAML file not found"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "model.lora_target_modules=[q_proj, v_proj",
                        "--image", str(face_image)], 2,
         "'model.lora_target_modules=[q_proj, v_proj': the value of model.lora_target_modules is not valid YAML"),
        ("minigpt_v2", ["--cfg-path", v2, "--options", ok, "--image", str(face_image), "--prompt", " \u200b "], 2,
         "--prompt #1 is empty (nothing visible to ask); give a question"),
    ]


def test_each_bad_input_gives_one_line_and_a_nonzero_exit(tiny_llama_dir: Path, face_image: Path,
                                                          not_an_image: Path, tmp_path: Path) -> None:
    for arch, args, status, message in _bad_inputs(tiny_llama_dir, face_image, not_an_image, tmp_path):
        got, out, err = _run(arch, [*args, "--prompt", "hi", "-q"])
        lines = err.strip().splitlines()
        assert got == status, f"{args}: status {got}, stderr {err!r}"
        assert out == "", f"{args}: nothing on stdout, got {out!r}"
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)


def test_debug_lets_the_exception_through(tiny_llama_dir: Path, not_an_image: Path) -> None:
    from minigpt4.processors.image_io import ImageOpenError

    with pytest.raises(ImageOpenError, match="cannot decode image"):
        run_demo(V2_DEMO, ["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options",
                           f"model.llama_model={tiny_llama_dir}", "--image", str(not_an_image), "--prompt", "hi",
                           "--debug", "-q"], stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO())


def test_interactive_loop_ends_cleanly_at_eof(tiny_chats: Dict[str, Any], face_image: Path, tmp_path: Path) -> None:
    """The loop itself (read from a non-terminal stream here): EOF leaves with status 0 after answering."""
    out, err = io.StringIO(), io.StringIO()
    loop = InteractiveChat(ChatSession(tiny_chats["minigpt_v2"]), out, err, str(tmp_path / "hist"),
                           stdin=io.StringIO(f"/image {face_image}\n/set max_new_tokens=5\nWhat is this?\n"
                                             f"/save {tmp_path / 'chat.txt'}\n"))
    assert loop.run() == 0
    text = out.getvalue()
    saved = (tmp_path / "chat.txt").read_text().splitlines()
    assert saved[:2] == [f"[image: {face_image}]", "You: What is this?"]
    assert saved[2] == f"Assistant: {loop.session.conv.messages[-1][1]}"
    assert f"Loaded {face_image}; new conversation." in text and "max_new_tokens=5" in text
    answer = text.split("Assistant: ", 1)[1].splitlines()[0]
    assert answer == loop.session.conv.messages[-1][1] and err.getvalue() == ""
    assert text.rstrip().endswith("You:"), "EOF at the prompt ends the loop"


# ------------------------------------------------------------------------------- text in and out

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_text_helpers() -> None:
    assert escape_controls("a\x1b[31mred\x1b[0m\r\nb\tc\x07\x85\u202eZ") == \
        "a\\x1b[31mred\\x1b[0m\\r\nb\tc\\x07\\x85\\u202eZ"
    assert clean_question("caf\udce9?") == ("caf\ufffd?", True)  # the byte 0xe9 read with surrogateescape
    assert clean_question("x\ud800y") == ("x\ufffdy", True) and clean_question("Why?") == ("Why?", False)
    assert is_blank("") and is_blank(" \t\u200b\u00a0\x00") and not is_blank(" a ")


def test_bytes_that_are_not_utf8_on_stdin_are_replaced_and_answered(tiny_options: List[str], face_image: Path,
                                                                     tiny_chats: Dict[str, Any]) -> None:
    """A strict UTF-8 stream (as a UTF-8 locale gives) with a Latin-1 byte in the first question: both questions
    are answered, the first with U+FFFD in place of the byte, and the note says so on stderr."""
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait?\nIs the person smiling?\n"), encoding="utf-8",
                             errors="strict")
    out, err = io.StringIO(), io.StringIO()
    args = ["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options", *tiny_options, "--image", str(face_image),
            "--max-new-tokens", "5", "--format", "jsonl", "--independent"]
    torch.manual_seed(0)
    status = run_demo(V2_DEMO, args, stdin=stdin, stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["question"] for r in records] == ["caf\ufffd au lait?", "Is the person smiling?"]
    assert all(r["answer"] for r in records)
    assert "standard input line 1: bytes that are not UTF-8 text were replaced by U+FFFD" in err.getvalue()
    assert "Traceback" not in err.getvalue()


@pytest.fixture(scope="module")
def control_char_chat(tiny_cfg: Any, tokenizer_model_path: Path) -> Any:
    """A tiny v1 chat whose LLM head always prefers ESC, then CR, then TAB, then a word: its greedy answers are
    made of control characters and text (the head gets a bias; everything else is the real tiny model)."""
    from minigpt4.conversation.factory import build_model, chat_from_config

    cfg = tiny_cfg("minigpt4")
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu"))
    llm = model.llama_model
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_model_path))  # the tiny LLM's vocabulary
    head = llm.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        ids = [pieces.piece_to_id(p) for p in ("<0x1B>", "<0x0D>", "<0x09>")] + [pieces.encode("face")[-1]]
        for rank, token_id in enumerate(ids):
            biased.bias[token_id] = 10.0 - rank
    llm.set_output_embeddings(biased)
    return chat_from_config(cfg, "cpu", model=model)


def test_control_characters_in_answers_are_escaped_on_the_terminal(control_char_chat: Any, face_image: Path,
                                                                    tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    loop = InteractiveChat(ChatSession(control_char_chat), out, err, str(tmp_path / "hist"),
                           stdin=io.StringIO(f"/image {face_image}\n/set max_new_tokens=6 repetition_penalty=2\n"
                                             f"Describe the face.\n/show\n/save {tmp_path / 'chat.json'}\n"))
    assert loop.run() == 0, err.getvalue()
    answer = loop.session.turns()[-1]["assistant"]
    assert "\x1b" in answer and "\r" in answer and "\t" in answer, f"the biased head answers {answer!r}"
    shown = out.getvalue()
    assert not CONTROL.search(shown), "no raw control character reaches the terminal"
    assert f"Assistant: {escape_controls(answer)}\n" in shown, "the streamed answer, escaped"
    assert shown.count(escape_controls(answer)) == 2, "/show escapes the transcript too"
    assert "\\x1b" in shown and "\t" in shown, "escape shown as text; tabs kept"
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["turns"][0]["assistant"] == answer, "the saved transcript keeps the real answer"


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_one_shot_answers_escape_control_characters(control_char_chat: Any, face_image: Path, fmt: str) -> None:
    from minigpt4.conversation.cli import _run_one_shot

    session = ChatSession(control_char_chat)
    session.load_image(face_image)
    args = build_parser(V1_DEMO).parse_args(["--prompt", "Describe the face.", "--format", fmt,
                                             "--max-new-tokens", "6"])
    out = io.StringIO()
    assert _run_one_shot(session, args, io.StringIO(), out) == 0
    answer = session.turns()[-1]["assistant"]
    assert "\x1b" in answer and not CONTROL.search(out.getvalue())
    if fmt == "text":
        assert out.getvalue() == escape_controls(answer) + "\n"
    else:
        assert json.loads(out.getvalue()) == {"question": "Describe the face.", "answer": answer}


def test_interactive_loop_refuses_an_empty_question_and_replaces_bad_bytes(tiny_chats: Dict[str, Any],
                                                                           face_image: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    loop = InteractiveChat(ChatSession(tiny_chats["minigpt_v2"]), out, err, str(tmp_path / "hist"),
                           stdin=io.StringIO(f"/image {face_image}\n/set max_new_tokens=4\n\u200b\x00\n"
                                             "caf\udce9?\n"))
    assert loop.run() == 0
    assert err.getvalue().splitlines() == [
        "error: the question is empty (nothing visible to ask); type a question, or /help",
        "error: note: bytes that are not UTF-8 text were replaced by U+FFFD"]
    assert out.getvalue().count("Assistant: ") == 1 and loop.session.turns()[-1]["user"] == "caf\ufffd?"
