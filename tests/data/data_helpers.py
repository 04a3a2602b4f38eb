"""Helpers shared by the data tests (imported as a plain module; pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from minigpt4.tools.synth_faces import synthetic_face

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def write_images(root: Path, rels, size: int = 64) -> None:
    """Deterministic JPEG drawings at ``root/rel``."""
    for k, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_face(k, size).save(path, format="JPEG", quality=90)


def images_named(path: Path):
    """Every ``image`` path named in a fixture (list or section dict), sorted."""
    data = json.loads(path.read_text())
    records = data if isinstance(data, list) else [r for v in data.values() for r in v]
    return sorted({r["image"] for r in records if isinstance(r, dict) and isinstance(r.get("image"), str)})


def tiny_processors(size: int = 32) -> Dict:
    """Dataset-config processor entries at a tiny image size."""
    return {
        "vis_processor": {"train": {"name": "blip2_image_train", "image_size": size},
                          "eval": {"name": "blip2_image_eval", "image_size": size}},
        "text_processor": {"train": {"name": "face_text"}, "eval": {"name": "face_text"}},
    }
