"""TransNormer: Norm (chunked causal / bidirectional) and Diag (T1/T2) against dense references."""
import math

import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.mixers.transnormer import (
    diag_attention,
    diag_attention_reference,
    norm_feature_map,
    simple_rms_norm,
    transnormer_layer_options,
)

D, H = 16, 2


def build(causal=False, dtype=torch.float64, **opts):
    torch.manual_seed(0)
    return wersa.build_mixer("transnormer", dim=D, num_heads=H, causal=causal, **opts).to(dtype)


def heads(m, x):
    B, N, _ = x.shape
    q, k, v = m.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    return q, k, v


def dense_norm(m, x, causal, per_head_norm=False):
    """Norm((phi(Q) phi(K)^T [tril]) V) W_out with the full N x N matrix."""
    q, k, v = heads(m, x)
    fq, fk = norm_feature_map(q, m.variant), norm_feature_map(k, m.variant)
    A = fq @ fk.transpose(-1, -2)
    if causal:
        A = A * torch.ones_like(A[0, 0]).tril()
    o = A @ v  # (B, H, N, d)
    if per_head_norm:
        o = simple_rms_norm(o)
    o = o.transpose(1, 2).flatten(2)
    if not per_head_norm:
        o = simple_rms_norm(o)
    return m.out_proj(o)


def dense_diag(m, x, causal):
    q, k, v = heads(m, x)
    o = diag_attention_reference(q, k, v, m.window_size, causal=causal, softmax=m.variant == "t2")
    o = o.transpose(1, 2).flatten(2)
    if m.variant == "t1":
        o = simple_rms_norm(o)
    return m.out_proj(o)


def check_values_and_grads(m, ref_fn, x):
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = m(x1), ref_fn(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(y1)
    g1 = torch.autograd.grad((y1 * g).sum(), [x1, *m.parameters()])
    g2 = torch.autograd.grad((y2 * g).sum(), [x2, *m.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("variant", ["t1", "t2"])
@pytest.mark.parametrize("causal,chunk", [(True, 5), (True, 7), (True, 64), (False, 64)])
def test_norm_matches_dense(variant, causal, chunk):
    m = build(causal, variant=variant, chunk_size=chunk)
    x = torch.randn(2, 23, D, dtype=torch.float64)
    check_values_and_grads(m, lambda z: dense_norm(m, z, causal), x)


def test_norm_scope_is_all_heads():
    """The RMS norm spans the whole width D (heads jointly), not each head."""
    m = build(False)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, dense_norm(m, x, False))
    assert (y - dense_norm(m, x, False, per_head_norm=True)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["t1", "t2"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,w", [(21, 8), (16, 8), (5, 8), (1, 4)])
def test_diag_matches_block_diagonal_dense(variant, causal, n, w):
    m = build(causal, attention="diag", variant=variant, window_size=w)
    x = torch.randn(2, n, D, dtype=torch.float64)
    check_values_and_grads(m, lambda z: dense_diag(m, z, causal), x)


def test_diag_block_padding_is_masked():
    """Zero keys added to reach a block multiple must not get softmax weight."""
    q, k, v = (torch.randn(1, 1, 10, 4, dtype=torch.float64) for _ in range(3))
    out = diag_attention(q, k, v, 8, causal=False, softmax=True)
    ref = diag_attention_reference(q, k, v, 8, causal=False, softmax=True)
    torch.testing.assert_close(out, ref)
    # The last block holds 2 real tokens: its output only depends on them.
    only = F.scaled_dot_product_attention(q[..., 8:, :], k[..., 8:, :], v[..., 8:, :])
    torch.testing.assert_close(out[..., 8:, :], only)


CONFIGS = [dict(attention=a, variant=v) for a in ("norm", "diag") for v in ("t1", "t2")]


@pytest.mark.parametrize("opts", CONFIGS)
def test_step_and_prefill_equal_parallel(opts):
    m = build(True, window_size=4, chunk_size=3, **opts)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(m.step_through(x)[0], y)
    # prefill a prompt, then keep decoding
    yp, s = m.prefill(x[:, :6])
    torch.testing.assert_close(yp, y[:, :6])
    torch.testing.assert_close(m.step_through(x[:, 6:], s)[0], y[:, 6:])


@pytest.mark.parametrize("opts", CONFIGS)
@pytest.mark.parametrize("causal", [False, True])
def test_padding_any_pattern(opts, causal):
    """Right, left and inner padding give the unpadded outputs (blocks over real tokens)."""
    m = build(causal, window_size=4, **opts)
    x = torch.randn(3, 13, D, dtype=torch.float64)
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[0, 9:] = False
    mask[1, :5] = False
    mask[2, [2, 3, 7]] = False
    y = m(x, attention_mask=mask)
    for b in range(3):
        ref = m(x[b : b + 1, mask[b]])
        torch.testing.assert_close(y[b, mask[b]], ref[0])
        assert torch.all(y[b, ~mask[b]] == 0)
    if causal:  # padded steps leave the state alone: decoding agrees with the parallel form
        s = m.init_state(3)
        outs = []
        for t in range(13):
            o, s = m.step(x[:, t], s, attention_mask=mask[:, t])
            outs.append(o)
        torch.testing.assert_close(torch.stack(outs, 1), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", CONFIGS)
@pytest.mark.parametrize("causal", [False, True])
def test_dtypes_lengths_and_grads_finite(dtype, opts, causal):
    m = build(causal, dtype=dtype, window_size=4, **opts)
    for n in (1, 7):
        x = torch.randn(2, n, D, dtype=dtype, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        y.float().square().mean().backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        m.zero_grad()


def test_layer_options_layout():
    opts = transnormer_layer_options(6, variant="t1", window_size=32)
    assert [o["attention"] for o in opts] == ["diag"] * 3 + ["norm"] * 3
    assert all(o["variant"] == "t1" and o["window_size"] == 32 for o in opts)
    for o in opts:
        wersa.build_mixer("transnormer", dim=D, num_heads=H, **o)
    assert [o["attention"] for o in transnormer_layer_options(1)] == ["norm"]
    with pytest.raises(ValueError):
        transnormer_layer_options(0)


@pytest.mark.parametrize("bad", [dict(attention="full"), dict(variant="t3"), dict(window_size=0),
                                 dict(chunk_size=-1), dict(window_size=2.5)])
def test_bad_options(bad):
    with pytest.raises(ValueError, match="transnormer"):
        wersa.build_mixer("transnormer", dim=D, num_heads=H, **bad)


def test_trains_on_cpu():
    torch.manual_seed(0)
    m = wersa.build_mixer("transnormer", dim=D, num_heads=H, causal=True, attention="diag", window_size=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, target = torch.randn(2, 12, D), torch.randn(2, 12, D)
    losses = []
    for _ in range(8):
        loss = (m(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1])


def test_block_size_is_now_window_size():
    with pytest.warns(FutureWarning, match="window_size"):
        m = wersa.build_mixer("transnormer", dim=D, num_heads=H, attention="diag", block_size=8)
    assert m.window_size == 8
