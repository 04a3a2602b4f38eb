"""The Python API (``from minigpt4 import load_model``) on the tiny MiniGPT-v2, built through the user's path.

Claims: batched ``predict`` (left-padded, several prompt lengths) answers exactly as each question asked alone with
greedy decoding; ``chat`` with ``history`` equals the demo's multi-turn session; paths, PIL images and bytes give the
same answer; a bad image is a one-line user error naming which; a FaceGPT checkpoint alone rebuilds the same model;
the README's snippet runs as printed.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any, List

import pytest
import torch
from PIL import Image

from api_helpers import QUESTIONS, REPO, TINY_EVAL, face_picture, tiny_options
from minigpt4.api import BadImageError, FaceGPTModel, LoadModelError, options_list
from minigpt4.common.errors import is_user_error

NEW_TOKENS = 10
SNIPPET = re.compile(r"<!-- api-snippet -->\s*```python\n(.*?)```\s*<!-- /api-snippet -->", re.S)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> List[Path]:
    root = tmp_path_factory.mktemp("api_faces")
    return [face_picture(root / "a.png", 1), face_picture(root / "b.jpg", 2, (64, 64)), face_picture(root / "c.png", 3)]


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> FaceGPTModel:
    from minigpt4 import load_model

    torch.manual_seed(0)
    return load_model(TINY_EVAL["minigpt_v2"], options=tiny_options(tiny_llama_dir), device="cpu")


def test_batched_predict_equals_each_question_alone(model: FaceGPTModel, faces: List[Path]) -> None:
    engine = model.engine
    lengths = set()
    for face, question in zip(faces, QUESTIONS):  # the batch really is left-padded: prompt lengths differ
        conv, img_list = engine.new_conversation(), []
        engine.upload_img(face, conv, img_list)
        engine.encode_img(img_list)
        engine.ask(question, conv)
        lengths.add(len(engine.context_ids(conv, img_list)))
    assert len(lengths) == len(QUESTIONS)
    alone = [model.chat(face, q, max_new_tokens=NEW_TOKENS) for face, q in zip(faces, QUESTIONS)]
    assert model.predict(faces, QUESTIONS, batch_size=3, max_new_tokens=NEW_TOKENS) == alone
    assert model.predict(faces, QUESTIONS, batch_size=2, max_new_tokens=NEW_TOKENS) == alone  # batches of 2 and 1
    details = model.predict_details(faces, QUESTIONS, batch_size=3, max_new_tokens=NEW_TOKENS)
    assert all(0 <= d.tokens <= NEW_TOKENS and d.seconds > 0 for d in details)


def test_batched_predict_equals_alone_on_minigpt4_v1(tiny_llama_dir: Path, faces: List[Path]) -> None:
    from minigpt4 import load_model

    v1 = load_model(TINY_EVAL["minigpt4"], options=tiny_options(tiny_llama_dir), device="cpu")
    alone = [v1.chat(face, q, max_new_tokens=NEW_TOKENS) for face, q in zip(faces, QUESTIONS)]
    assert v1.predict(faces, QUESTIONS, batch_size=3, max_new_tokens=NEW_TOKENS) == alone


def test_chat_history_is_the_demo_session(model: FaceGPTModel, faces: List[Path]) -> None:
    from minigpt4.conversation.session import ChatSession

    first = model.chat(faces[0], QUESTIONS[0], max_new_tokens=NEW_TOKENS)
    second = model.chat(faces[0], QUESTIONS[1], history=[(QUESTIONS[0], first)], max_new_tokens=NEW_TOKENS)
    session = ChatSession(model.engine)
    session.load_image(faces[0])
    assert session.ask(QUESTIONS[0], max_new_tokens=NEW_TOKENS).text == first
    assert session.ask(QUESTIONS[1], max_new_tokens=NEW_TOKENS).text == second


def test_path_pil_and_bytes_give_the_same_answer(model: FaceGPTModel, faces: List[Path]) -> None:
    by_path = model.chat(str(faces[1]), QUESTIONS[2], max_new_tokens=NEW_TOKENS)
    with Image.open(faces[1]) as img:
        pil = img.convert("L")  # not RGB: converted like a file is
    gray_file = faces[1].with_name("gray.png")
    pil.save(gray_file)
    assert model.chat(pil, QUESTIONS[2], max_new_tokens=NEW_TOKENS) == model.chat(gray_file, QUESTIONS[2],
                                                                                 max_new_tokens=NEW_TOKENS)
    assert model.chat(faces[1].read_bytes(), QUESTIONS[2], max_new_tokens=NEW_TOKENS) == by_path


def test_bad_image_is_a_user_error_naming_it(model: FaceGPTModel, faces: List[Path], tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match=r"^image #1 \(bytes\): cannot decode image bytes") as info:
        model.predict([faces[0], b"not a picture"], ["a", "b"])
    assert is_user_error(info.value) and "\n" not in str(info.value)
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(BadImageError, match=rf"image file not found: {re.escape(str(missing))}"):
        model.chat(missing, "Who?")
    with pytest.raises(BadImageError, match="expected a path, a PIL image or encoded image bytes, not int"):
        model.chat(3, "Who?")  # type: ignore[arg-type]


def test_options_as_dict_or_list() -> None:
    assert options_list({"model.low_resource": False, "model.ckpt": None, "run.seed": 3}) == \
        ["model.low_resource=false", "model.ckpt=null", "run.seed=3"]
    assert options_list(["model.lora_r=4"]) == ["model.lora_r=4"]
    with pytest.raises(LoadModelError, match="not the string"):
        options_list("model.lora_r=4")


def test_a_facegpt_checkpoint_alone_rebuilds_the_model(model: FaceGPTModel, faces: List[Path],
                                                       tmp_path: Path) -> None:
    from minigpt4 import load_model
    from minigpt4.runners.checkpointing import save_weights

    ckpt = tmp_path / "checkpoint_3.pth"
    save_weights(model.model, ckpt, {"config": model.config.to_dict()})  # what a training run writes
    rebuilt = load_model(ckpt, device="cpu")
    assert rebuilt.config.source.endswith("facegpt_v2_eval.yaml") and rebuilt.config.model.ckpt == str(ckpt)
    assert rebuilt.predict(faces, QUESTIONS, max_new_tokens=NEW_TOKENS) == \
        model.predict(faces, QUESTIONS, max_new_tokens=NEW_TOKENS)

    from minigpt4.common.checkpoint_io import atomic_torch_save

    released = atomic_torch_save({"model": {"llama_proj.weight": torch.zeros(2, 2)}}, tmp_path / "released.pth")
    with pytest.raises(LoadModelError, match="carries no saved model config"):
        load_model(released)
    with pytest.raises(LoadModelError, match="no such file"):
        load_model(tmp_path / "none.yaml")


def _readme_snippet() -> str:
    found = SNIPPET.search((REPO / "README.md").read_text(encoding="utf-8"))
    assert found, "README.md has no <!-- api-snippet --> ```python ... ``` <!-- /api-snippet --> block"
    return found.group(1)


def test_readme_snippet_runs_on_the_tiny_model(tiny_llama_dir: Path, faces: List[Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGPT_CFG", str(TINY_EVAL["minigpt_v2"]))
    monkeypatch.setenv("FACEGPT_OPTIONS", " ".join(tiny_options(tiny_llama_dir)))
    monkeypatch.setenv("FACEGPT_IMAGE", str(faces[0]))
    monkeypatch.setenv("FACEGPT_DEVICE", "cpu")
    out = io.StringIO()
    namespace: dict = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_snippet(), "README.md:api-snippet", "exec"), namespace)
    answers: Any = namespace["answers"]
    assert isinstance(namespace["answer"], str) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert out.getvalue().strip(), "the snippet prints its answers"
