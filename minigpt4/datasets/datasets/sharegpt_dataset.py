"""ShareGPT_Face: ShareGPT4V / LLaVA JSON lists of conversation records under one image root.

The team reads ``subset_objects_gpt4vision_100k.json`` and
``subset_objects_share-captioner_coco_lcs_sam_1246k_1107.json``; each is a JSON array of
``{"id", "image", "conversations"}`` records (``id`` int or str; ``<image>`` before or after the first
question). Files are streamed (:mod:`minigpt4.datasets.json_stream`), so the 1.5 GB share-captioner file is
never held whole.
"""

from __future__ import annotations

import os
from typing import Any, List, Sequence, Tuple

from minigpt4.common.logger import get_logger
from minigpt4.datasets.datasets.base_dataset import ConversationDataset
from minigpt4.datasets.json_stream import iter_array, top_level_kind
from minigpt4.datasets.records import Record, RecordError, parse_all

logger = get_logger(__name__)


def read_sharegpt_files(paths: Sequence[str], fmap: Any, require_image_token: bool = False
                        ) -> Tuple[List[Record], List[RecordError]]:
    """Parse every record of the JSON lists in ``paths``; returns ``(records, malformed)``."""
    records: List[Record] = []
    errors: List[RecordError] = []
    for path in paths:
        path = os.fspath(path)
        if top_level_kind(path) != "array":
            raise ValueError(f"{path}: ShareGPT_Face reads JSON lists of records; this file is a JSON object "
                             "(a section dict belongs to the facegpt4vision builder)")
        before = len(records)
        records.extend(parse_all(iter_array(path), fmap, path, "", "error", errors, require_image_token))
        logger.info("%s: %d record(s)", path, len(records) - before)
    return records, errors


class ShareGPTFaceDataset(ConversationDataset):
    """ShareGPT_Face items (see :class:`ConversationDataset` for the item keys)."""
