"""Dataset bases: upstream's ``BaseDataset`` shape plus the skip-bad-images logic every FaceGPT dataset uses.

:class:`BaseDataset` holds ``annotation`` (a list), the processors, ``vis_root``, ``name``, ``sample_ratio``
and ``collater``. Subclasses say where an item's image is, relative to ``vis_root`` (:meth:`image_rel`), and how
an item is made (:meth:`make_item`). ``__getitem__`` resolves the image inside ``vis_root`` (a path that lands
outside it is refused before any file is opened) and opens it; when it is outside, missing or undecodable the
record is not replaced by another one: ``__getitem__`` returns a :class:`SkippedSample` marker, which the collater
drops from the batch and counts in the batch's ``skipped`` — that count is how skips travel out of DataLoader
worker processes. So every record is used at most once per pass. Each bad path is logged once per process with
the record's file and index. With ``strict_images`` it raises instead.

:class:`ConversationDataset` is the generic dataset over parsed :class:`~minigpt4.datasets.records.Record`
lists that ShareGPT_Face and FaceGPT4Vision share.
"""

from __future__ import annotations

import abc
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from minigpt4.common.logger import get_logger, log_once
from minigpt4.datasets.datasets.collate import SkippedSample, collate_samples
from minigpt4.datasets.json_stream import JsonShapeError, iter_array, iter_sections, top_level_kind
from minigpt4.datasets.records import Record, where
from minigpt4.processors.image_io import ImageOpenError, image_path_in_root, open_image
from minigpt4.prompting.markers import IMAGE_PROMPT

logger = get_logger(__name__)


def load_annotations(path: str) -> List[Any]:
    """Upstream's annotation loading: a JSON list, or a dict whose ``annotations`` list is used (streamed)."""
    if top_level_kind(path) == "array":
        return [rec for _, rec in iter_array(path)]
    for key, items in iter_sections(path):
        if key == "annotations":
            return [rec for _, rec in items] if not isinstance(items, list) else list(items)
    raise JsonShapeError(path, "a JSON object without an 'annotations' list", "a list of records",
                         "write the records as a JSON list, or under an 'annotations' key (upstream's format)")


class BaseDataset(Dataset, abc.ABC):
    """Map-style dataset with processors, ``collater`` and skipping of unreadable images."""

    def __init__(self, vis_processor: Any = None, text_processor: Any = None, vis_root: str = "",
                 ann_paths: Sequence[str] = (), strict_images: bool = False) -> None:
        self.vis_root = os.fspath(vis_root)
        self.vis_processor = vis_processor
        self.text_processor = text_processor
        self.strict_images = strict_images
        self.annotation: List[Any] = []
        for path in ann_paths:
            self.annotation.extend(load_annotations(path))
        self.name = type(self).__name__
        self.sample_ratio = 1.0

    def __len__(self) -> int:
        return len(self.annotation)

    def set_processors(self, vis_processor: Any, text_processor: Any) -> None:
        """Replace the processors (upstream API)."""
        self.vis_processor, self.text_processor = vis_processor, text_processor

    def collater(self, samples: List[Any]) -> Any:
        """Batch items per the contract (:func:`collate_samples`)."""
        return collate_samples(samples)

    @abc.abstractmethod
    def image_rel(self, index: int) -> str:
        """Record ``index``'s image path as written in the data (relative to ``vis_root``)."""

    def image_path(self, index: int) -> str:
        """Full path of record ``index``'s image; :class:`ImagePathError` when it lands outside ``vis_root``."""
        return image_path_in_root(self.vis_root, self.image_rel(index))

    def describe(self, index: int) -> str:
        """Where record ``index`` comes from, for messages (subclasses add the file)."""
        return f"{self.name} record #{index}"

    @abc.abstractmethod
    def make_item(self, index: int, image: torch.Tensor) -> Dict[str, Any]:
        """The item dict of record ``index`` given its processed image (without ``skipped``)."""

    def load_image(self, path: str) -> torch.Tensor:
        """Open and process one image; raises :class:`ImageOpenError` when it is missing/undecodable."""
        if self.vis_processor is None:
            raise RuntimeError(f"{self.name}: no vis_processor set; name one under vis_processor.train in the config")
        if hasattr(self.vis_processor, "open"):
            return self.vis_processor(self.vis_processor.open(path))
        return self.vis_processor(open_image(path))

    def __getitem__(self, index: int) -> Union[Dict[str, Any], SkippedSample]:
        """The item of record ``index``, or a :class:`SkippedSample` when its image cannot be used."""
        try:
            path = self.image_path(index)  # refused here, before any open, when outside vis_root
            image = self.load_image(path)
        except ImageOpenError as err:
            origin = self.describe(index)
            if self.strict_images:
                raise type(err)(f"{origin}: {err} (strict_images is on; set strict_images: false to skip such "
                                "records)") from None
            log_once(logger, f"bad-image:{self.image_rel(index)}", "%s: skipping %s: %s", self.name, origin, err)
            return SkippedSample(self.name, int(index), self.image_rel(index), str(err))
        item = self.make_item(index, image)
        item["skipped"] = 0
        return item


