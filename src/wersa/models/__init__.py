"""Hugging Face models built from any registered mixer.

``import wersa`` registers ``model_type = "wersa"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForSequenceClassification`` and ``AutoModelForCausalLM`` (lazily, when
transformers' Auto classes are first imported; see :mod:`wersa._auto`), so a saved
model reloads in a new process with ``import wersa`` and
``AutoModelForCausalLM.from_pretrained(folder)``.

Quick use::

    from wersa.models import WersaConfig, WersaForCausalLM
    cfg = WersaConfig(mixer="wersa", vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4)
    lm = WersaForCausalLM(cfg)
    out = lm(input_ids, labels=input_ids)          # out.loss, out.logits (B, N, V)
    lm.generate(prompt_ids, max_new_tokens=32)     # decodes from the mixers' states
"""

import importlib
from typing import Any

from .configuration import WersaConfig

# The model classes import transformers' modelling code (seconds): loaded on first use.
_LAZY = {
    "WersaCache": ".cache",
    "WersaBlock": ".modeling",
    "WersaForCausalLM": ".modeling",
    "WersaForSequenceClassification": ".modeling",
    "WersaModel": ".modeling",
    "WersaPreTrainedModel": ".modeling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_auto_classes() -> None:
    """Register with the transformers Auto classes now (``import wersa`` already arranges it lazily)."""
    from .._auto import register_models

    register_models()


__all__ = [
    "register_auto_classes",
    "WersaBlock",
    "WersaCache",
    "WersaConfig",
    "WersaForCausalLM",
    "WersaForSequenceClassification",
    "WersaModel",
    "WersaPreTrainedModel",
]
