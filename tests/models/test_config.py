"""WersaConfig: validation, per-layer mixers, Auto registration, save/load."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from wersa.models import WersaConfig

from .helpers import tiny_config


def test_auto_config_round_trip(tmp_path):
    cfg = tiny_config("_toy_recurrent", hidden_act="swiglu", norm_type="layernorm", num_labels=5,
                      layer_mixer_options=[None, {}])
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, WersaConfig) and back.model_type == "wersa"
    for key in ("mixer", "mixer_options", "hidden_size", "intermediate_size", "hidden_act", "norm_type",
                "num_labels", "layer_mixer_options", "tie_word_embeddings"):
        assert getattr(back, key) == getattr(cfg, key), key


def test_defaults_resolve_ffn_width():
    assert tiny_config("_toy_recurrent").intermediate_size == 4 * 32
    swiglu = tiny_config("_toy_recurrent", hidden_act="swiglu").intermediate_size
    assert swiglu % 8 == 0 and swiglu >= 8 * 32 / 3


def test_layer_specs_merge_options():
    cfg = WersaConfig(mixer="_toy_recurrent", mixer_options={}, layer_mixers=["_toy_recurrent", "_toy_history"],
                      causal=True, vocab_size=10, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    assert [name for name, _ in cfg.layer_specs()] == ["_toy_recurrent", "_toy_history"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": -4}, "hidden_size must be a positive integer"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"num_attention_heads": 3}, "does not divide hidden_size"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"hidden_act": "relu"}, "hidden_act must be one of"),
        ({"norm_type": "batchnorm"}, "norm_type must be one of"),
        ({"position_embedding_type": "rotary"}, "rotary"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type must be one of"),
        ({"position_embedding_type": "learned", "max_position_embeddings": None}, "max_position_embeddings"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"classifier_pooling": "max"}, "classifier_pooling"),
        ({"vocab_size": None}, "exactly one of vocab_size"),
        ({"input_dim": 3}, "exactly one of vocab_size"),
        ({"layer_mixers": ["_toy_recurrent"]}, "one mixer name per layer"),
        ({"layer_mixer_options": [{}]}, "one dict"),
        ({"mixer": "_toy_recurent"}, "did you mean '_toy_recurrent'"),
        ({"mixer": "_toy_history", "causal": False}, "causal only"),
        ({"pad_token_id": 99}, "pad_token_id"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config("_toy_recurrent", **kwargs)


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="mixer_options must be a dict"):
        tiny_config("_toy_recurrent", mixer_options=[1])
    with pytest.raises(TypeError, match="causal must be"):
        tiny_config("_toy_recurrent", causal="yes")
