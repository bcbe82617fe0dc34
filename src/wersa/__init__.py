"""wersa: linear-time attention for very long sequences.

Layers (data flows downward; nothing imports upward)::

    cli     wersa bench | scale | report | train | generate | data
    bench   isolated benchmark cells, FLOPs, memory, results store, tables and plots
    tasks   datasets and generators behind one task interface
    models  encoder classifier and causal LM (Hugging Face compatible)
    mixers  one module per mechanism, all implementing the Mixer contract
    ops     parameter-free functions, each fast path beside its naive reference

Quick use::

    import wersa
    wersa.list_mixers()
    m = wersa.build_mixer("wersa", dim=256, num_heads=4, causal=True)
    y = m(x)                      # (B, N, 256) -> (B, N, 256)
"""

from . import _auto
from .mixers import (MIXERS, Capabilities, Mixer, build_mixer, capabilities, list_mixers, mixer_example_options,
                     mixer_options, register_mixer)

__version__ = "0.1.0"

_auto.install()  # AutoConfig / AutoModelForCausalLM know "wersa" once transformers loads them

__all__ = [
    "Capabilities",
    "Mixer",
    "build_mixer",
    "capabilities",
    "list_mixers",
    "mixer_example_options",
    "mixer_options",
    "register_mixer",
    "__version__",
]

# Mixers defined outside this package (entry points or $WERSA_PLUGINS), imported last so that
# they can use everything above.
MIXERS.load_plugins("wersa.mixers")
