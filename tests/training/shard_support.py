"""Helpers of the shard tests: a face data root with unique record ids, packing, a model double that records ids.

Imported as a plain module by ``tests/training/test_shard_loader*.py``, the gloo worker script and
``tests/data/test_shards.py`` (which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from minigpt4.datasets.builders import FaceGPT4VisionBuilder, ShareGPTFaceBuilder
from minigpt4.tools.data_common import discover
from minigpt4.tools.data_shards import PackOptions, pack
from minigpt4.tools.synth_faces import synthetic_face

SECTIONS = ("Fitzpatrick", "Human or not ")  # the trailing space is as in the team's file
SHARE_FILE = "subset_objects_gpt4vision_100k.json"
SECTION_FILE = "gpt4VisionCalls_Cleaned_BySection.json"


def processors(size: int = 16) -> Dict[str, Any]:
    """Dataset-config processor entries at a tiny image size."""
    return {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": size},
                              "eval": {"name": "blip2_image_eval", "image_size": size}},
            "text_processor": {"train": {"name": "face_text"}, "eval": {"name": "face_text"}}}


def _images(folder: Path, n: int, size: int) -> List[str]:
    rels = [f"faces/{k:03d}.jpg" for k in range(n)]
    for k, rel in enumerate(rels):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        synthetic_face(k, size).save(folder / rel, format="JPEG", quality=85)
    return rels


def _turns(question: str, answer: str, extra: int = 0) -> List[Dict[str, str]]:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    for t in range(extra):
        turns += [{"from": "human", "value": f"And detail {t}?"}, {"from": "gpt", "value": f"Detail {t}."}]
    return turns


def write_face_root(root: Path, n_share: int = 12, n_per_section: int = 10, n_images: int = 6, size: int = 24,
                    bad: bool = False) -> Path:
    """A data root in the team's layout; every record has a unique ``id`` (its ``image_id``).

    ``bad``: add one malformed record, one missing image, one undecodable image and one path outside the root.
    """
    share_images, gpt_images = root / "ShareGPTData" / "Images", root / "GPT4VisionData" / "Images"
    rels_share, rels_gpt = _images(share_images, n_images, size), _images(gpt_images, n_images, size)
    share = [{"id": f"s{k}", "image": rels_share[k % n_images],
              "conversations": _turns(f"Describe face {k}.", f"Face {k} is calm.", extra=k % 3)}
             for k in range(n_share)]
    sections: Dict[str, Any] = {"Pre-Prompt": ["template, not a sample"]}
    for s, name in enumerate(SECTIONS):
        sections[name] = [{"id": f"g{s}_{k}", "image": rels_gpt[(k + s) % n_images],
                           "conversations": _turns(f"{name.strip()} of face {k}?", f"Answer {s}-{k}.")}
                          for k in range(n_per_section)]
    if bad:
        (share_images / "faces" / "broken.jpg").write_bytes(b"not a jpeg")
        share += [{"id": "bad_missing", "image": "faces/missing.jpg", "conversations": _turns("Q?", "A.")},
                  {"id": "bad_decode", "image": "faces/broken.jpg", "conversations": _turns("Q?", "A.")},
                  {"id": "bad_outside", "image": "../../etc/x.jpg", "conversations": _turns("Q?", "A.")},
                  {"id": "bad_record", "conversations": _turns("Q?", "A.")}]
    for folder, name, data in ((root / "ShareGPTData", SHARE_FILE, share),
                               (root / "GPT4VisionData", SECTION_FILE, sections)):
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / "Annotations" / name).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return root


def pack_root(root: Path, out: Path, shard_size: str = "6KB", **options: Any) -> Dict[str, Any]:
    """``facegpt-data shards --root ROOT --out OUT`` through the same function the command calls."""
    from minigpt4.tools.data_shards import parse_size

    return pack(discover(str(root)), PackOptions(out=out, shard_size=parse_size(shard_size), **options))


def shard_spec(out: Path, manifest: Dict[str, Any]) -> str:
    return str(out / manifest["pattern"])


def json_builders(root: Path, size: int = 16, **extra: Any) -> List[Any]:
    """The two face builders on the JSON files of ``root`` (pack order: GPT4VisionData first)."""
    gpt_ann = root / "GPT4VisionData" / "Annotations" / SECTION_FILE
    gpt = FaceGPT4VisionBuilder({"build_info": {"image_path": str(root / "GPT4VisionData" / "Images"),
                                                "ann_path": str(gpt_ann)},
                                 **processors(size), **extra})
    share = ShareGPTFaceBuilder({"build_info": {"image_path": str(root / "ShareGPTData" / "Images"),
                                                "ann_path": [str(root / "ShareGPTData" / "Annotations" / SHARE_FILE)]},
                                 **processors(size), **extra})
    return [gpt, share]


def shard_builder(spec: str, size: int = 16, val_spec: Optional[str] = None, **extra: Any) -> FaceGPT4VisionBuilder:
    build_info: Dict[str, Any] = {"shards": spec}
    if val_spec:
        build_info["val_shards"] = val_spec
    return FaceGPT4VisionBuilder({"build_info": build_info, **processors(size), **extra})


class FaceDouble(nn.Module):
    """A one-weight model over face batches that records the ``image_id`` of every trained sample."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.seen: List[List[str]] = []

    def forward(self, samples: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if self.training:
            self.seen.append(list(samples["image_id"]))
        pixels = samples["image"].mean(dim=(1, 2, 3))  # (B, 3, S, S) -> (B,)
        return {"loss": ((self.weight * pixels - 0.5) ** 2).mean()}
