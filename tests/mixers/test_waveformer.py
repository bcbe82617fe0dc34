"""Waveformer: DWT -> random-feature attention over coefficients -> inverse DWT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.mixers.performer import RELU_EPS
from wersa.mixers.waveformer import Waveformer
from wersa.ops.feature_maps import relu_features, softmax_kernel_features_reference

D, H = 8, 2
F64 = torch.float64


def build(**kw) -> Waveformer:
    torch.manual_seed(0)
    kw.setdefault("num_features", 16)
    return wersa.build_mixer("waveformer", dim=D, num_heads=H, **kw).to(F64)


def haar_matrix(n_pad: int, levels: int) -> torch.Tensor:
    """Explicit orthonormal Haar analysis matrix, rows in the order [cA_L, cD_L, ..., cD_1]."""
    rows = []
    size = 2 ** levels
    for i in range(n_pad // size):
        r = torch.zeros(n_pad, dtype=F64)
        r[i * size:(i + 1) * size] = 1 / math.sqrt(size)
        rows.append(r)
    for level in range(levels, 0, -1):
        size = 2 ** level
        for i in range(n_pad // size):
            r = torch.zeros(n_pad, dtype=F64)
            r[i * size:i * size + size // 2] = 1 / math.sqrt(size)
            r[i * size + size // 2:(i + 1) * size] = -1 / math.sqrt(size)
            rows.append(r)
    return torch.stack(rows)


def naive_waveformer(m: Waveformer, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Dense reference: explicit wavelet matrix, unstabilised features, N_p x N_p attention."""
    b, n, _ = x.shape
    block = 2 ** m.levels
    n_pad = -(-n // block) * block
    W = haar_matrix(n_pad, m.levels)
    torch.testing.assert_close(W @ W.T, torch.eye(n_pad, dtype=F64))
    lengths = torch.full((b,), n) if mask is None else mask.sum(-1)
    qkv = m.to_qkv(x)
    if mask is not None:
        qkv = qkv * mask[..., None]
    qkv = F.pad(qkv, (0, 0, 0, n_pad - n))
    q, k, v = qkv.view(b, n_pad, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    qc, kc, vc = (torch.einsum("st,bhtd->bhsd", W, t) for t in (q, k, v))
    # a coefficient exists when its basis function touches a real token
    first = (W != 0).to(torch.int64).argmax(-1)  # first token of each row's support
    valid = first[None, :] < lengths[:, None]  # (B, N_p)
    s = (D // H) ** -0.25
    w = m.projection_matrix
    if m.kernel == "softmax":
        phi_q, phi_k = (softmax_kernel_features_reference(t * s, w) for t in (qc, kc))
    else:
        phi_q, phi_k = (relu_features(t * s, w) + RELU_EPS / math.sqrt(w.shape[0]) for t in (qc, kc))
    A = (phi_q @ phi_k.transpose(-1, -2)) * valid[:, None, None, :]
    yc = (A @ vc) / A.sum(-1, keepdim=True) * valid[:, None, :, None]
    y = torch.einsum("st,bhsd->bhtd", W, yc)[:, :, :n]  # W^T yc
    out = m.to_out(y.transpose(1, 2).reshape(b, n, D))
    return out if mask is None else out * mask[..., None]


@pytest.mark.parametrize("levels,n", [(0, 5), (1, 7), (3, 13), (3, 16), (2, 1)])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_matches_explicit_wavelet_reference(levels, n, kernel):
    m = build(levels=levels, kernel=kernel, eps=0.0)
    x = torch.randn(2, n, D, dtype=F64, requires_grad=True)
    mask = None
    if n > 2:
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n - 2:] = False  # right padding in one row
    y = m(x, attention_mask=mask)
    ref = naive_waveformer(m, x, mask)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), (x, m.to_qkv.weight))
    rx, rw = torch.autograd.grad((ref * g).sum(), (x, m.to_qkv.weight))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("n", [1, 6, 8, 11])
def test_right_padding_invariance_and_no_gradient_to_padding(levels, n):
    m = build(levels=levels)
    p = 9
    x = torch.randn(2, n, D, dtype=F64)
    pad = (torch.randn(2, p, D, dtype=F64) * 10).requires_grad_(True)
    mask = torch.cat([torch.ones(2, n, dtype=torch.bool), torch.zeros(2, p, dtype=torch.bool)], 1)
    y = m(x)
    yp = m(torch.cat([x, pad], 1), attention_mask=mask)
    torch.testing.assert_close(yp[:, :n], y)
    assert bool((yp[:, n:] == 0).all())
    (gpad,) = torch.autograd.grad(yp[:, :n].sum(), pad)
    assert bool((gpad == 0).all())


def test_zero_padding_coefficients_are_excluded_from_the_keys():
    """Without the exclusion, phi(0) != 0 would let padding-only coefficients into the normaliser."""
    m = build(levels=2, eps=0.0)
    x = torch.randn(1, 5, D, dtype=F64)  # N_p = 8: blocks beyond token 5 are padding only
    q, k, v = m.to_qkv(x).view(1, 5, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    short = m.attend_coefficients(q, k, v, torch.tensor([5]))
    assert torch.isfinite(short).all()
    # an explicit all-real length of 8 (zeros counted as tokens) gives a different result
    qz, kz, vz = (F.pad(t, (0, 0, 0, 3)) for t in (q, k, v))
    longer = m.attend_coefficients(qz, kz, vz, torch.tensor([8]))[:, :, :5]
    assert (short - longer).abs().max() > 1e-6


def test_left_padding_holes_and_causal_are_refused():
    m = build()
    x = torch.randn(2, 6, D, dtype=F64)
    left = torch.ones(2, 6, dtype=torch.bool)
    left[0, 0] = False
    with pytest.raises(ValueError, match="right padding"):
        m(x, attention_mask=left)
    hole = torch.ones(2, 6, dtype=torch.bool)
    hole[1, 2] = False
    with pytest.raises(ValueError, match="right padding"):
        m(x, attention_mask=hole)
    with pytest.raises(ValueError, match="waveformer"):
        wersa.build_mixer("waveformer", dim=D, num_heads=H, causal=True)
    caps = wersa.capabilities("waveformer")
    assert caps.attention_mask and not caps.left_padding and not caps.causal


def test_zero_levels_is_performer_in_token_space():
    wf = build(levels=0)
    pf = wersa.build_mixer("performer", dim=D, num_heads=H, num_features=16).to(F64)
    pf.load_state_dict(wf.state_dict())
    x = torch.randn(2, 9, D, dtype=F64)
    torch.testing.assert_close(wf(x), pf(x))


def test_bfloat16_and_finite_gradients():
    torch.manual_seed(0)
    m = wersa.build_mixer("waveformer", dim=D, num_heads=H, num_features=16)
    x = torch.randn(2, 21, D)
    y32 = m(x)
    mb = m.to(torch.bfloat16)
    yb = mb(x.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    yb.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mb.parameters())
    assert (yb.float() - y32).abs().max().item() < 0.1 * y32.abs().max().item() + 0.02


def test_seeded_features():
    a = build(feature_seed=5)
    b = build(feature_seed=5)
    assert torch.equal(a.projection_matrix, b.projection_matrix)
    assert "projection_matrix" in a.state_dict()


@pytest.mark.parametrize("opts", [
    {"levels": -1}, {"levels": 1.5}, {"levels": 17}, {"num_features": 0}, {"kernel": "exp"}, {"redraw_interval": 0},
])
def test_bad_options_raise(opts):
    with pytest.raises(ValueError, match="waveformer"):
        wersa.build_mixer("waveformer", dim=D, num_heads=H, **opts)
