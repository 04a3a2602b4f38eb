"""Name → class registry for builders, models, processors, tasks, runners and LR schedulers.

The decorator and getter names are upstream MiniGPT-4's (``register_builder``, ``get_builder_class``,
``list_datasets``, ...), so a user's own builder ports over unchanged. Unlike upstream:

* ``import minigpt4`` fills the registry; scripts need no wildcard imports;
* registering a name twice raises, naming both definitions;
* an unknown name raises :class:`RegistryError` listing the known names and the closest match
  (upstream returned ``None`` and failed later with an ``AttributeError``);
* the registry holds classes and functions only: no config, paths or other global state.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, Optional, TypeVar

T = TypeVar("T")

#: kind → human word used in messages
KINDS: Dict[str, str] = {
    "builder": "dataset builder",
    "model": "model",
    "processor": "processor",
    "task": "task",
    "runner": "runner",
    "lr_scheduler": "LR scheduler",
}


class RegistryError(KeyError):
    """An unknown or duplicate registry name. ``str(err)`` is the full message."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


def closest(name: str, candidates: List[str]) -> Optional[str]:
    """The candidate most similar to ``name`` (case-insensitive), or None when nothing is close."""
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry:
    """Six name tables, one per kind. Use the module-level :data:`registry` instance."""

    def __init__(self) -> None:
        self._tables: Dict[str, Dict[str, Any]] = {kind: {} for kind in KINDS}
        self._aliases: Dict[str, Dict[str, str]] = {kind: {} for kind in KINDS}

    # ------------------------------------------------------------------ core
    def _register(self, kind: str, name: str, obj: Any, aliases: tuple = ()) -> None:
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            raise TypeError(f"registry holds classes and functions only; got {type(obj).__name__} for {kind} {name!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{KINDS[kind]} name must be a non-empty string, got {name!r}")
        for key in (name, *aliases):
            taken = self._tables[kind].get(key) or self._tables[kind].get(self._aliases[kind].get(key, ""))
            if taken is not None:
                raise RegistryError(
                    f"{KINDS[kind]} name {key!r} is already registered by {_where(taken)}; "
                    f"cannot register {_where(obj)} under the same name"
                )
        self._tables[kind][name] = obj
        for alias in aliases:
            self._aliases[kind][alias] = name

    def _decorator(self, kind: str, name: str, aliases: tuple) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            self._register(kind, name, obj, aliases)
            return obj

        return wrap

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name`` (or one of its aliases); raises :class:`RegistryError`."""
        table = self._tables[kind]
        key = self._aliases[kind].get(name, name)
        if key in table:
            return table[key]
        known = self.names(kind)
        hint = closest(str(name), known + list(self._aliases[kind]))
        msg = f"unknown {KINDS[kind]} {name!r}. Known: {', '.join(known) if known else '(none registered)'}."
        if hint is not None:
            msg += f" Did you mean {self._aliases[kind].get(hint, hint)!r}?"
        raise RegistryError(msg)

    def has(self, kind: str, name: str) -> bool:
        """Whether ``name`` (or an alias) is registered for ``kind``."""
        return name in self._tables[kind] or name in self._aliases[kind]

    def names(self, kind: str) -> List[str]:
        """Sorted canonical names of one kind (aliases excluded)."""
        return sorted(self._tables[kind])

    def aliases(self, kind: str) -> Dict[str, str]:
        """alias → canonical name for one kind."""
        return dict(self._aliases[kind])

    def unregister(self, kind: str, name: str) -> Any:
        """Remove a name (tests and interactive use); returns what was registered."""
        obj = self.get(kind, name)
        canonical = self._aliases[kind].get(name, name)
        del self._tables[kind][canonical]
        for alias in [a for a, c in self._aliases[kind].items() if c == canonical]:
            del self._aliases[kind][alias]
        return obj

    # ------------------------------------------------------------ decorators
    def register_builder(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register a dataset builder class under ``name`` (and optional alias names)."""
        return self._decorator("builder", name, tuple(aliases))

    def register_model(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register a model class under ``name``."""
        return self._decorator("model", name, tuple(aliases))

    def register_processor(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register a processor class under ``name``."""
        return self._decorator("processor", name, tuple(aliases))

    def register_task(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register a task class under ``name``."""
        return self._decorator("task", name, tuple(aliases))

    def register_runner(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register a runner class under ``name``."""
        return self._decorator("runner", name, tuple(aliases))

    def register_lr_scheduler(self, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Register an LR scheduler class under ``name``."""
        return self._decorator("lr_scheduler", name, tuple(aliases))

    # --------------------------------------------------------------- getters
    def get_builder_class(self, name: str) -> Any:
        return self.get("builder", name)

    def get_model_class(self, name: str) -> Any:
        return self.get("model", name)

    def get_processor_class(self, name: str) -> Any:
        return self.get("processor", name)

    def get_task_class(self, name: str) -> Any:
        return self.get("task", name)

    def get_runner_class(self, name: str) -> Any:
        return self.get("runner", name)

    def get_lr_scheduler_class(self, name: str) -> Any:
        return self.get("lr_scheduler", name)

    # ---------------------------------------------------------------- listers
    def list_datasets(self) -> List[str]:
        return self.names("builder")

    def list_models(self) -> List[str]:
        return self.names("model")

    def list_processors(self) -> List[str]:
        return self.names("processor")

    def list_tasks(self) -> List[str]:
        return self.names("task")

    def list_runners(self) -> List[str]:
        return self.names("runner")

    def list_lr_schedulers(self) -> List[str]:
        return self.names("lr_scheduler")


#: The package-wide registry; ``import minigpt4`` fills it.
registry = Registry()
