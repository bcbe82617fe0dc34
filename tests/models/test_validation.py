"""Input validation of the public entry points not pinned elsewhere.

Mixer bad input (rank, width, dtype, device, NaN/Inf, mask shape/values) is pinned
for every mixer in ``tests/mixers/test_matrix.py``; config value errors in
``tests/models/test_config.py``; model id/mask errors in
``tests/models/test_causal_lm.py``; task data errors in ``tests/tasks/test_bad_inputs.py``.
This file adds the remaining cases listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import pytest
import torch

import wersa
from wersa.models import WersaConfig, WersaForCausalLM, WersaModel

CFG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def mixer():
    torch.manual_seed(0)
    return wersa.build_mixer("wersa", dim=16, num_heads=2, causal=True, num_features=16).eval()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return WersaForCausalLM(WersaConfig(mixer="wersa", mixer_options={"num_features": 16}, **CFG)).eval()


# ------------------------------------------------------------------- mixers
def test_mixer_edge_sizes(mixer):
    with torch.no_grad():
        assert mixer(torch.randn(2, 1, 16)).shape == (2, 1, 16)
        assert mixer(torch.randn(0, 5, 16)).shape == (0, 5, 16)
        y = mixer(torch.randn(2, 5, 16), attention_mask=torch.zeros(2, 5, dtype=torch.bool))
    assert (y == 0).all(), "a batch of all-padding rows gives exact zeros"


def test_mixer_mask_type_and_rank(mixer):
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, N\)"):
        mixer(x, attention_mask=torch.ones(2, 5, 1))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        mixer(x, attention_mask=[[1] * 5] * 2)
    with pytest.raises(ValueError, match="0/1"):
        mixer(x, attention_mask=torch.full((2, 5), 0.5))


@pytest.mark.parametrize("name,opts,match", [
    ("wersa", {"levels": -1}, "levels must be a non-negative integer"),
    ("wersa", {"num_features": 0}, "num_features must be a positive integer"),
    ("wersa", {"chunk_size": 0}, "chunk_size must be a positive integer"),
    ("wersa", {"feature_map": "gelu"}, "feature_map must be one of"),
    ("performer", {"num_features": 0}, "num_features must be a positive integer"),
    ("waveformer", {"levels": -1}, r"levels must be an integer in \[0, 16\]"),
])
def test_mixer_invalid_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        wersa.build_mixer(name, dim=16, num_heads=2, **opts)


def test_mixer_non_integer_dim_and_name():
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        wersa.build_mixer("wersa", dim=16.0, num_heads=2)
    with pytest.raises(TypeError, match="mixer name must be a string"):
        wersa.build_mixer(3, dim=16, num_heads=2)
    with pytest.raises(ValueError, match="did you mean 'performer'"):
        wersa.capabilities("performr")


def test_unsupported_requests_name_the_mixer(mixer):
    lin = wersa.build_mixer("linformer", dim=16, num_heads=2, max_len=8, k=4)
    with pytest.raises(ValueError, match="exceeds this mixer's max_len=8"):
        lin(torch.randn(1, 9, 16))
    wave = wersa.build_mixer("waveformer", dim=16, num_heads=2, num_features=16, form="joint_haar")
    with pytest.raises(ValueError, match="right padding only"):
        wave(torch.randn(2, 5, 16), attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="needs a causal mixer"):
        wersa.build_mixer("wersa", dim=16, num_heads=2).init_state(1)
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, D\)"):
        mixer.step(torch.randn(2, 5, 16), mixer.init_state(2))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mixer.init_state(0)


# ------------------------------------------------------------------- models
@pytest.mark.parametrize("opts,match", [
    ({"levels": -1}, "levels must be a non-negative integer"),
    ({"num_features": 0}, "num_features must be a positive integer"),
])
def test_invalid_mixer_options_fail_when_the_model_is_built(opts, match):
    """WersaConfig stores option values as given; the mixer refuses bad values when the model is built."""
    cfg = WersaConfig(mixer="wersa", mixer_options=opts, **CFG)
    with pytest.raises(ValueError, match=match):
        WersaModel(cfg)


def test_unknown_mixer_option_is_refused_by_the_config():
    """Option names are checked when the config is built (it asks wersa.capabilities with them)."""
    with pytest.raises(ValueError, match="unknown option.*levls.*did you mean 'levels'"):
        WersaConfig(mixer="wersa", mixer_options={"levls": 2}, **CFG)


def test_config_unknown_layer_mixer_suggests():
    with pytest.raises(ValueError, match="did you mean 'wersa'"):
        WersaConfig(mixer="wersa", layer_mixers=["wersaa"], **CFG)
    with pytest.raises(ValueError, match="does not divide hidden_size"):
        WersaConfig(mixer="wersa", **{**CFG, "num_attention_heads": 3})


def test_model_wrong_input_shapes_and_dtypes(lm):
    ids = torch.zeros(2, 5, dtype=torch.long)
    for bad in (torch.randn(2, 5), torch.randint(0, 50, (5,)), torch.randint(0, 50, (2, 5, 1))):
        with pytest.raises(ValueError, match=r"input_ids must be an integer tensor of shape \(B, N\)"):
            lm(bad)
    with pytest.raises(ValueError, match="input_ids must lie in"):
        lm(torch.full((2, 5), -1))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        lm(inputs_embeds=torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="pass exactly one of"):
        lm(ids, inputs_embeds=torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="pass exactly one of"):
        lm()
    with pytest.raises(ValueError, match="labels must have shape"):
        lm(ids, labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        lm(inputs_embeds=torch.randn(2, 5, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        lm(inputs_embeds=torch.full((2, 5, 16), float("nan")))
    with torch.no_grad():
        out = lm(torch.zeros(2, 0, dtype=torch.long))
    assert out.logits.shape[:2] == (2, 0)
