"""The registry of mixers: ``list_mixers``, ``capabilities``, ``build_mixer``.

A mechanism registers itself with :func:`register_mixer` at import time; the
test matrix, the models and the benchmark harness discover it from here.
"""

from __future__ import annotations

import difflib
import inspect
import warnings

from .base import Capabilities, Mixer

_REGISTRY: dict[str, type[Mixer]] = {}


def register_mixer(cls: type[Mixer]) -> type[Mixer]:
    """Class decorator: register ``cls`` under ``cls.capabilities.name``."""
    caps = getattr(cls, "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise TypeError(f"{cls.__name__} must define a Capabilities as `capabilities`")
    if caps.name in _REGISTRY and _REGISTRY[caps.name] is not cls:
        raise ValueError(f"a mixer named {caps.name!r} is already registered")
    _REGISTRY[caps.name] = cls
    return cls


def _lookup(name: str) -> type[Mixer]:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}{hint} (available: {', '.join(list_mixers())})")
    return _REGISTRY[name]


def list_mixers() -> list[str]:
    """Names of every registered mixer, sorted."""
    return sorted(_REGISTRY)


def capabilities(name: str, **options) -> Capabilities:
    """What mixer ``name`` supports, built with ``options`` (``causal`` included).

    Without options: the claims of the default instance in either mode. With options:
    exactly what ``build_mixer(name, dim, num_heads, **options).capabilities`` reports
    (an option can narrow a claim, e.g. WERSA's exact kernel is not recurrent).
    Unknown options raise a ``ValueError`` listing the accepted ones.
    """
    cls = _lookup(name)
    causal = bool(options.pop("causal", False))
    options = _check_options(name, options)
    full = {**mixer_options(name), **options}
    return cls.capabilities_for(causal=causal, **full)


def mixer_class(name: str) -> type[Mixer]:
    return _lookup(name)


def mixer_options(name: str) -> dict[str, object]:
    """The options ``build_mixer(name, ...)`` accepts beyond dim/num_heads/causal, with defaults."""
    sig = inspect.signature(_lookup(name).__init__)
    out = {}
    for p in list(sig.parameters.values())[1:]:
        if p.name in ("dim", "num_heads", "causal") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def build_mixer(name: str, dim: int, num_heads: int, causal: bool = False, **options) -> Mixer:
    """Build mixer ``name`` for width ``dim`` with ``num_heads`` heads.

    Unknown options raise a ``ValueError`` listing the accepted ones.
    """
    cls = _lookup(name)
    options = _check_options(name, options)
    return cls(dim=dim, num_heads=num_heads, causal=causal, **options)


def renamed_options(name: str, options: dict) -> dict:
    """``options`` with names renamed since 0.1.0 mapped to the current ones (FutureWarning)."""
    renames = _lookup(name).renamed_options
    out = dict(options)
    for old, new in renames.items():
        if old in out:
            targets = (new,) if isinstance(new, str) else tuple(new)  # one old name may become several
            clash = [t for t in targets if t in out]
            if clash:
                raise ValueError(f"{name}: option {old!r} was renamed {' / '.join(map(repr, targets))}; "
                                 f"pass only {' / '.join(map(repr, clash))}")
            warnings.warn(f"{name}: option {old!r} is now called {' / '.join(map(repr, targets))} "
                          f"(see CHANGELOG.md)", FutureWarning, stacklevel=3)
            value = out.pop(old)
            out.update({t: value for t in targets})
    return out


def _check_options(name: str, options: dict) -> dict:
    """Validate option names (renamed ones mapped); return the options to pass on."""
    options = renamed_options(name, options)
    accepted = mixer_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            if close:
                hints.append(f"{key!r} -> did you mean {close[0]!r}?")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(unknown)}{hint}; accepted: {', '.join(accepted) or 'none'}"
        )
    return options
