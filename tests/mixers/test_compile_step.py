"""``Mixer.compile_step``: the token step through ``torch.compile`` gives eager's values,
states and gradients, with and without step masks, after a prefill, for WERSA (one graph,
``fullgraph=True``) and for another recurrent mixer (graph breaks allowed).

Compilation needs a C++ compiler (inductor's CPU backend); without one these tests skip.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

import wersa

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile's CPU backend needs a C++ compiler (apt-get install g++)")

DIM, HEADS = 16, 2


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each test compiles its own configurations; the recompile limit counts per function.
    torch._dynamo.reset()
    yield


def build(name="wersa", seed=0, **opts):
    torch.manual_seed(seed)
    if name == "wersa":
        opts = {"levels": 2, "num_features": 16, "conv_size": 3, "chunk_size": 4, "block_size": 8, **opts}
    return wersa.build_mixer(name, dim=DIM, num_heads=HEADS, causal=True, **opts).eval()


def x_of(n, b=2, seed=1):
    return torch.randn(b, n, DIM, generator=torch.Generator().manual_seed(seed))


def assert_close_states(a, b, tol):
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape
        if a.numel() == 0:
            return
        scale = max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= tol * scale
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_close_states(a[key], b[key], tol)
    elif isinstance(a, (list, tuple)):
        for u, v in zip(a, b):
            assert_close_states(u, v, tol)


@pytest.mark.parametrize("opts", [{}, {"levels": 0, "feature_map": "relu"}])
def test_compiled_wersa_step_equals_eager(opts):
    eager = build(**opts)
    compiled = copy.deepcopy(eager).compile_step()
    assert compiled.step_compile_options is not None and eager.step_compile_options is None
    prompt, tokens = x_of(6), x_of(5, seed=2)
    with torch.no_grad():
        _, s_eager = eager.prefill(prompt)
        _, s_comp = compiled.prefill(prompt)
        y_eager, s_eager = eager.step_through(tokens, s_eager)
        y_comp, s_comp = compiled.step_through(tokens, s_comp)
    assert (y_comp - y_eager).abs().max().item() < 1e-5
    assert_close_states(s_comp, s_eager, 1e-5)


def test_compiled_step_with_step_masks_skips_padding_as_eager():
    eager = build()
    compiled = copy.deepcopy(eager).compile_step()
    tokens = x_of(5, b=3, seed=4)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        y_eager, s_eager = eager.step_through(tokens, attention_mask=mask)
        y_comp, s_comp = compiled.step_through(tokens, attention_mask=mask)
    assert (y_comp - y_eager).abs().max().item() < 1e-5
    assert (y_comp[~mask] == 0).all()
    assert_close_states(s_comp, s_eager, 1e-5)


def test_compiled_step_gradients_equal_eager():
    eager = build(levels=1)
    compiled = copy.deepcopy(eager).compile_step()
    tokens = x_of(4, b=1, seed=5)
    grads = []
    for m in (eager, compiled):
        x = tokens.clone().requires_grad_(True)
        params = [m.beta, m.qkv.weight, m.scale_weights, m.gate_conv.weight]
        y, _ = m.step_through(x)
        grads.append(torch.autograd.grad(y.square().sum(), [x, *params]))
    for a, b in zip(*grads):
        assert b.abs().sum() > 0
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_compile_step_on_another_recurrent_mixer():
    eager = build("performer", num_features=8)
    compiled = copy.deepcopy(eager).compile_step()
    with torch.no_grad():
        y_eager, s_eager = eager.step_through(x_of(4))
        y_comp, s_comp = compiled.step_through(x_of(4))
    assert (y_comp - y_eager).abs().max().item() < 1e-5


def test_compile_step_off_and_copies():
    m = build().compile_step()
    twin = copy.deepcopy(m)  # a copy keeps the setting, not a compiled function tied to the original
    assert twin.step_compile_options == m.step_compile_options
    assert m.compile_step(False) is m and m.step_compile_options is None
    with torch.no_grad():
        y_off, _ = m.step_through(x_of(3))
        y_twin, _ = twin.step_through(x_of(3))
    assert (y_off - y_twin).abs().max().item() < 1e-5


def test_compile_step_refuses_mixers_without_a_step():
    with pytest.raises(ValueError, match="causal"):
        wersa.build_mixer("wersa", dim=DIM, num_heads=HEADS, causal=False).compile_step()
    with pytest.raises(ValueError, match="recurrent"):
        wersa.build_mixer("wersa_published", dim=DIM, num_heads=HEADS).compile_step()
    with pytest.raises(TypeError, match="options"):
        build().compile_step(not_an_option=1)


@pytest.mark.parametrize("opts", [{}, {"levels": 0, "feature_map": "relu"}])
def test_compiled_step_does_not_recompile_from_token_to_token(opts):
    # prefill and every step leave the state in one layout, so the guards of the first
    # compiled step hold for the next tokens (a recompilation per layout would cost seconds).
    m = build(**opts).compile_step()
    with torch.no_grad():
        _, state = m.prefill(x_of(6))
        _, state = m.step(x_of(1)[:, 0], state)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for t in range(3):
                _, state = m.step(x_of(1, seed=t)[:, 0], state)


def _recurrent_mixers() -> list[str]:
    return [n for n in wersa.list_mixers() if wersa.capabilities(n, causal=True).recurrent]


@pytest.mark.slow
@pytest.mark.parametrize("name", _recurrent_mixers())
def test_every_recurrent_mixer_steps_compiled_as_eager(name):
    """compile_step is the base class's, so every mixer that claims a token-by-token form gets
    it: after a prefill, compiled steps give eager's outputs (each mixer compiles; slow)."""
    opts = {k: v for k, v in {"num_features": 8, "chunk_size": 4, "block_size": 8, "window_size": 3,
                              "conv_size": 3}.items() if k in wersa.mixer_options(name)}
    eager = build(name, **opts)
    compiled = copy.deepcopy(eager).compile_step()
    with torch.no_grad():
        _, s_eager = eager.prefill(x_of(5))
        _, s_comp = compiled.prefill(x_of(5))
        y_eager, _ = eager.step_through(x_of(4, seed=2), s_eager)
        y_comp, _ = compiled.step_through(x_of(4, seed=2), s_comp)
    assert (y_comp - y_eager).abs().max().item() <= 1e-4 * max(1.0, y_eager.abs().max().item())
