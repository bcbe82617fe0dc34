"""WERSA over a grid of options, in float64 at 1e-10.

* ``step`` equals the parallel causal form, and ``prefill`` (lengths 1, 3 and past a
  chunk boundary) then ``step`` equals it too: levels 0-4, softmax and relu features,
  bandwidths 0.35, 1 and 3, chunks that split the sequence;
* any padding (right, left by a non power of two, interior) gives the outputs of the
  unpadded sequence, in both modes, and the parallel form equals ``step`` on it;
* small bandwidths: from the floor to b = 4 the output is finite, the features stay
  above the denominator guard (the core averages the values) and ``beta`` and
  ``W_qkv`` receive non-zero gradients, in float32 and bfloat16, both modes.
"""

from __future__ import annotations

import math

import pytest
import torch

import wersa

F64 = torch.float64
TOL = 1e-10
DIM, HEADS, CHUNK = 16, 2, 4


def build(causal, levels=2, feature_map="softmax", b=1.0, seed=0, **opts):
    torch.manual_seed(seed)
    m = wersa.build_mixer("wersa", dim=DIM, num_heads=HEADS, causal=causal, levels=levels, num_features=16,
                          feature_map=feature_map, conv_size=5, chunk_size=CHUNK, block_size=8, **opts)
    m = m.eval().to(F64)
    with torch.no_grad():
        m.scale_weights.copy_(torch.linspace(0.2, 1.8, levels + 1)) if levels else None
        m.beta.fill_(math.log(math.expm1(b - m.min_bandwidth)))
    return m


def x_of(n, b=2, seed=1, dtype=F64):
    return torch.randn(b, n, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


GRID = [pytest.param(levels, fm, b, id=f"L{levels}-{fm}-b{b}")
        for levels in range(5) for fm in ("softmax", "relu") for b in (0.35, 1.0, 3.0)]


@pytest.mark.parametrize("levels,fm,b", GRID)
def test_step_and_prefill_equal_parallel(levels, fm, b):
    m = build(True, levels, fm, b)
    n = 23  # chunks of 4 split it
    x = x_of(n)
    with torch.no_grad():
        y = m(x)
        ys, _ = m.step_through(x)
        assert (ys - y).abs().max().item() < TOL
        for prompt in (1, 3, CHUNK + 5):  # 9: past a chunk boundary
            yp, state = m.prefill(x[:, :prompt])
            yr, _ = m.step_through(x[:, prompt:], state)
            assert (torch.cat([yp, yr], 1) - y).abs().max().item() < TOL, prompt


def _masks(n):
    """(name, mask) with 5 left pads, 3 interior pads, 4 right pads; row 1 unpadded."""
    out = []
    for name, real in (("left", [0] * 5 + [1] * n), ("interior", [1] * 7 + [0] * 3 + [1] * (n - 7)),
                       ("right", [1] * n + [0] * 4), ("mixed", [0, 0] + [1] * 6 + [0] + [1] * (n - 6) + [0])):
        out.append((name, torch.tensor([real, [1] * len(real)]).bool()))
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("levels,fm", [(0, "softmax"), (2, "softmax"), (3, "relu"), (4, "softmax")])
def test_any_padding_equals_the_unpadded_sequence(causal, levels, fm):
    m = build(causal, levels, fm)
    n = 13
    for name, mask in _masks(n):
        x = x_of(mask.shape[1], seed=3)
        x[~mask] = 5.0  # padding content must not matter
        with torch.no_grad():
            y = m(x, attention_mask=mask)
            alone = m(x[0:1, mask[0]])
            assert (y[0, mask[0]] - alone[0]).abs().max().item() < TOL, name
            assert (y[0, ~mask[0]] == 0).all(), name
            if causal:
                ys, _ = m.step_through(x, attention_mask=mask)
                assert (ys - y).abs().max().item() < TOL, name
                yp, state = m.prefill(x[:, :9], attention_mask=mask[:, :9])
                yr, _ = m.step_through(x[:, 9:], state, attention_mask=mask[:, 9:])
                assert (torch.cat([yp, yr], 1) - y).abs().max().item() < TOL, name


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b", ["floor", 0.3, 0.35, 1.0, 4.0])
def test_small_bandwidths_keep_the_layer_alive(causal, dtype, b):
    torch.manual_seed(0)
    m = wersa.build_mixer("wersa", dim=64, num_heads=2, causal=causal, num_features=64, qkv_bias=True).train()
    with torch.no_grad():
        target = m.min_bandwidth * (1 + 1e-3) if b == "floor" else b
        m.beta.fill_(math.log(math.expm1(target - m.min_bandwidth)))
        # constant values: the core is a weighted average of the values, so it must return them
        m.qkv.weight[2 * 64:].zero_()
        m.qkv.bias[2 * 64:].fill_(1.0)
    m = m.to(dtype)
    x = torch.randn(2, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(2))
    core = m.attend(x).float()
    assert torch.isfinite(core).all()
    assert (core - 1.0).abs().max().item() < 1e-3, "features fell below the denominator guard"
    with torch.no_grad():  # now real values
        m.qkv.weight[2 * 64:].normal_(0, 0.1)
    y = m(x)
    assert torch.isfinite(y.float()).all()
    y.float().square().mean().backward()
    for name in ("beta", "qkv.weight"):
        g = m.get_parameter(name).grad
        assert g is not None and torch.isfinite(g.float()).all() and g.float().abs().sum() > 0, name


@pytest.mark.parametrize("b", ["floor", 0.35, 4.0])
def test_small_bandwidths_step_equals_parallel(b):
    m = build(True, 2, "softmax", 1.0)
    with torch.no_grad():
        target = m.min_bandwidth * (1 + 1e-3) if b == "floor" else b
        m.beta.fill_(math.log(math.expm1(target - m.min_bandwidth)))
        x = x_of(17)
        y = m(x)
        ys, _ = m.step_through(x)
    assert torch.isfinite(y).all()
    assert (ys - y).abs().max().item() < 1e-10 * max(1.0, y.abs().max().item())
