"""Token mixers behind one interface (see :mod:`wersa.mixers.base`).

Importing this package registers every mechanism (one file per mechanism); ``import wersa``
then imports plug-in mixers (entry-point group ``wersa.mixers`` or ``$WERSA_PLUGINS``; see
:mod:`wersa.registry` and ``docs/adding-a-mixer.md``).
"""

import importlib

from .base import Capabilities, Mixer
from .registry import (MIXERS, build_mixer, capabilities, list_mixers, mixer_class, mixer_example_options,
                       mixer_options, register_mixer)

# One module per mechanism; each registers itself on import.
_MECHANISMS = (
    "wersa", "wersa_published", "sdpa", "softmax", "fnet", "linformer", "performer", "waveformer",
    "transnormer", "hyper", "neighborhood", "mamba", "l2vit", "lla",
)
for _name in _MECHANISMS:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "Capabilities", "Mixer", "build_mixer", "capabilities", "list_mixers",
    "mixer_class", "mixer_example_options", "mixer_options", "register_mixer",
]
