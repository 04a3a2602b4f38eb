"""Upstream's MiniGPT-4 stage-2 data (``cc_sbu_align``): ``{"annotations": [{"image_id", "caption"}]}``.

Images are ``<vis_root>/<image_id>.jpg``. Items: ``image``, ``answer`` (the raw caption, as upstream),
``image_id`` (str), ``section`` ("") and ``skipped`` (0). There is no ``instruction_input``: as upstream, the
MiniGPT-4 model draws one instruction per batch from its ``prompt_path`` prompts.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from minigpt4.datasets.datasets.base_dataset import BaseDataset
from minigpt4.datasets.records import RecordError


def check_caption_records(annotation: List[Any], source: str) -> List[RecordError]:
    """Malformed ``{"image_id", "caption"}`` entries of one file."""
    errors = []
    for i, ann in enumerate(annotation):
        if not isinstance(ann, dict):
            errors.append(RecordError(source, i, f"a record must be a JSON object, got {type(ann).__name__}"))
        elif not isinstance(ann.get("image_id"), (str, int)):
            errors.append(RecordError(source, i, "missing or non-string/integer 'image_id'"))
        elif not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
            errors.append(RecordError(source, i, "missing, empty or non-string 'caption'"))
    return errors


class CCSBUAlignDataset(BaseDataset):
    """``cc_sbu_align`` stage-2 captions."""

    def __init__(self, vis_processor: Any, text_processor: Any, vis_root: str, ann_paths: Sequence[str],
                 strict_images: bool = False) -> None:
        super().__init__(vis_processor, text_processor, vis_root, ann_paths, strict_images)

    def image_rel(self, index: int) -> str:
        return f"{self.annotation[index]['image_id']}.jpg"

    def make_item(self, index: int, image: torch.Tensor) -> Dict[str, Any]:
        ann = self.annotation[index]
        return {"image": image, "answer": ann["caption"], "image_id": str(ann["image_id"]), "section": ""}
