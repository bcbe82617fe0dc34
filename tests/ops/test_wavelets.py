"""Orthogonal wavelet transforms: PyWavelets parity (mode="zero"), dense reference, perfect reconstruction."""

import warnings

import numpy as np
import pytest
import torch

from wersa.ops.wavelets import (
    daubechies_filter,
    dwt_lengths,
    wavelet_dwt,
    wavelet_filter,
    wavelet_idwt,
    wavelet_matrix,
)

pywt = pytest.importorskip("pywt")
F64 = torch.float64


@pytest.mark.parametrize("order", [1, 2, 3, 4, 8])
def test_daubechies_filter_equals_pywavelets(order):
    h = daubechies_filter(order)
    ref = np.array(pywt.Wavelet(f"db{order}").rec_lo)
    assert np.abs(h.numpy() - ref).max() < 1e-13
    torch.testing.assert_close(h.square().sum(), torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("name", ["haar", "db2", "db3"])
@pytest.mark.parametrize("n", [1, 2, 5, 16, 23])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_dwt_matches_pywavelets_zero_mode_and_reconstructs(name, n, levels):
    h = wavelet_filter(name)
    x = torch.randn(2, n, 3, dtype=F64)
    coeffs = wavelet_dwt(x, h, levels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns that short signals have boundary effects
        ref = pywt.wavedec(x.numpy(), pywt.Wavelet(name), mode="zero", level=levels, axis=1)
    assert [c.shape[1] for c in coeffs] == dwt_lengths(n, h.shape[0], levels)
    for c, r in zip(coeffs, ref):
        assert c.shape == r.shape and np.abs(c.numpy() - r).max() < 1e-12
    # dense reference matrix
    W = wavelet_matrix(h, n, levels)
    torch.testing.assert_close(torch.cat(coeffs, 1), torch.einsum("sn,bnc->bsc", W, x))
    # perfect reconstruction, and the synthesis is the adjoint W^T
    torch.testing.assert_close(wavelet_idwt(coeffs, h, n), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(W.T @ W, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    other = [torch.randn_like(c) for c in coeffs]
    torch.testing.assert_close(wavelet_idwt(other, h, n), torch.einsum("sn,bsc->bnc", W, torch.cat(other, 1)))


def test_per_channel_filters_and_gradients():
    h = torch.stack([daubechies_filter(2), daubechies_filter(2).flip(0) * 0.9]).requires_grad_(True)
    x = torch.randn(2, 9, 2, dtype=F64, requires_grad=True)
    coeffs = wavelet_dwt(x, h, 2)
    for ch in range(2):
        ref = torch.einsum("sn,bn->bs", wavelet_matrix(h[ch].detach(), 9, 2), x[..., ch].detach())
        torch.testing.assert_close(torch.cat(coeffs, 1)[..., ch], ref)
    assert torch.autograd.gradcheck(lambda a, f: wavelet_idwt(wavelet_dwt(a, f, 2), f, 9), (x, h))


def test_right_padding_leaves_real_coefficients_unchanged():
    h = wavelet_filter("db2")
    x = torch.randn(1, 11, 2, dtype=F64)
    padded = torch.cat([x, torch.zeros(1, 6, 2, dtype=F64)], 1)
    for c, cp, n in zip(wavelet_dwt(x, h, 2), wavelet_dwt(padded, h, 2), dwt_lengths(11, 4, 2)):
        torch.testing.assert_close(cp[:, :n], c)
        assert bool((cp[:, n:] == 0).all())


def test_bad_wavelet_names():
    for bad in ("db0", "db21", "sym2", "db"):
        with pytest.raises(ValueError):
            wavelet_filter(bad)
