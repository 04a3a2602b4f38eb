"""Strict weight loading with an account of every key.

Upstream MiniGPT-4 loaded every file with ``load_state_dict(strict=False)`` and so dropped any key that did not
fit without a word. Here each key of a weight file ends in exactly one bucket of a :class:`LoadReport`:

* ``matched`` — copied into the module;
* ``intentionally_unused`` — in the file but deliberately not used, with the reason;
* ``expected_absent`` — model keys the file is not meant to hold (e.g. frozen parts loaded from another file).

Anything else — a file key the model does not know, a model key the file lacks, a shape that differs — is
collected and raised at once as a :class:`CheckpointKeyError` that names the file and the fix. Files are read by
:func:`minigpt4.common.checkpoint_io.read_weights` (re-exported here as ``torch_load_weights``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

import torch
from torch import nn

from minigpt4.common.checkpoint_io import WeightsFileError, read_weights
from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

ExpectedAbsent = Union[Callable[[str], bool], Set[str], frozenset]
ShapeHint = Callable[[str, Tuple[int, ...], Tuple[int, ...]], str]

_LIST_LIMIT = 20  # keys shown per category in an error message


@dataclass
class LoadReport:
    """What happened to every key of one weight file."""

    file: str
    matched: List[str] = field(default_factory=list)
    expected_absent: List[str] = field(default_factory=list)
    intentionally_unused: Dict[str, str] = field(default_factory=dict)
    renamed: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts, e.g. ``eva_vit_g.pth: 30 matched, 0 expected absent, 2 unused, 0 renamed``."""
        line = (
            f"{self.file}: {len(self.matched)} matched, {len(self.expected_absent)} expected absent, "
            f"{len(self.intentionally_unused)} intentionally unused, {len(self.renamed)} renamed"
        )
        if self.notes:
            line += "; " + "; ".join(self.notes)
        return line

    def unused_by_reason(self) -> Dict[str, List[str]]:
        """Intentionally unused keys grouped by their reason (reason → keys, in file order)."""
        groups: Dict[str, List[str]] = {}
        for key, reason in self.intentionally_unused.items():
            groups.setdefault(reason, []).append(key)
        return groups

    def log(self, log: Optional[logging.Logger] = None) -> None:
        """Log the summary (INFO), each group of unused keys (INFO) and the full key lists (DEBUG)."""
        log = log or logger
        log.info("Loaded %s", self.summary())
        for reason, keys in self.unused_by_reason().items():
            log.info("  %d keys not used (%s), e.g. %s", len(keys), reason, keys[0])
        log.debug("  matched: %s", self.matched)
        log.debug("  expected absent: %s", self.expected_absent)
        log.debug("  renamed: %s", self.renamed)


class CheckpointKeyError(RuntimeError):
    """A weight file does not fit the module; the message lists every problem, the file and the fix."""

    def __init__(
        self,
        file: str,
        unexpected: List[str],
        missing: List[str],
        mismatched: List[str],
        fix: str,
    ) -> None:
        self.file = file
        self.unexpected = list(unexpected)
        self.missing = list(missing)
        self.mismatched = list(mismatched)
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        total = len(self.unexpected) + len(self.missing) + len(self.mismatched)
        lines = [f"{self.file} does not fit the model ({total} problem{'s' if total != 1 else ''}):"]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}, in the file but not in the model): "
                         + _short_list(self.unexpected))
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}, the model needs them but the file lacks them): "
                         + _short_list(self.missing))
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}):")
            lines.extend(f"    {entry}" for entry in self.mismatched[:_LIST_LIMIT])
            if len(self.mismatched) > _LIST_LIMIT:
                lines.append(f"    ... and {len(self.mismatched) - _LIST_LIMIT} more")
        lines.append(f"Fix: {self.fix}")
        return "\n".join(lines)


def _short_list(keys: List[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    if len(keys) > _LIST_LIMIT:
        shown += f", ... and {len(keys) - _LIST_LIMIT} more"
    return shown


def _shape_str(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


_DEFAULT_FIX = (
    "check that the config names the right file for this model and that the model's dimensions "
    "(e.g. vit_config, qformer_config, num_query_token, image_size, the LLM folder) match the weights."
)


def _is_expected_absent(expected_absent: ExpectedAbsent, key: str) -> bool:
    if callable(expected_absent):
        return bool(expected_absent(key))
    return key in expected_absent


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    file: str,
    expected_absent: ExpectedAbsent = frozenset(),
    unused: Optional[Mapping[str, str]] = None,
    shape_hint: Optional[ShapeHint] = None,
    renamed: Optional[Mapping[str, str]] = None,
    fix: str = _DEFAULT_FIX,
) -> LoadReport:
    """Copy every tensor of ``state`` into ``module`` and account for every key, or raise.

    ``state`` is keyed by ``module.state_dict()`` names (rename before calling). ``unused`` maps keys the
    caller deliberately does not use to the reason; all of them are recorded in the report, and those still
    in ``state`` are skipped. ``renamed`` (file key → state key) only improves messages and the report.
    ``expected_absent`` (a set or a predicate on model keys) marks model keys the file need not hold.
    Tensors are copied in place under ``torch.no_grad``, so each parameter/buffer keeps its dtype and device.
    Raises :class:`CheckpointKeyError` listing all unexpected keys, missing keys and shape mismatches at once.
    """
    unused = dict(unused or {})
    renamed = dict(renamed or {})
    file_name_of = {model_key: file_key for file_key, model_key in renamed.items()}
    targets = module.state_dict(keep_vars=True)

    unexpected: List[str] = []
    mismatched: List[str] = []
    to_copy: List[Tuple[str, torch.Tensor, torch.Tensor]] = []
    for key, value in state.items():
        if key in unused:
            continue
        shown = f"{file_name_of[key]} (as {key})" if key in file_name_of else key
        if key not in targets:
            unexpected.append(shown)
            continue
        target = targets[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{shown}: file holds a {type(value).__name__}, not a tensor")
            continue
        if tuple(value.shape) != tuple(target.shape):
            entry = f"{shown}: file {_shape_str(value.shape)} vs model {_shape_str(target.shape)}"
            hint = shape_hint(key, tuple(value.shape), tuple(target.shape)) if shape_hint else ""
            mismatched.append(f"{entry} ({hint})" if hint else entry)
            continue
        to_copy.append((key, target, value))

    absent = [key for key in targets if key not in state or key in unused]
    expected = [key for key in absent if _is_expected_absent(expected_absent, key)]
    missing = [key for key in absent if not _is_expected_absent(expected_absent, key)]
    if unexpected or missing or mismatched:
        raise CheckpointKeyError(file, unexpected, missing, mismatched, fix)

    with torch.no_grad():
        for _, target, value in to_copy:
            target.copy_(value)
    return LoadReport(
        file=file,
        matched=[key for key, _, _ in to_copy],
        expected_absent=expected,
        intentionally_unused=unused,
        renamed=renamed,
    )


#: the one reader (:mod:`minigpt4.common.checkpoint_io`), under its earlier name
torch_load_weights = read_weights
__all__ = ["CheckpointKeyError", "LoadReport", "WeightsFileError", "load_state_dict_strict", "torch_load_weights"]
