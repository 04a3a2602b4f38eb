"""The interactive demo driven through a pseudo-terminal, as a user at a terminal would drive it.

The demo runs as a real process whose standard input, output and error are the slave side of a pty (so
``isatty()`` is true, ``readline`` is active and Ctrl-C typed as ``\\x03`` reaches it as SIGINT); the test types on
the master side and reads what the terminal shows.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import List

import pytest

from minigpt4.conversation.cli import escape_controls

from chat_demo_helpers import DEMO, TINY_EVAL, demo_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[=>]|\r")
PROMPT = "You: "


def _take_terminal() -> None:
    """In the child (a new session): make the pty on stdin its controlling terminal, so Ctrl-C sends SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A demo process on a pty: ``send`` types a line, ``expect`` waits for text (escape codes removed)."""

    def __init__(self, args: List[str], home: Path) -> None:
        self.master, slave = os.openpty()
        env = demo_env(home)
        env["TERM"] = "dumb"
        self.proc = subprocess.Popen([sys.executable, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=str(home), start_new_session=True, close_fds=True,
                                     preexec_fn=_take_terminal)
        os.close(slave)
        self.screen = ""
        self.mark = 0

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the process ended and the pty closed
                data = b""
            self.screen += ANSI.sub("", data.decode("utf-8", errors="replace"))

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """Wait until ``pattern`` (regex) appears after the last match; returns the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.S)
        while True:
            match = regex.search(self.screen, self.mark)
            if match:
                self.mark = match.end()
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen:\n{self.screen[self.mark:]}")
            self.read(0.2)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        self.read(0.1)
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


@pytest.fixture()
def terminal(request: pytest.FixtureRequest):
    made: List[Terminal] = []

    def start(args: List[str], home: Path) -> Terminal:
        made.append(Terminal(args, home))
        return made[-1]

    yield start
    for term in made:
        term.close()


def _answer(term: Terminal, question: str) -> str:
    """Ask and return the answer line the terminal shows."""
    term.line(question)
    return term.expect(r"Assistant: ([^\n]*)\n")[1].strip()


def test_load_ask_twice_reset_ask_quit(terminal, tiny_options: List[str], face_image: Path, other_face_image: Path,
                                       tmp_path: Path) -> None:
    term = terminal([str(DEMO["minigpt_v2"]), "--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options",
                     *tiny_options, "--max-new-tokens", "12", "--image", str(tmp_path / "typo.png"), "-q"], tmp_path)
    term.expect(r"FaceGPT chat \(minigptv2 template\)\. /help for commands\.\n")
    term.expect(r"error: image file not found: .*typo\.png\n")  # a bad --image: a message, the chat goes on
    term.expect(r"No image loaded yet: /image PATH loads one\.\n" + PROMPT)
    term.line("Who is this?")  # no image yet: a message, then the prompt again
    term.expect(r"error: no image loaded: load one first.*" + PROMPT)
    term.line(f"/image {tmp_path / 'missing.png'}")
    term.expect(r"error: image file not found: .*missing\.png.*" + PROMPT)
    term.line(f"/image {face_image}")
    term.expect(r"Loaded .*face\.png; new conversation\..*" + PROMPT)
    first = _answer(term, "What is in the picture?")
    second = _answer(term, "And what else?")
    term.expect(PROMPT)
    term.line("/reset")
    term.expect(r"New conversation about .*face\.png\..*" + PROMPT)
    again = _answer(term, "What is in the picture?")
    assert again == first, "after /reset the same question about the same image gets the same (greedy) answer"
    term.line("/show")
    shown = term.expect(r"\[image: [^\n]*face\.png\]\nYou: What is in the picture\?\nAssistant: ([^\n]*)\n")[1]
    assert shown.strip() == again, "the transcript holds only the conversation since /reset"
    term.expect(PROMPT)
    term.line(f"/save {tmp_path / 'chat.json'}")
    term.expect(r"Saved the transcript to .*chat\.json\.")
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [t["user"] for t in saved["turns"]] == ["What is in the picture?"]
    assert escape_controls(saved["turns"][0]["assistant"]) == again, "saved as generated, shown escaped"
    assert saved["template"] == "minigptv2" and saved["settings"]["max_new_tokens"] == 12
    term.line("/set temperature=hot")
    term.expect(r"error: temperature must be a number, got 'hot'.*" + PROMPT)
    term.line("/set max_new_tokens=3")
    term.expect(r"max_new_tokens=3 .*" + PROMPT)
    term.line("/frobnicate")
    term.expect(r"error: unknown command /frobnicate; /help lists the commands.*" + PROMPT)
    term.line(f"/image {other_face_image}")  # a path with a space
    term.expect(r"Loaded .*other face\.jpg; new conversation\.")
    term.line("/quit")
    assert term.wait() == 0
    assert first and second
    history = (tmp_path / ".cache" / "facegpt" / "chat_history").read_text()
    assert "What is in the picture?" in history and "/reset" in history


