"""The web chat (``demo_web.py``) driven in a real headless Chromium through Selenium, on the tiny model.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them it is
skipped with the install command. The driver is given by path, so Selenium Manager downloads nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("gradio", reason="the web chat needs gradio: pip install -e '.[web]'")

from minigpt4.conversation.cli import escape_controls  # noqa: E402
from minigpt4.web.app import WebApp, create_app, launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_EVAL = {"minigpt4": REPO / "eval_configs" / "tiny_minigpt4_eval.yaml",
             "minigpt_v2": REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"}
INSTALL = "apt-get install chromium chromium-driver"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 90.0  # bound of every wait on the page (generation on the tiny model takes well under a second)
SETTINGS = {"max_new_tokens": 24}  # what the test types into the page's settings, and asks the engine with
QUESTIONS = ["Describe the person's face.", "How old does the person look?"]


def draw_face(path: Path) -> Path:
    """A small synthetic face (skin oval, eyes, mouth) on a noisy background."""
    rng = np.random.default_rng(7)
    background = rng.integers(30, 90, size=(96, 80, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    pen = ImageDraw.Draw(img)
    pen.ellipse((14, 10, 66, 86), fill=(224, 172, 140))
    pen.ellipse((26, 36, 34, 44), fill=(40, 30, 30))
    pen.ellipse((46, 36, 54, 44), fill=(40, 30, 30))
    pen.rectangle((30, 64, 50, 68), fill=(150, 50, 60))
    img.save(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def face_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_face(tmp_path_factory.mktemp("web_faces") / "face.png")


@pytest.fixture(scope="module")
def tiny_app(tiny_llama_dir: Path) -> Callable[[str], WebApp]:
    """``tiny_app(arch)`` → the web app built by :func:`create_app` on the tiny model (built once per arch)."""
    apps: Dict[str, WebApp] = {}

    def make(arch: str) -> WebApp:
        if arch not in apps:
            torch.manual_seed(0)
            apps[arch] = create_app(str(TINY_EVAL[arch]), [f"model.llama_model={tiny_llama_dir}"], device="cpu")
        return apps[arch]

    return make


def engine_answers(app: WebApp, image: Path, questions: List[str]) -> List[str]:
    """The chat engine's own answers (a fresh session, as the CLI asks) to ``questions`` in one conversation, as the
    CLI prints them (control characters escaped)."""
    session = app.web.new_session()
    session.load_image(image)
    return [escape_controls(session.ask(q, **app.web.settings_overrides(dict(SETTINGS))).text) for q in questions]


# ------------------------------------------------------------------------------- without a browser


@pytest.mark.parametrize("arch", ["minigpt4", "minigpt_v2"])
def test_page_actions_stream_the_engine_answer_for_v1_and_v2(arch: str, tiny_app: Callable[[str], WebApp],
                                                            face_png: Path) -> None:
    """The page's actions (what the Gradio events call): load, ask twice, reset; the streamed history ends with the
    engine's answers, and its partial states grow by prefixes."""
    app = tiny_app(arch)
    expected = engine_answers(app, face_png, QUESTIONS)
    web = app.web
    state, history, note = web.load_image(None, Image.open(face_png))
    assert history == [] and note.startswith("Image loaded")
    for turn, question in enumerate(QUESTIONS):
        updates = list(web.answer(state, question, dict(SETTINGS)))
        shown = [h[-1]["content"] for _, h, _ in updates]
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:])), shown
        state, history, note = updates[-1]
        assert note == "Done."
        assert [m["role"] for m in history] == ["user", "assistant"] * (turn + 1)
        assert history[-2]["content"] == question and history[-1]["content"] == expected[turn]
    state, history, note = web.reset(state)
    assert history == [] and state.session.has_image
    *_, (state, history, _) = web.answer(state, QUESTIONS[0], dict(SETTINGS))
    assert history[-1]["content"] == expected[0]  # the reset dropped the first conversation


