"""The causal Haar pyramid: prefix form vs per-position reference, causality, recurrence."""

import pytest
import torch

from wersa.ops.causal_pyramid import causal_haar_pyramid, causal_haar_pyramid_reference, causal_haar_pyramid_step


@pytest.mark.parametrize("n", [1, 3, 8, 29])
@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_matches_reference_values_and_gradients(n, levels):
    x = torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True)
    gains = torch.rand(2, n, levels + 1, dtype=torch.float64, requires_grad=True)
    fast = causal_haar_pyramid(x, gains, levels)
    ref = causal_haar_pyramid_reference(x, gains, levels)
    assert torch.allclose(fast, ref, atol=1e-12)
    g = torch.randn_like(fast)
    for a, b in zip(torch.autograd.grad(fast, (x, gains), g), torch.autograd.grad(ref, (x, gains), g)):
        assert torch.allclose(a, b, atol=1e-10)


def test_equal_gains_telescope_to_identity():
    x = torch.randn(2, 50, 4, dtype=torch.float64)
    gains = torch.full((2, 50, 4), 1.0, dtype=torch.float64)
    assert torch.allclose(causal_haar_pyramid(x, gains, 3), x, atol=1e-12)


def test_causal_by_perturbation():
    x = torch.randn(1, 40, 3, dtype=torch.float64)
    gains = torch.rand(1, 40, 4, dtype=torch.float64)
    x2, g2 = x.clone(), gains.clone()
    x2[:, 25:] += 1.0
    g2[:, 25:] = torch.rand(1, 15, 4, dtype=torch.float64)
    y, y2 = causal_haar_pyramid(x, gains, 3), causal_haar_pyramid(x2, g2, 3)
    assert torch.equal(y[:, :25], y2[:, :25])


def test_step_equals_parallel():
    levels, n = 3, 21
    x = torch.randn(2, 2, n, 4, dtype=torch.float64)
    gains = torch.rand(2, n, levels + 1, dtype=torch.float64)
    history = torch.zeros(2, 2, 2 ** levels - 1, 4, dtype=torch.float64)
    outs = []
    for t in range(n):
        y, history = causal_haar_pyramid_step(x[:, :, t], history, gains[:, t], levels)
        outs.append(y)
    assert torch.allclose(torch.stack(outs, 2), causal_haar_pyramid(x, gains, levels), atol=1e-12)


def test_long_sequence_keeps_precision():
    """No global prefix sum: a large offset at 128k tokens does not destroy the detail bands."""
    n = 1 << 17
    x = torch.randn(1, n, 2) + 1000.0
    gains = torch.zeros(1, n, 3)
    gains[..., 1] = 1.0  # finest detail only: x - mean of the last two tokens
    y = causal_haar_pyramid(x, gains, 2)
    expect = x[:, -1] - 0.5 * (x[:, -1] + x[:, -2])
    assert torch.allclose(y[:, -1], expect, atol=1e-3)


@pytest.mark.parametrize("levels", [0, 1, 2, 3, 4])
def test_window_weights_equal_pyramid_step(levels):
    from wersa.ops.causal_pyramid import causal_haar_pyramid_step, pyramid_window_weights

    g = torch.Generator().manual_seed(levels)
    window = torch.randn(3, 2, 2 ** levels, 5, generator=g, dtype=torch.float64)  # (B, H, 2^L, d), newest last
    gains = torch.rand(3, levels + 1, generator=g, dtype=torch.float64)
    ref, hist = causal_haar_pyramid_step(window[..., -1, :], window[..., :-1, :], gains, levels)
    w = gains @ pyramid_window_weights(levels, dtype=torch.float64)  # (B, 2^L)
    out = (w.view(3, 1, 1, -1) @ window).squeeze(-2)
    assert (out - ref).abs().max().item() < 1e-12
