"""What ``facegpt-eval`` scores: one :class:`EvalSample` per record (its first question and reference answer).

Sources:

* the held-out split(s) of the config's face datasets, built by the run's task (``task.build_datasets``), the way
  training splits them (every split but ``train`` of each dataset with conversation records);
* a FaceGPT4Vision section file (a JSON object: section -> records) or a LLaVA / ShareGPT list (a JSON list),
  read with the datasets' own readers; images relative to ``--image-root`` (default: the file's folder).

A multi-turn record is scored on its first turn (the question asked about the image). Ids are
``<source>/<section>#<index in its section or file>``: stable across runs, so a resumed run finds them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from minigpt4.common.errors import UserError
from minigpt4.common.logger import get_logger
from minigpt4.datasets.records import Record, normalise_section

logger = get_logger(__name__)

NO_SECTION = "(no section)"


class EvalDataError(UserError, ValueError):
    """The data to score cannot be used (unknown layout, a malformed record, a missing image, no held-out split)."""


@dataclass(frozen=True)
class EvalSample:
    """One question to answer and score."""

    id: str
    image: str          # full path
    question: str
    reference: str
    section: str        # trimmed section name, or NO_SECTION
    where: str          # file and record, for messages


def _sample(prefix: str, rec: Record, image: str) -> EvalSample:
    section = normalise_section(rec.section) or NO_SECTION
    where = f"{rec.source}[{rec.section!r}] record #{rec.index}" if rec.section else f"{rec.source} record #{rec.index}"
    return EvalSample(f"{prefix}/{section}#{rec.index}", image, rec.questions[0], rec.answers[0], section, where)


# ---------------------------------------------------------------------------------------------- held out
def heldout_samples(cfg: Any) -> List[EvalSample]:
    """Samples of every held-out split (all splits but ``train``) of the config's conversation datasets."""
    from minigpt4.tasks import setup_task

    if not cfg.datasets:
        raise EvalDataError(f"{getattr(cfg, 'source', 'the config')} has no datasets section, so it has no held-out "
                            "split; give a train config, or score a file with --data FILE")
    built = setup_task(cfg).build_datasets(cfg)
    samples: List[EvalSample] = []
    streamed: List[str] = []
    for name, splits in built.items():
        for split, dataset in splits.items():
            records = getattr(dataset, "annotation", None)
            if split != "train" and records is None:
                streamed.append(f"{name}.{split}")  # read from shards: no record list to score
            if split == "train" or not records or not isinstance(records[0], Record):
                continue
            samples += [_sample(f"{name}.{split}", rec, dataset.image_path(i)) for i, rec in enumerate(records)]
            logger.info("held-out split %s/%s: %d record(s)", name, split, len(records))
    if streamed:
        logger.warning("held-out split(s) %s stream from shards and are not scored; score the JSON file they were "
                       "packed from with --data FILE", ", ".join(streamed))
    if not samples and streamed:
        raise EvalDataError(f"{getattr(cfg, 'source', 'the config')}: the held-out split(s) {', '.join(streamed)} "
                            "stream from shards (build_info.val_shards), which cannot be scored; score the JSON file "
                            "they were packed from with --data FILE")
    if not samples:
        names = ", ".join(f"datasets.{n}.split.val_fraction" for n in built)
        raise EvalDataError(f"{getattr(cfg, 'source', 'the config')}: no held-out split among its datasets "
                            f"({', '.join(built)}); set {names} > 0, or score a file with --data FILE")
    return samples


# ---------------------------------------------------------------------------------------------- a file
def file_samples(path: Path, image_root: Optional[Path] = None) -> List[EvalSample]:
    """Samples of a section file or a LLaVA / ShareGPT list; every record's image must exist."""
    from minigpt4.datasets.datasets.chatgpt4vision_datasets import read_section_file, resolve_sections, scan_sections
    from minigpt4.datasets.datasets.sharegpt_dataset import read_sharegpt_files
    from minigpt4.datasets.json_stream import top_level_kind
    from minigpt4.datasets.schemas import FaceGPT4VisionConfig, FieldMap

    if not path.is_file():
        raise EvalDataError(f"--data {path}: no such file (give 'heldout', a FaceGPT4Vision section file or a "
                            "LLaVA/ShareGPT JSON list)")
    root = (image_root or path.resolve().parent).expanduser()
    if not root.is_dir():
        raise EvalDataError(f"--image-root {root} is not a folder")
    kind = top_level_kind(str(path))
    if kind == "object":
        counts = scan_sections(str(path))
        chosen = resolve_sections(str(path), [], list(FaceGPT4VisionConfig().prompt_sections), counts)
        records, errors, _ = read_section_file(str(path), chosen, FieldMap())
    elif kind == "array":
        records, errors = read_sharegpt_files([str(path)], FieldMap())
    else:
        raise EvalDataError(f"--data {path}: unknown layout (top level is {kind}); expected a FaceGPT4Vision section "
                            "file (JSON object: section -> records) or a LLaVA/ShareGPT JSON list of records")
    if errors:
        more = f" (and {len(errors) - 1} more malformed record(s))" if len(errors) > 1 else ""
        raise EvalDataError(f"{errors[0]}{more}")
    prefix = path.stem
    samples = [_sample(prefix, rec, os.path.join(root, rec.image)) for rec in records]
    missing = [s for s in samples if not os.path.isfile(s.image)]
    if missing:
        more = f" ({len(missing)} of {len(samples)} records name a missing image)" if len(missing) > 1 else ""
        raise EvalDataError(f"{missing[0].where}: image {missing[0].image} not found{more}; fix the path or give "
                            "--image-root (the folder the image paths start from)")
    return samples


# ---------------------------------------------------------------------------------------------- selection
def select(samples: Sequence[EvalSample], sections: Sequence[str] = (), limit: Optional[int] = None,
           max_per_section: Optional[int] = None) -> List[EvalSample]:
    """Samples of ``sections`` (trimmed, case-insensitive; all when empty), at most ``max_per_section`` of each
    and ``limit`` in all, in data order. An unknown section name is an error listing the ones present."""
    present: Dict[str, str] = {}
    for s in samples:
        present.setdefault(s.section.lower(), s.section)
    wanted = {normalise_section(w).lower() for w in sections}
    unknown = sorted(w for w in wanted if w not in present)
    if unknown:
        raise EvalDataError(f"--sections {unknown} not in the data; sections present: {sorted(present.values())}")
    out: List[EvalSample] = []
    taken: Dict[str, int] = {}
    for s in samples:
        if wanted and s.section.lower() not in wanted:
            continue
        if max_per_section is not None and taken.get(s.section, 0) >= max_per_section:
            continue
        taken[s.section] = taken.get(s.section, 0) + 1
        out.append(s)
    return out[:limit] if limit is not None else out
