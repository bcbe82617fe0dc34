"""The registry of tasks: ``list_tasks``, ``build_task``, ``task_options``.

A task module registers its class with :func:`register_task` at import time; the
benchmark harness and the command line discover tasks from here.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Task

TASKS: Registry = Registry("task", name_of=lambda cls: cls.name)


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute `name`")
    return TASKS.register(cls)


def list_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    return TASKS.names()


def task_class(name: str) -> type[Task]:
    return TASKS.lookup(name)


def task_options(name: str) -> dict[str, object]:
    """The options ``build_task(name, ...)`` accepts, with their defaults (``None`` if required)."""
    return TASKS.options(name)


def build_task(name: str, **options) -> Task:
    """Build task ``name``. Unknown options raise a ``ValueError`` listing the accepted ones."""
    cls = TASKS.lookup(name)
    TASKS.check_options(name, options)
    return cls(**options)
