"""A named registry of classes, shared by the mixers and the tasks.

One implementation of what both need: registration by a class decorator, lookup with a
did-you-mean, the constructor options a class accepts (read from its signature), option
checking that names the accepted ones, and plug-in modules found at import time.

Plug-ins: a package that defines mixers or tasks outside this one registers them by
naming its module in the ``wersa.mixers`` / ``wersa.tasks`` entry-point group of its
metadata, or, for local work, in the ``WERSA_PLUGINS`` environment variable (comma-separated
module names). The module is imported when the registry's package is, so its classes are
tested by the capability matrix and usable by the harness and the CLI like built-in ones.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from importlib import metadata
from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=type)

PLUGINS_ENV = "WERSA_PLUGINS"


class Registry(Generic[T]):
    """Classes registered under a name.

    Args:
        kind: what is registered, for messages ("mixer", "task").
        name_of: the registered name of a class.
        skip: constructor parameters that are not options (e.g. ``dim``).
    """

    def __init__(self, kind: str, name_of: Callable[[T], str], skip: tuple[str, ...] = ()):
        self.kind = kind
        self._name_of = name_of
        self._skip = set(skip)
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Class decorator: register ``cls`` under its name."""
        name = self._name_of(cls)
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def lookup(self, name: str) -> T:
        """The class registered as ``name``; an unknown name raises a ``ValueError`` with a did-you-mean."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name not in self._classes:
            close = difflib.get_close_matches(name, list(self._classes), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint} (available: {', '.join(self.names())})")
        return self._classes[name]

    def options(self, name: str) -> dict[str, object]:
        """Constructor options of ``name`` with their defaults (``None`` where required)."""
        sig = inspect.signature(self.lookup(name).__init__)
        out: dict[str, object] = {}
        for p in list(sig.parameters.values())[1:]:
            if p.name in self._skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            out[p.name] = None if p.default is inspect.Parameter.empty else p.default
        return out

    def check_options(self, name: str, options: dict) -> None:
        """Raise a ``ValueError`` naming unknown options (with a did-you-mean) and the accepted ones."""
        accepted = self.options(name)
        unknown = sorted(set(options) - set(accepted))
        if not unknown:
            return
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            if close:
                hints.append(f"{key!r} -> did you mean {close[0]!r}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(unknown)}{hint}; accepted: {', '.join(accepted) or 'none'}"
        )

    def load_plugins(self, group: str) -> list[str]:
        """Import plug-in modules from entry-point ``group`` and ``$WERSA_PLUGINS``; return their names.

        A plug-in that fails to import raises (with its name): a broken plug-in must not vanish quietly.
        """
        modules = [ep.value.split(":")[0] for ep in metadata.entry_points(group=group)]
        modules += [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise ImportError(f"wersa: plug-in module {module!r} ({group} / ${PLUGINS_ENV}) "
                                  f"failed to import: {exc}") from exc
        return modules
