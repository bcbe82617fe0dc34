"""The published WERSA computation (``wersa_published``) against an independent reference.

The reference below is written from ``reference/WERSA.md`` section 2 alone: its own Haar
loop returning the bands finest first ``[D_1, ..., D_L, A_L]`` (gate column ``i`` and
``scale_weights[i]`` on band ``i``), the early stop of the level loop when the padded
length drops below 2, zero-padding to the next power of two, nearest resampling of the
gates, ``b = softplus(beta) + 0.1``, two independent matrices with ReLU features,
``eps = 1e-6``, per-head LayerNorm, GELU on q and k. It does not use PyWavelets (whose
``wavedec`` returns the bands in the reverse order) nor any op of the package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.ops.feature_maps import gaussian_random_matrix, relu_features

SQRT1_2 = 1.0 / math.sqrt(2.0)


def build(levels=2, seed=0, dim=32, heads=2, **opts):
    torch.manual_seed(seed)
    return wersa.build_mixer("wersa_published", dim=dim, num_heads=heads, levels=levels, **opts).eval()


def _dwt_finest_first(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``x``: ``(B, N, C)`` with ``N`` a power of two -> ``[D_1, ..., D_l, A_l]``, ``l <= levels``."""
    bands, a = [], x
    for _ in range(levels):
        if a.shape[1] < 2:  # the published loop stops early
            break
        even, odd = a[:, 0::2], a[:, 1::2]
        bands.append((even - odd) * SQRT1_2)
        a = (even + odd) * SQRT1_2
    return bands + [a]


def _idwt_finest_first(bands: list[torch.Tensor]) -> torch.Tensor:
    a = bands[-1]
    for d in reversed(bands[:-1]):
        even, odd = (a + d) * SQRT1_2, (a - d) * SQRT1_2
        a = torch.stack([even, odd], dim=2).reshape(a.shape[0], 2 * a.shape[1], a.shape[2])
    return a


def published_reference(m, x: torch.Tensor) -> torch.Tensor:
    """``(B, N, D) -> (B, N, D)``: section 2 of reference/WERSA.md, step by step."""
    B, N, D = x.shape
    H, d, L = m.num_heads, m.head_dim, m.levels
    q, k, v = m.qkv(x).chunk(3, dim=-1)
    q, k = F.gelu(q), F.gelu(k)  # step 2
    if L > 0:  # steps 1 and 3
        conv = F.conv1d(x.transpose(1, 2), m.gate_conv.weight, m.gate_conv.bias, padding="same", groups=D)
        gates = torch.sigmoid(m.gate_mlp(conv.transpose(1, 2)))  # (B, N, L+1)
        n_pow2 = 1
        while n_pow2 < N:
            n_pow2 *= 2

        def filt(t):
            bands = _dwt_finest_first(F.pad(t, (0, 0, 0, n_pow2 - N)), L)
            out = []
            for i, c in enumerate(bands):  # band i of the finest-first list: gate column i
                idx = np.floor(np.arange(c.shape[1]) * (N / c.shape[1])).astype(int)  # nearest
                g = gates[:, idx, i] * m.scale_weights[i]
                out.append(c * g[:, :, None])
            return _idwt_finest_first(out)[:, :N]

        q, k = filt(q), filt(k)
    b = F.softplus(m.beta) + 0.1  # step 4
    heads = lambda t: t.reshape(B, N, H, d).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    mf = m.num_features
    phi_q = torch.relu((q / b) @ m.omega[0].T) / math.sqrt(mf)  # step 5, two matrices
    phi_k = torch.relu((k / b) @ m.omega[1].T) / math.sqrt(mf)
    num = phi_q @ (phi_k.transpose(-1, -2) @ v)  # step 6
    den = phi_q @ phi_k.sum(2).unsqueeze(-1) + 1e-6
    y = F.layer_norm(num / den, (d,), m.head_norm.weight, m.head_norm.bias, m.head_norm.eps)  # step 7
    return m.out_proj(y.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 13, 64, 100])
def test_reproduces_the_published_computation(n, levels):
    m = build(levels=levels, conv_size=33).double()
    with torch.no_grad():
        m.scale_weights.copy_(torch.linspace(0.3, 1.7, levels + 1))  # distinct per band: order matters
        m.beta.fill_(0.4)
        for p in m.gate_mlp.parameters():
            p.mul_(4.0)  # gates far from 1/2, so each band's gate matters
        x = torch.randn(2, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
        d = (m(x) - published_reference(m, x)).abs().max().item()
    assert d < 1e-10, f"n={n} L={levels}: max diff {d:.2e}"


def test_reference_band_order_is_finest_first():
    """Guards the reference itself: gate column 0 scales the finest detail band."""
    x = torch.zeros(1, 4, 1, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    bands = _dwt_finest_first(x, 2)
    assert [b.shape[1] for b in bands] == [2, 1, 1]
    assert torch.allclose(bands[0][0, :, 0], torch.tensor([SQRT1_2, 0.0], dtype=torch.float64))
    assert torch.allclose(_idwt_finest_first(bands), x)


def test_bandwidth_is_a_no_op_in_the_published_computation():
    m = build()
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y = m(x)
        m.beta.add_(3.0)
        assert (m(x) - y).abs().max().item() < 1e-4


def test_published_kernel_ignores_the_angle_shared_features_do_not():
    torch.manual_seed(0)
    d, mf = 16, 2048
    q = F.normalize(torch.randn(400, d, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(400, d, dtype=torch.float64), dim=-1)
    cos = (q * k).sum(-1)
    g = torch.Generator().manual_seed(1)
    wq, wk = (gaussian_random_matrix(mf, d, std=d ** -0.5, generator=g, dtype=torch.float64) for _ in range(2))
    published = (relu_features(q, wq) * relu_features(k, wk)).sum(-1)
    shared = (relu_features(q, wq) * relu_features(k, wq)).sum(-1)
    corr_pub = np.corrcoef(published.numpy(), cos.numpy())[0, 1]
    corr_shared = np.corrcoef(shared.numpy(), cos.numpy())[0, 1]
    assert abs(corr_pub) < 0.2 and corr_shared > 0.9


def test_refuses_causal_and_padding():
    with pytest.raises(ValueError, match="causal"):
        wersa.build_mixer("wersa_published", dim=32, num_heads=2, causal=True)
    m = build()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 5:] = False
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.randn(2, 10, 32), attention_mask=mask)
    caps = wersa.capabilities("wersa_published")
    assert not caps.causal and not caps.attention_mask and not caps.recurrent


@pytest.mark.parametrize("option,value", [("levels", -1), ("num_features", 0), ("conv_size", 0)])
def test_invalid_options(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})
