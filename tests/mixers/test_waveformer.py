"""Waveformer (WavSpA): DWT -> one attention per band -> inverse DWT; the 0.1.0 joint-Haar form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wersa
from wersa.mixers.waveformer import Waveformer
from wersa.ops.feature_maps import relu_features, softmax_kernel_features_reference
from wersa.ops.wavelets import dwt_lengths, wavelet_filter, wavelet_matrix

D, H = 8, 2
F64 = torch.float64


def build(**kw) -> Waveformer:
    torch.manual_seed(0)
    if kw.get("attention") != "softmax":
        kw.setdefault("num_features", 16)
    return wersa.build_mixer("waveformer", dim=D, num_heads=H, **kw).to(F64)


def naive_bands(m: Waveformer, x: torch.Tensor) -> torch.Tensor:
    """Dense reference of the composition: explicit analysis matrix W (from the filter), each
    band's own attention module on its rows of W x, then W^T. (The band modules are the
    registry's performer / sdpa, each checked against its own reference.)"""
    h = m.wavelet_filter if m.wavelet_filter is not None else wavelet_filter(m.wavelet)
    n = x.shape[1]
    outs = []
    for ch in range(D):
        hc = h[ch] if h.dim() == 2 else h
        outs.append(wavelet_matrix(hc.detach(), n, m.levels).to(x.dtype))
    assert all(torch.equal(outs[0], o) for o in outs)  # one filter in these tests
    W = outs[0]
    sizes = dwt_lengths(n, W.shape[0] and h.shape[-1], m.levels)
    c = torch.einsum("sn,bnd->bsd", W, x)
    ys = [band(part) for band, part in zip(m.bands, torch.split(c, sizes, dim=1))]
    return torch.einsum("sn,bsd->bnd", W, torch.cat(ys, 1))


