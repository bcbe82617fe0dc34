"""WERSA-specific promises (the shared matrix covers causality, padding, recurrence).

* the random features converge to exact softmax attention (measured vs SDPA);
* the bandwidth is a real temperature (it is a no-op in the published computation);
* ``feature_map="published"`` reproduces the published bidirectional computation;
* the published features ignore the angle between q and k, ours do not;
* long sequences: finite gradients at 16k tokens in float32 and bfloat16;
* options: redraw, relu, exact, refusals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.ops.feature_maps import gaussian_random_matrix, relu_features


def build(causal=False, seed=0, **opts):
    torch.manual_seed(seed)
    return wersa.build_mixer("wersa", dim=opts.pop("dim", 32), num_heads=opts.pop("heads", 2),
                             causal=causal, **opts).eval()


def exact_core(m, x, causal):
    """SDPA on the mixer's own l2-normalised q, k (bandwidth 1, identity filter)."""
    q, k, v = m.qkv(x).chunk(3, dim=-1)
    q, k, v = m._heads(q), m._heads(k), m._heads(v)
    return F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v,
                                          is_causal=causal, scale=1.0)


def relative_error(m_features, seeds, causal, n=256):
    errs = []
    for s in seeds:
        m = build(causal, seed=s, dim=64, heads=1, levels=0, num_features=m_features, feature_seed=s).double()
        x = torch.randn(1, n, 64, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
        with torch.no_grad():
            approx, exact = m.attend(x), exact_core(m, x, causal)
        errs.append(((approx - exact).norm() / exact.norm()).item())
    return float(np.mean(errs))


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_converges_to_softmax_attention(causal):
    seeds = range(5)
    errors = {m: relative_error(m, seeds, causal) for m in (64, 256, 1024, 4096)}
    print(f"\nrelative error vs SDPA (causal={causal}):", {m: round(e, 4) for m, e in errors.items()})
    assert errors[4096] * 2.5 <= errors[256]
    assert errors[64] > errors[256] > errors[1024] > errors[4096]


def test_exact_feature_map_equals_sdpa():
    m = build(levels=0, feature_map="exact", dim=64, heads=1).double()
    x = torch.randn(1, 50, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m.attend(x), exact_core(m, x, False), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_bandwidth_changes_the_output(causal):
    m = build(causal)
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y = m(x)
        m.beta.add_(2.0)
        assert (m(x) - y).abs().max().item() > 1e-2


def test_bandwidth_is_a_no_op_in_the_published_computation():
    m = build(feature_map="published")
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y = m(x)
        m.beta.add_(3.0)
        assert (m(x) - y).abs().max().item() < 1e-4


def test_published_kernel_ignores_the_angle_ours_does_not():
    torch.manual_seed(0)
    d, m = 16, 2048
    q = F.normalize(torch.randn(400, d, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(400, d, dtype=torch.float64), dim=-1)
    cos = (q * k).sum(-1)
    g = torch.Generator().manual_seed(1)
    wq, wk = (gaussian_random_matrix(m, d, std=d ** -0.5, generator=g, dtype=torch.float64) for _ in range(2))
    published = (relu_features(q, wq) * relu_features(k, wk)).sum(-1)
    shared = (relu_features(q, wq) * relu_features(k, wq)).sum(-1)
    corr_pub = np.corrcoef(published.numpy(), cos.numpy())[0, 1]
    corr_shared = np.corrcoef(shared.numpy(), cos.numpy())[0, 1]
    assert abs(corr_pub) < 0.2 and corr_shared > 0.9


def published_reference(m, x):
    """An independent transcription of the published bidirectional computation (PyWavelets DWT)."""
    import pywt
    B, N, D = x.shape
    H, d, L = m.num_heads, m.head_dim, m.levels
    q, k, v = m.qkv(x).chunk(3, dim=-1)
    q, k = F.gelu(q), F.gelu(k)
    gates = torch.sigmoid(m.gate_mlp(F.conv1d(x.transpose(1, 2), m.gate_conv.weight, m.gate_conv.bias,
                                              padding="same", groups=D).transpose(1, 2)))  # (B, N, L+1)
    n_pow2 = max(1 << (N - 1).bit_length(), 2 ** L)

    def filt(t):  # (B, N, D) -> (B, N, D), per head channel
        t = F.pad(t, (0, 0, 0, n_pow2 - N)).numpy()
        coeffs = pywt.wavedec(t, "haar", level=L, axis=1)
        out = []
        for i, c in enumerate(coeffs):
            idx = np.floor(np.arange(c.shape[1]) * (N / c.shape[1])).astype(int)  # nearest resampling
            g = (gates[:, idx, i] * m.scale_weights[i]).numpy()
            out.append(c * g[:, :, None])
        return torch.from_numpy(pywt.waverec(out, "haar", axis=1)[:, :N])

    q, k = filt(q), filt(k)
    b = F.softplus(m.beta) + 0.1
    heads = lambda t: t.reshape(B, N, H, d).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    phi_q = torch.relu((q / b) @ m.omega[0].T) / math.sqrt(m.num_features)
    phi_k = torch.relu((k / b) @ m.omega[1].T) / math.sqrt(m.num_features)
    kv = phi_k.transpose(-1, -2) @ v
    y = (phi_q @ kv) / (phi_q @ phi_k.sum(2, keepdim=True).transpose(-1, -2) + 1e-6)
    y = F.layer_norm(y, (d,), m.head_norm.weight, m.head_norm.bias, m.head_norm.eps)
    return m.out(y.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("n", [13, 64, 100])
def test_published_option_reproduces_the_published_computation(n):
    m = build(feature_map="published", levels=2, kernel_size=33).double()
    with torch.no_grad():
        m.scale_weights.copy_(torch.tensor([0.3, 0.9, 1.7]))
        m.beta.fill_(0.4)
        x = torch.randn(2, n, 32, dtype=torch.float64)
        assert torch.allclose(m(x), published_reference(m, x), atol=1e-9)


def test_published_option_refuses_causal_and_padding():
    with pytest.raises(ValueError, match="not causal"):
        build(causal=True, feature_map="published")
    m = build(feature_map="published")
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 5:] = False
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.randn(2, 10, 32), attention_mask=mask)


@pytest.mark.parametrize("levels,n", [(3, 64), (3, 61), (2, 30)])
def test_causal_with_unequal_band_gains(levels, n):
    """The published gated DWT leaks within blocks of 2^L when bands get different gains; ours does not."""
    m = build(True, levels=levels)
    with torch.no_grad():
        m.scale_weights.copy_(torch.linspace(0.1, 3.0, levels + 1))
        x = torch.randn(1, n, 32)
        for t in (n - 1, n // 2, 5):
            x2 = x.clone()
            x2[:, t:] += 2.0
            assert torch.equal(m(x2)[:, :t], m(x)[:, :t])


def test_gates_and_bandwidth_receive_gradients():
    for causal in (False, True):
        m = build(causal).train()
        m(torch.randn(2, 24, 32)).pow(2).mean().backward()
        for name in ("beta", "scale_weights", "gate_conv.weight"):
            grad = m.get_parameter(name).grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_feature_redraw_only_in_training():
    m = build(redraw_interval=2)
    before = m.omega.clone()
    x = torch.randn(1, 8, 32)
    m.eval()
    for _ in range(5):
        m(x)
    assert torch.equal(m.omega, before)
    m.train()
    for _ in range(3):
        m(x)
    assert not torch.equal(m.omega, before)
    again = build(redraw_interval=2).train()
    for _ in range(3):
        again(x)
    assert torch.equal(again.omega, m.omega), "redraws are reproducible"


def test_relu_and_exact_options():
    x = torch.randn(2, 20, 32)
    for fm in ("relu", "exact"):
        for causal in (False, True):
            y = build(causal, feature_map=fm)(x)
            assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="recurrent"):
        build(True, feature_map="exact").init_state(1)


@pytest.mark.parametrize("option,value", [("levels", -1), ("num_features", 0), ("feature_map", "cosine"),
                                          ("kernel_size", 0), ("chunk_size", 0), ("bandwidth", 0.0),
                                          ("redraw_interval", 0)])
def test_invalid_options(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_at_16k_tokens(causal, dtype):
    m = build(causal, dim=64, heads=2, num_features=64).train().to(dtype)
    x = torch.randn(1, 16384, 64, dtype=dtype, requires_grad=True)
    y = m(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y.float()).all()
    assert torch.isfinite(x.grad.float()).all()
    assert all(torch.isfinite(p.grad.float()).all() for p in m.parameters() if p.grad is not None)
