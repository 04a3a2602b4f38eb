"""facegpt-serve: the real app on uvicorn (localhost, a free port) with the tiny MiniGPT-v2 model, driven by the
official ``openai`` client and by raw HTTP for the malformed requests. No network beyond 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the dev extra is not installed: pip install -e '.[dev]'")
httpx = pytest.importorskip("httpx", reason="the dev extra is not installed: pip install -e '.[dev]'")

from serve_helpers import blank_png_url, data_url, face_png, running_server, user_message  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_V2 = REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"
MODEL_ID = "tiny-v2"
KEY = "test-key"
QUESTION = "How old is this person?"
MAX_QUEUE = 2
LONG_QUESTION = "Describe this face in detail: the apparent age, the expression, the pose, the lighting and the eyes."


@pytest.fixture(scope="module")
def chat(tiny_llama_dir: Path) -> Any:
    """The chat engine the CLI builds (chat_from_config) around the tiny v2 model; short greedy answers."""
    from minigpt4.common.config import load_config
    from minigpt4.conversation.factory import chat_from_config
    from minigpt4.conversation.generation import GenerationSettings

    cfg = load_config(TINY_V2, [f"model.llama_model={tiny_llama_dir}"], check_dataset_paths=False)
    torch.manual_seed(0)
    return chat_from_config(cfg, "cpu", GenerationSettings(max_new_tokens=12))


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_png(tmp_path_factory.mktemp("serve") / "face.png")


@pytest.fixture(scope="module")
def engine_answers(chat: Any, face: Path) -> Dict[str, str]:
    """The engine's own greedy answers (a ChatSession, as the CLI uses): a first and a follow-up question."""
    from minigpt4.conversation.session import ChatSession

    session = ChatSession(chat)
    session.load_image(face)
    first = session.ask(QUESTION).text
    second = session.ask("And the expression?").text
    session.reset()
    long = session.ask(LONG_QUESTION).text
    return {"first": first, "second": second, "long": long}


@pytest.fixture(scope="module")
def server(chat: Any, engine_answers: Dict[str, str]) -> Iterator[Dict[str, Any]]:
    """The app on uvicorn with small limits: 100x100 pixels at most, max_tokens <= 16, 200 kB bodies, queue 2,
    batches of up to 3."""
    from minigpt4.serve.app import ServeConfig, create_app
    from minigpt4.serve.protocol import ServeLimits

    limits = ServeLimits(max_request_bytes=200_000, max_image_pixels=100 * 100, max_tokens_cap=16)
    app = create_app(chat, ServeConfig(model_id=MODEL_ID, limits=limits, api_key=KEY, max_queue=MAX_QUEUE,
                                       retry_after_s=3, max_batch=MAX_QUEUE + 1))
    with running_server(app) as base:
        yield {"base": base, "app": app, "worker": app.state.worker}


@pytest.fixture()
def client(server: Dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server: Dict[str, Any], body: Any = None, content: bytes = None, key: str = KEY) -> Any:
    """A raw POST to /v1/chat/completions."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(server["base"] + "/v1/chat/completions", json=body, content=content, headers=headers,
                      timeout=60)


def assert_error(response: Any, status: int, code: str) -> Dict[str, Any]:
    """``response`` is an OpenAI-shaped JSON error with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"], error
    return error


def assert_still_serving(client: Any, face: Path, expected: str) -> None:
    reply = client.chat.completions.create(model=MODEL_ID, messages=[user_message(data_url(face), QUESTION)])
    assert reply.choices[0].message.content == expected


# ------------------------------------------------------------------------------------ answers


def test_plain_and_streamed_answers_equal_the_engine(client: Any, face: Path, engine_answers: Dict[str, str]):
    expected = engine_answers["first"]
    assert expected, "the tiny model should say something for this test to mean anything"
    messages = [user_message(data_url(face), QUESTION)]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected
    assert sum(1 for p in pieces if p) >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_multi_turn_history_matches_the_engine_session(client: Any, face: Path, engine_answers: Dict[str, str]):
    messages = [user_message(data_url(face), QUESTION),
                {"role": "assistant", "content": engine_answers["first"]},
                {"role": "user", "content": "And the expression?"}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert reply.choices[0].message.content == engine_answers["second"]


def test_stop_string_cuts_the_answer(client: Any, face: Path, engine_answers: Dict[str, str]):
    answer = engine_answers["first"]
    if len(answer.strip()) < 4:
        pytest.skip(f"the tiny model's answer {answer!r} is too short to cut")
    stop = answer[2:4]
    expected = answer[:answer.find(stop)].strip()
    messages = [user_message(data_url(face), QUESTION)]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, stop=[stop])
    assert reply.choices[0].message.content.strip() == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model=MODEL_ID, messages=messages, stop=stop, stream=True))
    assert streamed.strip() == expected


