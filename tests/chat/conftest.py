"""Fixtures of the chat tests: tiny models built from the tiny presets, a synthetic face image, demo runners.

The tiny models go through the real paths (registry → preset YAML → ``from_config`` → ``from_pretrained`` of a
tiny LLaMA folder written by ``save_pretrained``). Their vision towers are random: the tiny eval configs declare them
trainable (``freeze_vit: False``) because the model refuses a frozen random tower; nothing trains in a chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from chat_demo_helpers import TINY_EVAL

def draw_face(path: Path, seed: int = 0, size: tuple = (96, 80)) -> Path:
    """A synthetic face-like picture (skin oval, eyes, mouth) with a little noise, saved as PNG/JPEG."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.float64) + rng.uniform(20, 80, size=3)
    oval = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.34 * w)) ** 2 <= 1
    img[oval] = (224, 172, 140)
    for cx in (0.38 * w, 0.62 * w):
        img[((yy - 0.42 * h) ** 2 + (xx - cx) ** 2) <= (0.05 * w) ** 2] = (40, 30, 30)
    img[(np.abs(yy - 0.68 * h) < 0.03 * h) & (np.abs(xx - w / 2) < 0.15 * w)] = (150, 50, 60)
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def face_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_face(tmp_path_factory.mktemp("faces") / "face.png")


@pytest.fixture(scope="session")
def other_face_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_face(tmp_path_factory.mktemp("faces2") / "other face.jpg", seed=3, size=(64, 64))


@pytest.fixture(scope="session")
def not_an_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "notes.jpg"
    path.write_text("these are notes, not pixels\n")
    return path


@pytest.fixture(scope="session")
def chatml_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """The tiny LLaMA folder with a ChatML chat template in its tokenizer config."""
    import json
    import shutil

    from prompt_helpers import CHATML

    folder = tmp_path_factory.mktemp("chatml") / "llama"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_options(tiny_llama_dir: Path) -> List[str]:
    """``--options`` that make the tiny eval configs runnable."""
    return [f"model.llama_model={tiny_llama_dir}"]


@pytest.fixture(scope="session")
def tiny_cfg(tiny_options: List[str]) -> Callable[[str], Any]:
    """``tiny_cfg(arch, *extra_options)`` → the loaded tiny eval config."""
    from minigpt4.common.config import load_config

    def make(arch: str, *extra: str) -> Any:
        return load_config(TINY_EVAL[arch], tiny_options + list(extra))

    return make


@pytest.fixture(scope="session")
def tiny_chats(tiny_cfg: Callable[[str], Any]) -> Dict[str, Any]:
    """One tiny model per arch (built once) wrapped in a :class:`Chat` from the tiny eval config."""
    from minigpt4.conversation.factory import build_model, chat_from_config

    chats = {}
    for arch in ("minigpt4", "minigpt_v2"):
        cfg = tiny_cfg(arch)
        torch.manual_seed(0)
        model = build_model(cfg, torch.device("cpu"))
        chats[arch] = chat_from_config(cfg, "cpu", model=model)
    return chats


@pytest.fixture()
def chat_for(tiny_chats: Dict[str, Any]) -> Callable[..., Any]:
    """``chat_for(arch, **settings)`` → a fresh :class:`Chat` around the session's tiny model."""
    from minigpt4.conversation.chat import Chat
    from minigpt4.conversation.generation import GenerationSettings

    def make(arch: str, **settings: Any) -> Any:
        base = tiny_chats[arch]
        return Chat(base.model, base.vis_processor, "cpu", base.template, GenerationSettings(**settings))

    return make
