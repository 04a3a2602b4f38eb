"""The one writer and the one reader of weight files (checkpoints, trainer states, EVA / BLIP-2 / model weights).

Writing: :func:`atomic_write` writes to a temporary name beside the target, flushes and fsyncs it, renames it into
place with ``os.replace`` and fsyncs the folder, so a crash leaves either the old file or the complete new one;
:func:`atomic_torch_save` and :func:`atomic_write_json` are its two uses.

Reading: :func:`read_weights` opens ``.safetensors`` with safetensors and everything else with
``torch.load(weights_only=True)`` (no pickled code runs). A file that cannot be read raises
:class:`WeightsFileError` (a ``ValueError``) whose message is one line: the file, what is wrong with it
(empty, truncated or damaged, not a PyTorch file, pickled objects) and the config key that points at it.
:func:`read_saved_config` reads only the ``"config"`` entry of a FaceGPT checkpoint (memory-mapped).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

PathLike = Union[str, os.PathLike]
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a pickle (torch's legacy, non-zip format)


class WeightsFileError(ValueError):
    """A weights file exists but cannot be read safely; the message names the file, the fault and the key."""

    def __init__(self, path: PathLike, problem: str, key: Optional[str] = None, what: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.key = key
        where = f" (set by {key})" if key else ""
        expected = f"; expected {what}" if what else ""
        super().__init__(f"{self.path}{where} {problem}{expected}")


class MissingWeightsFileError(WeightsFileError, FileNotFoundError):
    """A weights file named by the config does not exist (also a ``FileNotFoundError``)."""


# ------------------------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse to open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a partial file under ``path``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    """JSON (indented, UTF-8) written atomically."""
    return atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


# ------------------------------------------------------------------------------------------- reading


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def diagnose(path: PathLike, err: BaseException) -> str:
    """What is wrong with a file that ``torch.load`` refused, judged from its bytes (one phrase)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): the write that made it did not finish"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"is truncated or damaged ({size} bytes; its zip archive is incomplete)"
        if bad is not None:
            return f"is damaged ({size} bytes; member {bad} fails its checksum)"
        return _refused(err)
    if head and head[0] == _PICKLE_PROTO:
        if isinstance(err, EOFError) or "EOF" in str(err) or "truncated" in str(err).lower():
            return f"is truncated ({size} bytes; an old-format torch file that ends early)"
        return _refused(err)
    return f"is not a PyTorch weights file that torch.load(weights_only=True) can read (starts with {head!r})"


def _refused(err: BaseException) -> str:
    """The message for a well-formed torch file whose content ``weights_only`` refuses or cannot parse."""
    return ("is not a PyTorch weights file that torch.load(weights_only=True) can read: it holds pickled Python "
            f"objects ({_first_line(err)}); if it was written with torch.save(model), load it once in a trusted "
            "session and re-save model.state_dict()")


def _check_exists(path: Path, key: Optional[str], what: str) -> None:
    if not path.exists():
        fix = f"set {key} to an existing file" if key else "set the path in the config"
        raise MissingWeightsFileError(path, f"does not exist: no such file; {fix}", key, what)
    if path.is_dir():
        raise IsADirectoryError(f"{path}{f' (set by {key})' if key else ''} is a folder; it should be a file "
                                f"holding {what or 'weights'}")


def _read_safetensors(path: Path, key: Optional[str], what: str) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        fault = "is empty (0 bytes)" if size == 0 else f"is not a readable safetensors file ({size} bytes; " \
            f"truncated or damaged: {_first_line(err)})"
        raise WeightsFileError(path, fault, key, what) from err


def read_weights(path: PathLike, what: str = "", key: Optional[str] = None, mmap: bool = False) -> Any:
    """Read a weights file safely: safetensors, or ``torch.load(map_location="cpu", weights_only=True)``.

    ``what`` says what belongs there and ``key`` which config key names the file; both appear in errors:
    :class:`MissingWeightsFileError` when it does not exist, :class:`WeightsFileError` when it cannot be read.
    ``mmap`` maps a zip-format file instead of reading it (cheap look-ups such as the saved config).
    """
    path = Path(path)
    _check_exists(path, key, what)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, key, what)
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == _ZIP_MAGIC
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError, OSError ...
        raise WeightsFileError(path, diagnose(path, err), key, what) from err


def read_saved_config(path: PathLike, key: Optional[str] = "model.ckpt") -> Optional[Dict[str, Any]]:
    """The resolved config a FaceGPT checkpoint carries (``{"model": {...}, "run": ...}``), else None.

    Released MiniGPT-4 / MiniGPT-v2 checkpoints carry none. The file is memory-mapped, so only the small
    ``config`` entry is read; a damaged file raises :class:`WeightsFileError`.
    """
    raw = read_weights(path, "a MiniGPT-4 / MiniGPT-v2 / FaceGPT checkpoint ({'model': {...}})", key, mmap=True)
    config = raw.get("config") if isinstance(raw, dict) else None
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        return config
    return None