def test_models_and_health(client: Any, server: Dict[str, Any]):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    health = httpx.get(server["base"] + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == MODEL_ID and health["max_queue"] == MAX_QUEUE


# ------------------------------------------------------------------------------- bad requests


def test_bad_requests_get_json_errors_and_the_server_stays_up(client: Any, server: Dict[str, Any], face: Path,
                                                              engine_answers: Dict[str, str]):
    good = [user_message(data_url(face), QUESTION)]
    assert_error(post(server, content=b'{"model": "tiny-v2", "messages": [}'), 400, "invalid_json")
    assert_error(post(server, {"model": MODEL_ID, "messages": [{"role": "user", "content": QUESTION}]}), 400,
                 "missing_image")
    error = assert_error(post(server, {"model": MODEL_ID, "messages": [user_message(blank_png_url(200, 150),
                                                                                    QUESTION)]}),
                         400, "image_too_large")
    assert "200x150" in error["message"]
    assert_error(post(server, {"model": MODEL_ID, "messages": [user_message("data:image/png;base64,bm90IGFuIGltYWdl",
                                                                            QUESTION)]}), 400, "invalid_image")
    assert_error(post(server, {"model": MODEL_ID,
                               "messages": [user_message("https://example.com/face.png", QUESTION)]}),
                 400, "remote_image_refused")
    assert_error(post(server, content=b'{"model": "tiny-v2", "pad": "' + b"x" * 250_000 + b'"}'), 413,
                 "request_too_large")
    assert_error(post(server, {"model": MODEL_ID, "messages": good}, key="wrong"), 401, "invalid_api_key")

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=good)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_ID, messages=good, max_tokens=17)
    assert err.value.body["code"] == "max_tokens_too_large"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["base"] + "/v1", api_key="nope", max_retries=0).models.list()

    assert httpx.get(server["base"] + "/health", timeout=10).json()["status"] == "ok"
    assert_still_serving(client, face, engine_answers["first"])


def test_full_queue_gives_503_then_the_waiting_requests_are_answered_in_one_batch(
        client: Any, server: Dict[str, Any], face: Path, engine_answers: Dict[str, str]):
    """The held worker has one request, MAX_QUEUE wait, the next gets 503; released, the three (prompts of
    different lengths: a padded batch) are answered together, each as the engine answers it alone."""
    worker = server["worker"]
    image = data_url(face)
    body = {"model": MODEL_ID, "messages": [user_message(image, QUESTION)]}
    bodies = [body, {"model": MODEL_ID, "messages": [user_message(image, LONG_QUESTION)]},
              {"model": MODEL_ID, "messages": [user_message(image, QUESTION),
                                               {"role": "assistant", "content": engine_answers["first"]},
                                               {"role": "user", "content": "And the expression?"}]}]
    results: Dict[int, Any] = {}
    threads = []
    worker.hold()
    try:
        for count in range(1 + MAX_QUEUE):  # one taken by the (held) worker, then MAX_QUEUE waiting
            thread = threading.Thread(target=lambda i=count: results.__setitem__(i, post(server, bodies[i])))
            thread.start()
            threads.append(thread)
            deadline = time.monotonic() + 30
            while (worker.depth if count else int(worker.busy)) < (count or 1):
                assert time.monotonic() < deadline, "the request did not reach the worker"
                time.sleep(0.01)
        refused = post(server, body)
        assert_error(refused, 503, "queue_full")
        assert refused.headers["retry-after"] == "3"
    finally:
        worker.release()
        for thread in threads:
            thread.join(60)
    assert [results[i].status_code for i in range(3)] == [200] * 3
    assert worker.largest_batch == 1 + MAX_QUEUE  # all three were waiting when the worker was released
    answers = [results[i].json()["choices"][0]["message"]["content"] for i in range(3)]
    assert answers == [engine_answers["first"], engine_answers["long"], engine_answers["second"]]
    prompts = {results[i].json()["usage"]["prompt_tokens"] for i in range(3)}
    assert len(prompts) == 3  # three prompt lengths: the batch was left-padded
    for i in range(3):  # usage as for a request answered alone (streamed path)
        alone = client.chat.completions.create(model=MODEL_ID, messages=bodies[i]["messages"])
        assert alone.choices[0].message.content == answers[i]
        assert alone.usage.completion_tokens == results[i].json()["usage"]["completion_tokens"]
        assert alone.usage.prompt_tokens == results[i].json()["usage"]["prompt_tokens"]
    assert_still_serving(client, face, engine_answers["first"])


# -------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("argv, message", [
    (["--cfg-path", "no/such.yaml"], "no such file"),
    (["--cfg-path", str(TINY_V2), "--max-queue", "0"], "--max-queue must be >= 1"),
])
def test_cli_flag_errors_are_one_line_exit_2(argv: list, message: str, capsys: pytest.CaptureFixture):
    from minigpt4.serve.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facegpt-serve:") and message in err and "\n" not in err


@pytest.mark.slow  # about a minute: a server subprocess builds the tiny model
def test_bench_serve_loses_no_request(tmp_path: Path):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--model", "tiny", "-n", "6",
                          "-c", "3", "--max-tokens", "8", "--time-limit", "120"], capture_output=True, text=True,
                         timeout=400, cwd=str(tmp_path), env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["ok"] == 6 and stats["lost"] == 0 and stats["requests_per_s"] > 0
    assert 0 < stats["p50_s"] <= stats["p95_s"] <= stats["max_s"]
