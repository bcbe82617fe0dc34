"""Token mixers behind one interface (see :mod:`wersa.mixers.base`).

Importing this package registers every mechanism. One file per mechanism.
"""

import importlib

from .base import Capabilities, Mixer
from .registry import build_mixer, capabilities, list_mixers, mixer_class, mixer_options, register_mixer

# One module per mechanism; each registers itself on import. A module listed here
# that does not exist yet is skipped so the package stays importable while it grows.
_MECHANISMS = (
    "wersa", "sdpa", "softmax", "fnet", "linformer", "performer", "waveformer",
    "transnormer", "hyper", "neighborhood", "mamba", "l2vit", "lla",
)
for _name in _MECHANISMS:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # only a missing mechanism module is tolerated
        if _exc.name != f"{__name__}.{_name}":
            raise

__all__ = [
    "Capabilities", "Mixer", "build_mixer", "capabilities", "list_mixers",
    "mixer_class", "mixer_options", "register_mixer",
]
