"""FNet: Re(fft2) against torch.fft and an explicit DFT-matrix reference; per-length padding."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import wersa

D, H = 12, 3


def dft_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Re(F_N X F_D) with explicit DFT matrices: C_N X C_D - S_N X S_D (F = C - iS)."""
    n, d = x.shape[-2], x.shape[-1]

    def cs(m):
        a = 2 * math.pi * torch.outer(torch.arange(m), torch.arange(m)).to(x.dtype) / m
        return torch.cos(a), torch.sin(a)

    cn, sn = cs(n)
    cd, sd = cs(d)
    return (cn @ x @ cd - sn @ x @ sd) * scale


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_matches_fft2_and_dft_matrices(n):
    m = wersa.build_mixer("fnet", dim=D, num_heads=H)
    x = torch.randn(2, n, D, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert (y - torch.fft.fft2(x, dim=(-2, -1)).real).abs().max() < 1e-12
    y_ref = dft_reference(x)
    assert (y - y_ref).abs().max() < 1e-10
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    (rx,) = torch.autograd.grad((y_ref * g).sum(), x)
    assert (gx - rx).abs().max() < 1e-10


def test_norm_option():
    x = torch.randn(1, 5, D, dtype=torch.float64)
    for norm, scale in (("ortho", 1 / math.sqrt(5 * D)), ("forward", 1 / (5 * D))):
        y = wersa.build_mixer("fnet", dim=D, num_heads=H, norm=norm)(x)
        assert (y - dft_reference(x, scale)).abs().max() < 1e-12
    with pytest.raises(ValueError, match="fnet: norm"):
        wersa.build_mixer("fnet", dim=D, num_heads=H, norm="none")


def test_padding_uses_each_sequence_own_length():
    m = wersa.build_mixer("fnet", dim=D, num_heads=H)
    lens = [9, 4, 4, 1]
    seqs = [torch.randn(n, D, dtype=torch.float64) for n in lens]
    n_max = 11
    x = torch.randn(4, n_max, D, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(4, n_max, dtype=torch.bool)
    starts = [0, 7, 0, 5]  # right, left, right, middle padding
    with torch.no_grad():
        for i, (s, st) in enumerate(zip(seqs, starts)):
            x[i, st:st + s.shape[0]] = s
            mask[i, st:st + s.shape[0]] = True
    y = m(x, attention_mask=mask)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ref = torch.fft.fft2(s).real
        assert (y[i, st:st + s.shape[0]] - ref).abs().max() < 1e-12
    assert (y * ~mask.unsqueeze(-1)).abs().max() == 0
    # padded inputs receive no gradient, real ones the per-length gradient
    y.sum().backward()
    assert (x.grad * ~mask.unsqueeze(-1)).abs().max() == 0
    assert torch.isfinite(x.grad).all()


def test_all_padding_row_and_no_parameters():
    m = wersa.build_mixer("fnet", dim=D, num_heads=H)
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(2, 5, D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    y = m(x, attention_mask=mask)
    assert y[1].abs().max() == 0
    assert (y[0] - torch.fft.fft2(x[0]).real).abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_half_precision_computed_in_float32(dtype):
    m = wersa.build_mixer("fnet", dim=D, num_heads=H, norm="ortho")
    x = torch.randn(2, 9, D).to(dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype
    ref = torch.fft.fft2(x.detach().double(), norm="ortho").real
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert (y.double() - ref).abs().max() < tol
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_refuses_causal():
    with pytest.raises(ValueError, match="fnet has no causal form"):
        wersa.build_mixer("fnet", dim=D, num_heads=H, causal=True)
    caps = wersa.capabilities("fnet")
    assert not caps.causal and caps.attention_mask and caps.left_padding and not caps.recurrent


# ------------------------------------------------------------- parity with fnet-pytorch
def fnet_pytorch():
    """The ``fnet-pytorch`` package (module ``fnet``); its import warns about a deprecated
    ``torch.cuda.amp`` decorator, which says nothing about the computation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peer = pytest.importorskip("fnet")
    if not hasattr(peer, "FourierFFTLayer"):
        pytest.skip("a module named fnet that is not fnet-pytorch")
    return peer


@pytest.mark.parametrize("n", [1, 7, 16])
def test_parity_with_fnet_pytorch(n):
    """Both of the package's mixing layers (FFT, and DFT matrices in complex128): they return
    float32, so the difference is float32 rounding of outputs of size ~sqrt(N D)."""
    peer = fnet_pytorch()
    m = wersa.build_mixer("fnet", dim=D, num_heads=H)
    x = torch.randn(2, n, D, dtype=torch.float64)
    y = m(x)
    layers = [peer.FourierFFTLayer(),
              peer.FourierMMLayer({"max_position_embeddings": n, "hidden_size": D})]
    for layer in layers:
        ref = layer(x).double()
        assert (y - ref).abs().max() / ref.abs().max() < 1e-6


def test_padded_rows_equal_fnet_pytorch_on_the_unpadded_sequence():
    """The package has no mask; a padded row here equals the package on the real tokens alone."""
    peer = fnet_pytorch()
    m = wersa.build_mixer("fnet", dim=D, num_heads=H)
    x = torch.randn(2, 10, D, dtype=torch.float64)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :3] = False
    y = m(x, attention_mask=mask)
    for b in range(2):
        ref = peer.FourierFFTLayer()(x[b : b + 1, mask[b]])[0].double()
        assert (y[b, mask[b]] - ref).abs().max() / ref.abs().max() < 1e-6
