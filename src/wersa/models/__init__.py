"""Hugging Face models built from any registered mixer.

Importing this package registers ``model_type = "wersa"`` with ``AutoConfig``,
``AutoModel``, ``AutoModelForSequenceClassification`` and ``AutoModelForCausalLM``.

Quick use::

    from wersa.models import WersaConfig, WersaForCausalLM
    cfg = WersaConfig(mixer="wersa", vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4)
    lm = WersaForCausalLM(cfg)
    out = lm(input_ids, labels=input_ids)          # out.loss, out.logits (B, N, V)
    lm.generate(prompt_ids, max_new_tokens=32)     # decodes from the mixers' states
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .cache import WersaCache
from .configuration import WersaConfig
from .modeling import (
    WersaBlock,
    WersaForCausalLM,
    WersaForSequenceClassification,
    WersaModel,
    WersaPreTrainedModel,
)


def _register() -> None:
    # exist_ok: re-importing (reloads, several test sessions) must not fail.
    AutoConfig.register("wersa", WersaConfig, exist_ok=True)
    AutoModel.register(WersaConfig, WersaModel, exist_ok=True)
    AutoModelForSequenceClassification.register(WersaConfig, WersaForSequenceClassification, exist_ok=True)
    AutoModelForCausalLM.register(WersaConfig, WersaForCausalLM, exist_ok=True)


_register()

__all__ = [
    "WersaBlock",
    "WersaCache",
    "WersaConfig",
    "WersaForCausalLM",
    "WersaForSequenceClassification",
    "WersaModel",
    "WersaPreTrainedModel",
]