def test_page_refuses_questions_without_image_or_text(tiny_app: Callable[[str], WebApp], face_png: Path) -> None:
    from minigpt4.conversation.session import NoImageError
    from minigpt4.conversation.generation import SettingsError

    web = tiny_app("minigpt_v2").web
    with pytest.raises(NoImageError, match="no image loaded"):
        list(web.answer(None, "Who is this?", dict(SETTINGS)))
    state, _, _ = web.load_image(None, face_png)
    with pytest.raises(Exception, match="question is empty"):
        list(web.answer(state, "  \u200b ", dict(SETTINGS)))
    with pytest.raises(SettingsError, match="top_p"):
        list(web.answer(state, "Who is this?", {"top_p": 0.0}))
    with pytest.raises(SettingsError, match="seed must be a whole number"):
        list(web.answer(state, "Who is this?", {"do_sample": True, "seed": "abc"}))
    assert state.session.turns() == []  # nothing half-asked stays in the conversation


def _load_demo_web() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_web", REPO / "demo_web.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_importing_demo_web_does_nothing(capsys: pytest.CaptureFixture) -> None:
    assert callable(_load_demo_web().main) and capsys.readouterr() == ("", "")


def test_demo_web_reports_user_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """demo_web.py's main: a missing config and a bad port are one line on stderr and exit status 2."""
    main = _load_demo_web().main
    for args, needle in ((["--cfg-path", str(tmp_path / "missing.yaml")], "missing.yaml: no such file"),
                         (["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--port", "0"], "--port 0 is not a port")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("demo_web.py: ") and needle in err[-1], err


# -------------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's chromium + chromium-driver), driver given by path: nothing is downloaded."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: "
                                    "pip install -e '.[dev]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not CHROMEDRIVER.is_file():
        pytest.skip(f"no Chromium or chromedriver (/usr/bin/chromium, {CHROMEDRIVER}); install them: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served_v2(tiny_app: Callable[[str], WebApp]) -> Iterator[tuple]:
    """The tiny v2 web chat served on a free localhost port."""
    app = tiny_app("minigpt_v2")
    url = launch(app, "127.0.0.1", free_port(), block=False, quiet=True)
    try:
        yield app, url
    finally:
        app.blocks.close()


def _wait(driver: Any, what: str, condition: Callable[[], Any]) -> Any:
    """Poll ``condition`` until it returns something truthy, at most :data:`WAIT_S` seconds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the element may be re-rendered between look-ups
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {WAIT_S:.0f} s waiting for {what}; page text:\n"
                         f"{driver.find_element('tag name', 'body').text[:3000]}")


def _messages(driver: Any) -> List[Dict[str, str]]:
    """The chat messages shown, read from the page (role from the message's test id)."""
    script = """
        return Array.from(document.querySelectorAll('#facegpt-chatbot [data-testid="user"],'
                                                   + ' #facegpt-chatbot [data-testid="bot"]'))
            .map(e => ({role: e.getAttribute('data-testid'), content: e.innerText}));"""
    return driver.execute_script(script)


def _status(driver: Any) -> str:
    return driver.find_element("css selector", "#facegpt-status").text.strip()


def _ask(driver: Any, question: str) -> None:
    box = driver.find_element("css selector", "#facegpt-question textarea")
    box.clear()
    box.send_keys(question)
    driver.find_element("css selector", "#facegpt-send").click()


def _set_number(driver: Any, elem_id: str, value: int) -> None:
    """Type ``value`` into a slider's number box (inside the closed settings accordion: open it first)."""
    selector = f"#{elem_id} input[type=number]"
    if not driver.find_elements("css selector", selector):
        driver.find_element("css selector", "#facegpt-settings button").click()
    field = _wait(driver, "the settings to open", lambda: [f for f in driver.find_elements("css selector", selector)
                                                           if f.is_displayed()])[0]
    field.clear()
    field.send_keys(str(value), "\t")


def _watch_last_answer(driver: Any) -> None:
    """Record every text the last assistant message shows, as ``"<number of answers>:<text>"`` (to see the answer
    arrive in pieces)."""
    driver.execute_script("""
        window.__seen = [];
        const box = document.querySelector('#facegpt-chatbot');
        new MutationObserver(() => {
            const bots = box.querySelectorAll('[data-testid="bot"]');
            if (bots.length) { const t = bots.length + ':' + bots[bots.length - 1].innerText;
                               if (window.__seen[window.__seen.length - 1] !== t) window.__seen.push(t); }
        }).observe(box, {subtree: true, childList: true, characterData: true});""")


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_browser_chat_upload_ask_stream_reset(browser: Any, served_v2: tuple, face_png: Path,
                                             tmp_path: Path) -> None:
    """Upload an image, ask two questions: each streamed answer equals the engine's own; reset empties the chat;
    every resource the page loaded came from the local server."""
    app, url = served_v2
    expected = engine_answers(app, face_png, QUESTIONS)
    driver = browser
    driver.get(url)
    _wait(driver, "the page", lambda: driver.find_elements("css selector", "#facegpt-image input[type=file]"))
    _set_number(driver, "facegpt-max-new-tokens", SETTINGS["max_new_tokens"])
    driver.find_element("css selector", "#facegpt-image input[type=file]").send_keys(str(face_png))
    _wait(driver, "the image to be encoded", lambda: _status(driver).startswith("Image loaded"))

    _watch_last_answer(driver)
    for turn, question in enumerate(QUESTIONS):
        driver.execute_script("window.__seen = [];")
        _ask(driver, question)
        _wait(driver, f"answer {turn + 1}", lambda: _status(driver) == "Done." and
              len(_messages(driver)) == 2 * (turn + 1))
        shown = _messages(driver)
        assert [m["role"] for m in shown] == ["user", "bot"] * (turn + 1)
        assert _norm(shown[-2]["content"]) == _norm(question)
        assert _norm(shown[-1]["content"]) == _norm(expected[turn]), (ascii(shown[-1]["content"]), ascii(expected[turn]))
        seen = [_norm(t.partition(":")[2]) for t in driver.execute_script("return window.__seen;")
                if t.startswith(f"{turn + 1}:") and _norm(t.partition(":")[2])]  # this turn's answer as it grew
        assert len(seen) > 1 and seen[-1] == _norm(expected[turn])  # it arrived in pieces
        assert all(_norm(expected[turn]).startswith(t) for t in seen), seen  # pieces of the answer, in order
        print(f"turn {turn + 1}: the answer showed {len(seen)} distinct texts while streaming")
    shot = tmp_path / "web_chat.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("FACEGPT_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["FACEGPT_WEB_SCREENSHOT"])
    assert shot.stat().st_size > 10_000

    driver.find_element("css selector", "#facegpt-reset").click()
    _wait(driver, "the reset", lambda: _status(driver).startswith("New conversation") and not _messages(driver))
    _ask(driver, QUESTIONS[0])
    _wait(driver, "the answer after the reset", lambda: _status(driver) == "Done." and len(_messages(driver)) == 2)
    assert _norm(_messages(driver)[-1]["content"]) == _norm(expected[0])
    driver.save_screenshot(str(tmp_path / "web_chat_after_reset.png"))

    origin = url.rstrip("/")
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    outside = [u for u in loaded if not (u.startswith(origin) or u.startswith(("data:", "blob:")))]
    assert loaded and not outside, f"the page fetched from outside the server: {outside}"


def test_a_port_in_use_is_a_one_line_user_error(served_v2: tuple) -> None:
    """A second page on the port the first one serves: a WebChatError that names the port and the fix."""
    from minigpt4.common.errors import is_user_error
    from minigpt4.web.app import WebApp, WebChatError, build_blocks

    app, url = served_v2
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    second = WebApp(app.web, build_blocks(app.web))
    try:
        with pytest.raises(WebChatError, match=rf"cannot listen on 127.0.0.1:{port} .*pass a free --port") as err:
            launch(second, "127.0.0.1", port, block=False, quiet=True)
        assert is_user_error(err.value)
    finally:
        second.blocks.close()
