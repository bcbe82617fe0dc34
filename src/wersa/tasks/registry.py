"""The registry of tasks: ``list_tasks``, ``build_task``, ``task_options``.

A task module registers its class with :func:`register_task` at import time; the
benchmark harness and the command line discover tasks from here.
"""

from __future__ import annotations

import difflib
import inspect

from .base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute `name`")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a task named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def _lookup(name: str) -> type[Task]:
    if not isinstance(name, str):
        raise TypeError(f"task name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} (available: {', '.join(list_tasks())})")
    return _REGISTRY[name]


def list_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    return sorted(_REGISTRY)


def task_class(name: str) -> type[Task]:
    return _lookup(name)


def task_options(name: str) -> dict[str, object]:
    """The options ``build_task(name, ...)`` accepts, with their defaults (``None`` if required)."""
    sig = inspect.signature(_lookup(name).__init__)
    out: dict[str, object] = {}
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def build_task(name: str, **options) -> Task:
    """Build task ``name``. Unknown options raise a ``ValueError`` listing the accepted ones."""
    cls = _lookup(name)
    accepted = task_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(**options)