def test_ctrl_c_stops_an_answer_then_leaves_at_the_prompt(terminal, tiny_options: List[str], face_image: Path,
                                                          tmp_path: Path) -> None:
    term = terminal([str(DEMO["minigpt4"]), "--cfg-path", str(TINY_EVAL["minigpt4"]), "--options", *tiny_options,
                     "--image", str(face_image), "--max-new-tokens", "3800", "--max-length", "3950", "-q"], tmp_path)
    term.expect(r"\(vicuna0 template\)\. /help for commands\.\nLoaded .*face\.png; new conversation\.\n" + PROMPT)
    term.line("Tell me a very long story.")
    term.expect(r"Assistant: \S")  # tokens are arriving
    term.send("\x03")  # Ctrl-C typed at the terminal: SIGINT
    term.expect(r" \[stopped\]\n" + PROMPT, timeout=30)
    term.line("/show")
    shown = term.expect(r"You: Tell me a very long story\.\nAssistant: ([^\n]*)\n")[1]
    assert 0 < len(shown) < 3800, "the partial answer is kept"
    term.expect(PROMPT)
    term.send("\x03")  # Ctrl-C at the prompt leaves cleanly
    assert term.wait() == 0
    assert "Traceback" not in term.screen


# surrogateescape is the slow-marked twin: the same replacement through the other error mode (each case starts a chat
# process, about 30 s on 2 cores)
@pytest.mark.parametrize("errors", ["strict", pytest.param("surrogateescape", marks=pytest.mark.slow)])
def test_bytes_that_are_not_utf8_and_empty_questions_keep_the_chat_alive(
        terminal, errors: str, tiny_options: List[str], face_image: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A typed byte that is not UTF-8 (a terminal set to another encoding) is replaced by U+FFFD, whatever
    error mode the locale gives standard input; a question with nothing visible is refused; the chat goes on."""
    monkeypatch.setenv("PYTHONIOENCODING", f"utf-8:{errors}")
    term = terminal([str(DEMO["minigpt_v2"]), "--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options",
                     *tiny_options, "--image", str(face_image), "--max-new-tokens", "4", "-q"], tmp_path)
    term.expect(r"Loaded .*face\.png; new conversation\.\n" + PROMPT)
    term.line("\u200b")  # a zero-width space: nothing to ask
    term.expect(r"error: the question is empty \(nothing visible to ask\); type a question, or /help\n" + PROMPT)
    os.write(term.master, b"caf\xff au lait?\r")  # 0xff is never UTF-8; readline passes it on
    term.expect(r"error: note: bytes that are not UTF-8 text were replaced by U\+FFFD\n")
    term.expect(r"Assistant: [\s\S]*?\n" + PROMPT)  # the answer (it may span lines), then the prompt again
    term.line("/show")
    term.expect("You: caf\ufffd au lait\\?\n")
    term.line("/quit")
    assert term.wait() == 0
    assert "Traceback" not in term.screen and "pybind11" not in term.screen