def check_grads(y, ref, inputs):
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * g).sum(), inputs), torch.autograd.grad((ref * g).sum(), inputs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("wavelet,levels", [("db2", 1), ("db2", 2), ("haar", 3), ("db3", 2), ("db2", 0)])
@pytest.mark.parametrize("attention", ["performer", "softmax"])
@pytest.mark.parametrize("n", [1, 7, 16])
def test_bands_match_dense_reference(wavelet, levels, attention, n):
    m = build(wavelet=wavelet, levels=levels, attention=attention)
    x = torch.randn(2, n, D, dtype=F64, requires_grad=True)
    y, ref = m(x), naive_bands(m, x)
    torch.testing.assert_close(y, ref)
    check_grads(y, ref, [x, m.bands[0].to_qkv.weight if attention == "performer" else next(m.bands[0].parameters())])


def test_default_is_the_paper_block():
    m = wersa.build_mixer("waveformer", dim=D, num_heads=H)
    assert m.form == "bands" and m.wavelet == "db2" and m.levels == 2 and m.attention_kind == "performer"
    assert len(m.bands) == 3 and all(b.capabilities.name == "performer" for b in m.bands)
    # each band has its own weights and its own random features
    assert not torch.equal(m.bands[0].to_qkv.weight, m.bands[1].to_qkv.weight)
    assert not torch.equal(m.bands[0].projection_matrix, m.bands[1].projection_matrix)
    exact = wersa.build_mixer("waveformer", dim=D, num_heads=H, attention="softmax")
    assert all(b.capabilities.name == "sdpa" for b in exact.bands)


class _Identity(nn.Module):
    def forward(self, c, attention_mask=None):
        return c


@pytest.mark.parametrize("wavelet,levels", [("db2", 2), ("db4", 3), ("haar", 1)])
@pytest.mark.parametrize("learnable", [False, True])
def test_identity_bands_reconstruct_the_input(wavelet, levels, learnable):
    """The transform is exactly invertible: with identity band maps the mixer is the identity
    (a learnable filter holds its float32-rounded initial value: orthonormal to ~1e-7)."""
    m = build(wavelet=wavelet, levels=levels, learnable_wavelet=learnable)
    m.bands = nn.ModuleList(_Identity() for _ in m.bands)
    for n in (1, 5, 24):
        x = torch.randn(2, n, D, dtype=F64)
        torch.testing.assert_close(m(x), x, rtol=0, atol=1e-6 if learnable else 1e-12)


def test_learnable_wavelet_is_a_per_channel_parameter_with_gradients():
    m = build(learnable_wavelet=True)
    assert m.wavelet_filter.shape == (D, 4)
    torch.testing.assert_close(m.wavelet_filter[3], wavelet_filter("db2"), rtol=0, atol=1e-7)
    m(torch.randn(2, 9, D, dtype=F64)).square().sum().backward()
    assert m.wavelet_filter.grad is not None and m.wavelet_filter.grad.abs().sum() > 0
    assert "wavelet_filter" in m.state_dict()
    assert "wavelet_filter" not in build().state_dict()


@pytest.mark.parametrize("attention", ["performer", "softmax"])
def test_any_padding_pattern_is_exact(attention):
    m = build(attention=attention)
    n, p = 11, 6
    x = torch.randn(3, n, D, dtype=F64)
    y = m(x)
    noise = (torch.randn(3, n + p, D, dtype=F64) * 10).requires_grad_(True)
    mask = torch.zeros(3, n + p, dtype=torch.bool)
    mask[0, :n] = True                 # right padding
    mask[1, p:] = True                 # left padding
    mask[2, [i for i in range(n + p) if i not in (1, 4, 5, 9, 12, 13)]] = True  # holes
    xp = torch.where(mask[..., None], torch.zeros_like(noise), noise)
    xp = xp.masked_scatter(mask[..., None].expand_as(xp), x.reshape(-1, D).repeat(1, 1).reshape(-1))
    yp = m(xp, attention_mask=mask)
    for b in range(3):
        torch.testing.assert_close(yp[b, mask[b]], y[b])
        assert bool((yp[b, ~mask[b]] == 0).all())
    (g,) = torch.autograd.grad(yp[mask].sum(), noise)
    assert bool((g[~mask] == 0).all())
    assert wersa.capabilities("waveformer", attention=attention).left_padding


def test_all_padding_row_is_zero_and_finite():
    m = build(attention="softmax")
    x = torch.randn(2, 6, D, dtype=F64, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    y = m(x, attention_mask=mask)
    assert bool((y[1] == 0).all()) and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------- joint-Haar form (0.1.0)
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


def old_state_dict(seed=0, features=16, bias=True):
    """A state dict with 0.1.0's names (to_qkv / to_out / projection_matrix at the top)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"to_qkv.weight": torch.randn(3 * D, D, generator=g, dtype=F64) * 0.3,
          "to_out.weight": torch.randn(D, D, generator=g, dtype=F64) * 0.3,
          "projection_matrix": torch.randn(features, D // H, generator=g, dtype=F64),
          "redraws": torch.zeros((), dtype=torch.long), "calls_since_redraw": torch.zeros((), dtype=torch.long)}
    if bias:
        sd["to_out.bias"] = torch.randn(D, generator=g, dtype=F64)
    return sd


def naive_joint_haar(sd, levels, feature_map, x, mask):
    """0.1.0's math from its weights: q, k, v in token space, dense Haar matrix, dense attention."""
    b, n, _ = x.shape
    n_pad = -(-n // 2 ** levels) * 2 ** levels
    W = haar_matrix(n_pad, levels)
    lengths = torch.full((b,), n) if mask is None else mask.sum(-1)
    qkv = x @ sd["to_qkv.weight"].T
    if mask is not None:
        qkv = qkv * mask[..., None]
    qkv = F.pad(qkv, (0, 0, 0, n_pad - n))
    q, k, v = qkv.view(b, n_pad, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
    qc, kc, vc = (torch.einsum("st,bhtd->bhsd", W, t) for t in (q, k, v))
    first = (W != 0).to(torch.int64).argmax(-1)  # first token of each row's support
    valid = first[None, :] < lengths[:, None]
    s = (D // H) ** -0.25
    w = sd["projection_matrix"]
    if feature_map == "softmax":
        phi_q, phi_k = (softmax_kernel_features_reference(t * s, w) for t in (qc, kc))
    else:
        phi_q, phi_k = (relu_features(t * s, w) + 1e-3 / math.sqrt(w.shape[0]) for t in (qc, kc))
    A = (phi_q @ phi_k.transpose(-1, -2)) * valid[:, None, None, :]
    yc = (A @ vc) / A.sum(-1, keepdim=True) * valid[:, None, :, None]
    y = torch.einsum("st,bhsd->bhtd", W, yc)[:, :, :n]
    out = y.transpose(1, 2).reshape(b, n, D) @ sd["to_out.weight"].T + sd["to_out.bias"]
    return out if mask is None else out * mask[..., None]


@pytest.mark.parametrize("levels,n", [(0, 5), (1, 7), (3, 13), (3, 16), (2, 1)])
@pytest.mark.parametrize("feature_map", ["softmax", "relu"])
def test_joint_haar_loads_old_checkpoints_and_matches_its_math(levels, n, feature_map):
    m = build(form="joint_haar", levels=levels, feature_map=feature_map, eps=0.0)
    sd = old_state_dict()
    m.load_state_dict(sd)  # old names map onto the new modules
    x = torch.randn(2, n, D, dtype=F64, requires_grad=True)
    mask = None
    if n > 2:
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n - 2:] = False
    y = m(x, attention_mask=mask)
    ref = naive_joint_haar(sd, levels, feature_map, x, mask)
    torch.testing.assert_close(y, ref)
    check_grads(y, ref, [x])


def test_joint_haar_right_padding_only():
    m = build(form="joint_haar")
    x = torch.randn(2, 6, D, dtype=F64)
    left = torch.ones(2, 6, dtype=torch.bool)
    left[0, 0] = False
    with pytest.raises(ValueError, match="right padding"):
        m(x, attention_mask=left)
    caps = wersa.capabilities("waveformer", form="joint_haar")
    assert caps.attention_mask and not caps.left_padding and not caps.causal
    assert m.capabilities == caps


def test_renamed_kernel_option_warns():
    with pytest.warns(FutureWarning, match="feature_map"):
        m = wersa.build_mixer("waveformer", dim=D, num_heads=H, kernel="relu")
    assert all(getattr(b, "feature_map", getattr(b, "kernel", None)) == "relu" for b in m.bands)


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


@pytest.mark.parametrize("opts", [
    {"levels": -1}, {"levels": 1.5}, {"levels": 17}, {"num_features": 0}, {"feature_map": "exp"},
    {"redraw_interval": 0}, {"form": "haar"}, {"attention": "linear"}, {"wavelet": "sym4"},
    {"attention": "softmax", "num_features": 8}, {"form": "joint_haar", "wavelet": "db2"},
    {"form": "joint_haar", "attention": "softmax"},
])
def test_bad_options_raise(opts):
    with pytest.raises(ValueError):
        wersa.build_mixer("waveformer", dim=D, num_heads=H, **opts)


def test_no_causal_form():
    with pytest.raises(ValueError, match="waveformer"):
        wersa.build_mixer("waveformer", dim=D, num_heads=H, causal=True)
