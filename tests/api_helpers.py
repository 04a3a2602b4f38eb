"""Helpers of the Python API and batch-prediction tests: tiny eval configs, synthetic face pictures."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_EVAL = {"minigpt4": REPO / "eval_configs" / "tiny_minigpt4_eval.yaml",
             "minigpt_v2": REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"}
QUESTIONS = ["How old is this person?", "Describe the face in one short sentence, please, with the hair colour.",
             "Smiling?"]  # different lengths: the batch is left-padded


def face_picture(path: Path, seed: int, size: tuple = (72, 60)) -> Path:
    """A small face-like picture (skin oval, two eyes) with noise, saved at ``path`` (PNG or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3)) + rng.uniform(20, 90, size=3)
    img[((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.34 * w)) ** 2 <= 1] = rng.uniform(120, 230, size=3)
    for cx in (0.38 * w, 0.62 * w):
        img[((yy - 0.42 * h) ** 2 + (xx - cx) ** 2) <= (0.05 * w) ** 2] = (40, 30, 30)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def tiny_options(llama_dir: Path) -> List[str]:
    """``--options`` that make the tiny eval configs runnable."""
    return [f"model.llama_model={llama_dir}"]
