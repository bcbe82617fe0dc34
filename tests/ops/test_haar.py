"""Haar DWT / iDWT against PyWavelets, perfect reconstruction, and the gated filter."""

import numpy as np
import pytest
import torch

from wersa.bench.memory import AllocatedBytes
from wersa.ops.haar import block_mean, haar_dwt, haar_filter, haar_filter_reference, haar_idwt, padded_length

pywt = pytest.importorskip("pywt")


@pytest.mark.parametrize("n", [1, 2, 7, 8, 37, 64])
@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_dwt_matches_pywavelets(n, levels):
    x = torch.randn(2, 3, n, 4, dtype=torch.float64)
    coeffs = haar_dwt(x, levels)
    n_pad = padded_length(n, levels)
    assert n_pad % (2 ** levels) == 0 and n_pad - n < 2 ** levels
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))
    if levels == 0:
        np.testing.assert_allclose(coeffs[0].numpy(), xp)
        return
    ref = pywt.wavedec(xp, "haar", level=levels, axis=-2)
    assert len(ref) == len(coeffs)
    for ours, theirs in zip(coeffs, ref):
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)


@pytest.mark.parametrize("n", [1, 5, 16, 33])
@pytest.mark.parametrize("levels", [1, 2, 4])
def test_perfect_reconstruction(n, levels):
    x = torch.randn(2, n, 6, dtype=torch.float64)
    y = haar_idwt(haar_dwt(x, levels), length=n)
    assert torch.allclose(x, y, atol=1e-12)


def test_equal_gains_are_a_scaled_identity():
    x = torch.randn(2, 2, 21, 4, dtype=torch.float64)
    n_pad = padded_length(21, 3)
    gains = [torch.full((2, n_pad // 8), 0.7, dtype=torch.float64)]
    gains += [torch.full((2, n_pad // 2 ** lv), 0.7, dtype=torch.float64) for lv in (3, 2, 1)]
    assert torch.allclose(haar_filter(x, gains, 3), 0.7 * x, atol=1e-12)


@pytest.mark.parametrize("n,levels", [(8, 2), (13, 2), (19, 3)])
def test_filter_matches_explicit_matrix_reference(n, levels):
    x = torch.randn(2, 2, n, 3, dtype=torch.float64, requires_grad=True)
    n_pad = padded_length(n, levels)
    sizes = [n_pad // 2 ** levels] + [n_pad // 2 ** lv for lv in range(levels, 0, -1)]
    gains = [torch.rand(2, s, dtype=torch.float64, requires_grad=True) for s in sizes]
    fast = haar_filter(x, gains, levels)
    ref = haar_filter_reference(x, gains, levels)
    assert torch.allclose(fast, ref, atol=1e-12)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [x, *gains], g)
    grads_ref = torch.autograd.grad(ref, [x, *gains], g)
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_block_mean_counts_only_valid_tokens():
    v = torch.tensor([[1.0, 3.0, 5.0, 100.0, 7.0]])
    valid = torch.tensor([[True, True, True, False, True]])
    out = block_mean(v, 2, valid)
    assert torch.allclose(out, torch.tensor([[2.0, 5.0, 7.0]]))
    assert torch.allclose(block_mean(v, 4), torch.tensor([[27.25, 7.0]]))


def test_negative_levels_rejected():
    with pytest.raises(ValueError, match="levels"):
        haar_dwt(torch.randn(1, 4, 2), -1)


@pytest.mark.parametrize("lean", [False, True])
def test_filter_allocates_few_signal_sized_tensors(lean):
    """The filter runs on block means (one pass per level, each half the last), not DWT then iDWT.

    Forward: the means (``x/2 + x/4 + ...``), the coarse corrections and the output, under
    3 ``x``-sized tensors (the DWT round trip allocated 9.75). Forward and backward of the
    lean filter: under 9 (28.5 through the DWT).
    """
    from wersa.ops.haar import haar_filter_lean

    n, levels = 1024, 3
    x = torch.randn(1, 4, n, 16, requires_grad=True)
    sizes = [n >> levels] + [n >> lv for lv in range(levels, 0, -1)]
    gains = [torch.rand(1, s, requires_grad=True) for s in sizes]
    filt = haar_filter_lean if lean else haar_filter
    with AllocatedBytes() as fwd:
        y = filt(x, gains, levels)
    assert fwd.total < 3 * x.nbytes, fwd.total / x.nbytes
    if lean:
        gy = torch.randn_like(y)
        with AllocatedBytes() as bwd:
            torch.autograd.grad(y, [x, *gains], gy)
        assert fwd.total + bwd.total < 9 * x.nbytes, (fwd.total + bwd.total) / x.nbytes