def instruction(question: str) -> str:
    """Upstream's single-turn / first-turn wrapping: ``"<Img><ImageHere></Img> {question} "``."""
    return f"{IMAGE_PROMPT} {question} "


def prepare_record(rec: Record, max_turns: Optional[int], text_processor: Any) -> Tuple[Record, int]:
    """``max_turns`` cut, then the text processor on every question; returns ``(record, questions cut)``.

    The one text pipeline of a record, shared by the JSON datasets (at construction) and the shard datasets
    (per sample, as it is read)."""
    if max_turns is not None:
        rec = rec._replace(questions=rec.questions[:max_turns], answers=rec.answers[:max_turns])
    if text_processor is None:
        return rec, 0
    before = getattr(text_processor, "truncated", 0)
    questions = tuple(text_processor(q) for q in rec.questions)
    return rec._replace(questions=questions), getattr(text_processor, "truncated", 0) - before


def conversation_item(rec: Record, image: torch.Tensor) -> Dict[str, Any]:
    """The dataset item of a prepared record (without ``skipped``): single-turn ``instruction_input``/``answer``,
    multi-turn ``conv_q``/``conv_a``; plus ``image_id`` and ``section``."""
    item: Dict[str, Any] = {"image": image}
    if len(rec.questions) == 1:
        item["instruction_input"] = instruction(rec.questions[0])
        item["answer"] = rec.answers[0]
    else:
        item["conv_q"] = [instruction(rec.questions[0])] + [f"{q} " for q in rec.questions[1:]]
        item["conv_a"] = list(rec.answers)
    item["image_id"] = rec.image_id
    item["section"] = rec.section
    return item


def check_max_turns(max_turns: Optional[int], name: str) -> None:
    """``max_turns`` must be null or >= 1."""
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"{name}: max_turns must be >= 1 or null, got {max_turns}")


class ConversationDataset(BaseDataset):
    """Items from parsed records: single-turn → ``instruction_input``/``answer``; multi-turn → ``conv_q``/``conv_a``.

    The text processor runs once per question at construction (its word cuts are counted in
    :attr:`truncated`); answers are kept as written, as upstream does.
    """

    def __init__(self, vis_processor: Any, text_processor: Any, vis_root: str, records: Iterable[Record],
                 max_turns: Optional[int] = None, strict_images: bool = False, name: str = "") -> None:
        super().__init__(vis_processor, text_processor, vis_root, (), strict_images)
        self.name = name or self.name
        check_max_turns(max_turns, self.name)
        self.truncated = 0
        self.annotation = [self._prepare(r, max_turns) for r in records]
        if self.truncated:
            logger.warning("%s: the text processor cut %d of %d instruction(s) to its max_words", self.name,
                           self.truncated, sum(len(r.questions) for r in self.annotation))

    def _prepare(self, rec: Record, max_turns: Optional[int]) -> Record:
        rec, cut = prepare_record(rec, max_turns, self.text_processor)
        self.truncated += cut
        return rec

    def image_rel(self, index: int) -> str:
        return self.annotation[index].image

    def describe(self, index: int) -> str:
        return where(self.annotation[index])

    def make_item(self, index: int, image: torch.Tensor) -> Dict[str, Any]:
        return conversation_item(self.annotation[index], image)

    def section_counts(self) -> Dict[str, int]:
        """Records per section (``""`` for unsectioned data)."""
        return dict(Counter(r.section for r in self.annotation))
