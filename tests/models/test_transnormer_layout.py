"""A model built with mixer="transnormer" stacks the paper's layout: Diag below, Norm above."""

from __future__ import annotations

import torch

from wersa.models import WersaConfig, WersaForCausalLM


def _model(**kw) -> WersaForCausalLM:
    cfg = WersaConfig(mixer="transnormer", vocab_size=32, hidden_size=16, num_hidden_layers=4,
                      num_attention_heads=2, max_position_embeddings=64, **kw)
    return WersaForCausalLM(cfg)


def _kinds(model) -> list[str]:
    return [layer.mixer.attention for layer in model.model.layers]


def test_default_layout_is_diag_then_norm():
    model = _model(mixer_options={"window_size": 4})
    assert _kinds(model) == ["diag", "diag", "norm", "norm"]
    assert all(layer.mixer.window_size == 4 for layer in model.model.layers)
    ids = torch.randint(0, 32, (2, 9))
    assert torch.isfinite(model(input_ids=ids).logits).all()
    odd = WersaConfig(mixer="transnormer", vocab_size=32, hidden_size=16, num_hidden_layers=3,
                      num_attention_heads=2, max_position_embeddings=64)
    assert [o["attention"] for _, o in odd.layer_specs()] == ["diag", "norm", "norm"]


def test_layout_overridable_globally_and_per_layer():
    assert _kinds(_model(mixer_options={"attention": "norm"})) == ["norm"] * 4
    per_layer = [None, {"attention": "norm"}, {"attention": "diag"}, {}]
    assert _kinds(_model(layer_mixer_options=per_layer)) == ["diag", "norm", "diag", "norm"]
