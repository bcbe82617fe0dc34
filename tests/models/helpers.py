"""Shared helpers of the model tests: tiny configs for any registered mixer."""

from __future__ import annotations

from typing import Any

import wersa
from wersa.models import WersaConfig

from .toy_mixers import TOY_NAMES

VOCAB = 23
WIDTH = 32
HEADS = 2
LAYERS = 2

# Size options shrunk for speed, by option name, so a new mixer with the same
# option names is kept small automatically. Small chunk/block sizes also make
# length-20 sequences cross chunk boundaries.
_SMALL = {"num_features": 32, "projected_length": 8, "max_len": 64, "chunk_size": 8, "block_size": 8,
          "window_size": 5, "conv_size": 5}


def all_mixers() -> list[str]:
    return sorted(set(wersa.list_mixers()) | set(TOY_NAMES))


def mixers_where(**caps: Any) -> list[str]:
    """Registered mixers (and the toy ones) whose capabilities match ``caps``."""
    from .toy_mixers import TOY_MIXERS

    toy_caps = {c.capabilities.name: c.capabilities for c in TOY_MIXERS}
    out = []
    for name in all_mixers():
        c = toy_caps.get(name) or wersa.capabilities(name)
        if all(getattr(c, k) == v for k, v in caps.items()):
            out.append(name)
    return out


def tiny_options(name: str) -> dict[str, Any]:
    accepted = wersa.mixer_options(name)
    return {k: v for k, v in _SMALL.items() if k in accepted}


def tiny_config(name: str, **overrides: Any) -> WersaConfig:
    kw: dict[str, Any] = dict(
        mixer=name, mixer_options=tiny_options(name), vocab_size=VOCAB, hidden_size=WIDTH,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=64,
    )
    kw.update(overrides)
    return WersaConfig(**kw)
