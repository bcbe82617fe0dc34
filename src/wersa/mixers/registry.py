"""The registry of mixers: ``list_mixers``, ``capabilities``, ``build_mixer``.

A mechanism registers itself with :func:`register_mixer` at import time; the
test matrix, the models and the benchmark harness discover it from here.
"""

from __future__ import annotations

import warnings

from ..registry import Registry
from .base import Capabilities, Mixer

MIXERS: Registry = Registry("mixer", name_of=lambda cls: cls.capabilities.name,
                           skip=("dim", "num_heads", "causal"))


def register_mixer(cls: type[Mixer]) -> type[Mixer]:
    """Class decorator: register ``cls`` under ``cls.capabilities.name``."""
    caps = getattr(cls, "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise TypeError(f"{cls.__name__} must define a Capabilities as `capabilities`")
    return MIXERS.register(cls)


def list_mixers() -> list[str]:
    """Names of every registered mixer, sorted."""
    return MIXERS.names()


def mixer_class(name: str) -> type[Mixer]:
    return MIXERS.lookup(name)


def mixer_options(name: str) -> dict[str, object]:
    """The options ``build_mixer(name, ...)`` accepts beyond dim/num_heads/causal, with defaults."""
    return MIXERS.options(name)


def mixer_example_options(name: str) -> list[dict[str, object]]:
    """The option sets the capability matrix and the property tests build mixer ``name`` with.

    ``[{}]`` (the defaults) followed by the class's ``example_options``. A set naming an
    option the constructor does not take raises a ``ValueError``: after a rename, a
    silently dropped set would leave its code paths untested.
    """
    cls = MIXERS.lookup(name)
    for options in cls.example_options:
        try:
            MIXERS.check_options(name, options)
        except ValueError as exc:
            raise ValueError(f"{cls.__name__}.example_options: {exc}") from None
    return [{}, *(dict(o) for o in cls.example_options)]


def capabilities(name: str, **options) -> Capabilities:
    """What mixer ``name`` supports, built with ``options`` (``causal`` included).

    Without options: the claims of the default instance in either mode. With options:
    exactly what ``build_mixer(name, dim, num_heads, **options).capabilities`` reports
    (an option can narrow a claim, e.g. WERSA's exact kernel is not recurrent).
    Unknown options raise a ``ValueError`` listing the accepted ones.
    """
    cls = MIXERS.lookup(name)
    causal = bool(options.pop("causal", False))
    options = _check_options(name, options)
    full = {**mixer_options(name), **options}
    return cls.capabilities_for(causal=causal, **full)



def build_mixer(name: str, dim: int, num_heads: int, causal: bool = False, **options) -> Mixer:
    """Build mixer ``name`` for width ``dim`` with ``num_heads`` heads.

    Unknown options raise a ``ValueError`` listing the accepted ones.
    """
    cls = MIXERS.lookup(name)
    options = _check_options(name, options)
    return cls(dim=dim, num_heads=num_heads, causal=causal, **options)


def renamed_options(name: str, options: dict) -> dict:
    """``options`` with names renamed since 0.1.0 mapped to the current ones (FutureWarning)."""
    renames = MIXERS.lookup(name).renamed_options
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
    MIXERS.check_options(name, options)
    return options
