"""User errors: faults in a user's data, config, weights files or command line, reported as one line, exit 2.

Every entry point (``train.py``, the demos, ``python -m minigpt4.tools.evaluate``, ``facegpt-data``) runs its
work through :func:`run_main` (or the :func:`entry_point` decorator). A *user error* then reaches the terminal as
one line, ``<program>: <what is wrong, where, and the fix>``, and the process exits with status 2; any other
exception is a programming error and keeps its traceback (exit status 1). Under ``torchrun`` rank 0 prints the
line and every rank exits with 2 (see :func:`report_user_error`). ``FACEGPT_TRACEBACK=1`` shows the traceback of
a user error too.

What counts as a user error:

* a subclass of :class:`UserError` (new error classes should derive from it, e.g.
  ``class DamagedCheckpointError(UserError, OSError)``);
* a class passed to :func:`register_user_error`, or named in :data:`USER_ERROR_NAMES` (classes of the package
  that derive from ``RuntimeError``/``KeyError``/``OSError``, named by string so this module imports nothing);
* any ``ValueError`` subclass defined inside the ``minigpt4`` package (``RecordError``, ``DataFormatError``,
  ``SectionError``, ``ModelConfigError``, ``PromptError``, ...): the package raises those only for bad input.
  A plain ``ValueError`` is not one: it may come from a bug.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence, Set, TextIO, Type

EXIT_OK, EXIT_FAILURE, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
TRACEBACK_ENV = "FACEGPT_TRACEBACK"
RANK_WAIT_S = 10.0  # how long a rank other than 0 waits for rank 0 to report the same user error
_PACKAGE = "minigpt4"

#: Project exception classes (``module.QualName``) that are user errors without deriving from UserError/ValueError.
USER_ERROR_NAMES: Set[str] = {
    "minigpt4.common.registry.RegistryError",  # an unknown registry name in a config
    "minigpt4.conversation.factory.ChatSetupError",  # the chat engine cannot be built from this config
    "minigpt4.models.keymap.CheckpointKeyError",  # a checkpoint made for another model
    "minigpt4.models.keymap.WeightsFileError",  # a file that is not a readable weights file
    "minigpt4.processors.image_io.ImageOpenError",  # a missing or undecodable image (strict_images, --image)
}
_registered: Set[Type[BaseException]] = set()
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_EXC_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception):\s*")


class UserError(Exception):
    """A fault in what the user gave (data, config, file, flag); the message says where, what, and the fix.

    Subclass it for new error kinds; combine with a builtin base where callers catch that, e.g.
    ``class ImagePathError(UserError, ValueError)``.
    """

    exit_status: int = EXIT_USER_ERROR

    def one_line(self) -> str:
        """The message on one line (subclasses with structured content may format it better)."""
        return flatten(str(self))


def register_user_error(*classes: Type[BaseException]) -> Any:
    """Mark exception classes as user errors; usable as a class decorator (``@register_user_error``)."""
    _registered.update(classes)
    return classes[0] if len(classes) == 1 else classes


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_user_error_class(cls: type) -> bool:
    if issubclass(cls, UserError) or any(issubclass(cls, r) for r in _registered):
        return True
    for base in cls.__mro__:
        if _qualified(base) in USER_ERROR_NAMES:
            return True
        if base.__module__.split(".")[0] == _PACKAGE and issubclass(base, ValueError):
            return True
    return False


def _worker_error_class(err: BaseException) -> Optional[type]:
    """The class of the original exception when ``err`` re-raises one from a ``DataLoader`` worker (torch wraps
    it in a ``RuntimeError`` whose message ends with the original ``module.Class: message`` line)."""
    text = str(err)
    if _WORKER_TRACEBACK not in text:
        return None
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    match = re.match(r"^([A-Za-z_][\w.]*)\.([A-Za-z_]\w*): ", last)
    module = sys.modules.get(match.group(1)) if match else None
    cls = getattr(module, match.group(2), None) if match else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def is_user_error(err: BaseException) -> bool:
    """True for an exception caused by the user's input (see the module docstring for the rules), also when a
    ``DataLoader`` worker raised it."""
    if _is_user_error_class(type(err)):
        return True
    original = _worker_error_class(err)
    return original is not None and _is_user_error_class(original)


def flatten(text: str) -> str:
    """Multi-line text as one line: lines ending in ':' run on, other line breaks become '; '."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = ""
    for line in (ln for ln in lines if ln):
        line = line[2:] if line.startswith("- ") else line
        if not out:
            out = line
        elif out.endswith(":"):
            out += " " + line
        elif line.lower().startswith("fix:"):
            out += (" " if out.endswith(".") else ". ") + line
        else:
            out += "; " + line
    return out


def one_line(err: BaseException) -> str:
    """An exception's message on one line.

    An error re-raised from a ``DataLoader`` worker carries the worker's traceback in its message: only its last
    line (the original message) is kept.
    """
    if isinstance(err, UserError):
        text = err.one_line()
    else:
        text = str(err)
        if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
            text = err.args[0]  # str(KeyError) adds quotes
    if _WORKER_TRACEBACK in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = _EXC_PREFIX.sub("", last.strip(), count=1)
    return flatten(text) or type(err).__name__


def _rank() -> int:
    """This process's rank in a torchrun job (torchrun sets RANK in every worker's environment); 0 otherwise."""
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        return 0


def _wait_for_rank_zero(status: int, seconds: float) -> None:
    """Give rank 0 time to print the same error before this rank exits (torchrun stops the other workers as soon as
    one exits); when torchrun's SIGTERM comes first, exit at once with ``status``."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, frame: Any) -> None:
        os._exit(status)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        time.sleep(seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_user_error(prog: str, err: BaseException, stream: Optional[TextIO] = None) -> int:
    """Print ``prog: <one line>`` and return the exit status for ``err``.

    Under torchrun every rank usually meets the same fault: rank 0 prints it; another rank waits up to
    :data:`RANK_WAIT_S` seconds for torchrun to stop it (exit status unchanged) and prints its own line only if
    that does not happen (a fault seen by that rank alone).
    """
    status = int(getattr(err, "exit_status", EXIT_USER_ERROR))
    rank = _rank()
    if rank:
        sys.stderr.flush()
        _wait_for_rank_zero(status, RANK_WAIT_S)
        prog = f"{prog} [rank {rank}]"
    stream = stream or sys.stderr
    stream.write(f"{prog}: {one_line(err)}\n")
    stream.flush()
    return status


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None, *,
             prog: Optional[str] = None, stderr: Optional[TextIO] = None) -> int:
    """Call ``main(argv)`` and return its exit status; a user error becomes one line on stderr and status 2.

    ``SystemExit`` raised with a message (``raise SystemExit("give --root DIR")``) is a usage error: the message
    is printed the same way and the status is 2. ``SystemExit`` with a number (argparse) passes through, and so
    does every exception that is not a user error (its traceback is the useful report).
    """
    prog = prog or os.path.basename(sys.argv[0] or "facegpt")
    try:
        status = main(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            return report_user_error(prog, UserError(exit_.code), stderr)
        raise
    except Exception as err:
        if not is_user_error(err) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        return report_user_error(prog, err, stderr)
    return int(status or 0)


def entry_point(prog: str) -> Callable[[Callable[..., Optional[int]]], Callable[..., int]]:
    """Decorator form of :func:`run_main` for a ``main(argv=None) -> int`` function."""

    def wrap(main: Callable[..., Optional[int]]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Optional[Sequence[str]] = None) -> int:
            return run_main(main, argv, prog=prog)

        return wrapped

    return wrap
