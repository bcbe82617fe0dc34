"""The explicit softmax mixer: against a naive per-query reference, masks, KV cache."""

from __future__ import annotations

import math

import pytest
import torch

import wersa
from wersa.mixers.softmax import SoftmaxAttention

D, H = 16, 2


def build(causal: bool = False, dtype=torch.float64, **opts) -> SoftmaxAttention:
    torch.manual_seed(0)
    m = wersa.build_mixer("softmax", dim=D, num_heads=H, causal=causal, qkv_bias=True, out_bias=True, **opts)
    return m.to(dtype).eval()


def naive(m: SoftmaxAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence, per-head, per-query loop over the allowed keys only."""
    b, n, _ = x.shape
    d = D // H
    mask = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    rows = []
    for bi in range(b):
        outs = []
        for i in range(n):
            if not mask[bi, i]:
                outs.append(x.new_zeros(D))
                continue
            keys = [j for j in range(n) if mask[bi, j] and (not m.causal or j <= i)]
            heads = []
            for hh in range(H):
                sl = slice(hh * d, (hh + 1) * d)
                s = torch.stack([q[bi, i, sl] @ k[bi, j, sl] for j in keys]) / math.sqrt(d)
                w = torch.softmax(s, 0)
                heads.append(sum(w[t] * v[bi, j, sl] for t, j in enumerate(keys)))
            outs.append(m.out_proj(torch.cat(heads)))
        rows.append(torch.stack(outs))
    return torch.stack(rows)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_values_and_grads(causal):
    m = build(causal)
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 5:] = False   # right padding
    mask[1, :2] = False   # left padding
    for msk in (None, mask):
        y = m(x, attention_mask=msk)
        y_ref = naive(m, x, msk)
        assert (y - y_ref).abs().max() < 1e-12
        g = torch.randn_like(y)
        gx, gw = torch.autograd.grad((y * g).sum(), (x, m.q_proj.weight))
        rx, rw = torch.autograd.grad((y_ref * g).sum(), (x, m.q_proj.weight))
        assert (gx - rx).abs().max() < 1e-12
        assert (gw - rw).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_right_and_left_padding_invariance(causal):
    m = build(causal)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    y = m(x)
    pad_l, pad_r = torch.randn(2, 3, D, dtype=torch.float64), torch.randn(2, 4, D, dtype=torch.float64)
    xp = torch.cat([pad_l, x, pad_r], 1)
    mask = torch.zeros(2, 13, dtype=torch.bool)
    mask[:, 3:9] = True
    yp = m(xp, attention_mask=mask)
    assert (yp[:, 3:9] - y).abs().max() < 1e-12
    assert yp[:, :3].abs().max() == 0 and yp[:, 9:].abs().max() == 0


def test_fully_padded_row_is_zero_with_finite_grads():
    m = build(causal=True)
    x = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    y = m(x, attention_mask=mask)
    assert y[1].abs().max() == 0
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_step_prefill_and_bottom_right_alignment():
    m = build(causal=True)
    x = torch.randn(3, 9, D, dtype=torch.float64)
    y = m(x)
    state = m.init_state(3)
    outs = []
    for t in range(9):
        o, state = m.step(x[:, t], state)
        outs.append(o)
    assert (torch.stack(outs, 1) - y).abs().max() < 1e-12
    assert state["k"].shape == (3, H, 9, D // H)  # the cache grows
    # prefill in one pass, then keep decoding: the new query sees every cached key
    yp, state = m.prefill(x[:, :5])
    assert (yp - y[:, :5]).abs().max() < 1e-12
    for t in range(5, 9):
        o, state = m.step(x[:, t], state)
        assert (o - y[:, t]).abs().max() < 1e-12


def test_left_padded_batch_decoding():
    """Left-padded prompts: prefill + steps equal each sequence run alone."""
    m = build(causal=True)
    lens = [6, 3]
    total = 6
    seqs = [torch.randn(1, n + 3, D, dtype=torch.float64) for n in lens]  # prompt + 3 new tokens
    x = torch.zeros(2, total, D, dtype=torch.float64)
    mask = torch.zeros(2, total, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        x[i, total - n:] = s[0, :n]
        mask[i, total - n:] = True
    yp, state = m.prefill(x, attention_mask=mask)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        assert (yp[i, total - n:] - m(s[:, :n])[0]).abs().max() < 1e-12
    for t in range(3):
        x_t = torch.stack([s[0, n + t] for s, n in zip(seqs, lens)])
        o, state = m.step(x_t, state)
        for i, (s, n) in enumerate(zip(seqs, lens)):
            assert (o[i] - m(s[:, : n + t + 1])[0, -1]).abs().max() < 1e-12


def test_padded_step_adds_a_masked_key():
    m = build(causal=True)
    x = torch.randn(2, 4, D, dtype=torch.float64)
    state = m.init_state(2)
    o, state = m.step(x[:, 0], state)
    junk = torch.randn(2, D, dtype=torch.float64)
    o, state = m.step(junk, state, attention_mask=torch.tensor([True, False]))
    assert o[1].abs().max() == 0
    assert state["valid"].tolist() == [[True, True], [True, False]]
    o, state = m.step(x[:, 1], state)
    ref = m(x[1:, :2])[0, -1]
    assert (o[1] - ref).abs().max() < 1e-12


def test_dtypes_and_dropout():
    for dtype in (torch.float32, torch.bfloat16):
        m = build(causal=True, dtype=dtype)
        x = torch.randn(2, 5, D, dtype=dtype, requires_grad=True)
        y = m(x)
        assert y.dtype == dtype and torch.isfinite(y).all()
        y.float().sum().backward()
        assert torch.isfinite(x.grad).all()
    m = build(dropout=0.5)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    assert torch.equal(m(x), m(x))  # eval: no dropout
    m.train()
    torch.manual_seed(1)
    assert not torch.allclose(m(x), m.eval()(x))


def test_capabilities_and_bad_options():
    caps = wersa.capabilities("softmax")
    assert caps.causal and caps.bidirectional and caps.recurrent and caps.left_padding
    assert not caps.constant_state and not caps.linear_time
    with pytest.raises(ValueError, match="softmax: dropout"):
        wersa.build_mixer("softmax", dim=D, num_heads=H, dropout=1.0)
    with pytest.raises(ValueError, match="step"):
        build(causal=False).init_state(2)
    m = build(causal=True)
    with pytest.raises(ValueError, match="softmax: state"):
        m.step(torch.randn(2, D, dtype=torch.float64), {"k": None})
    with pytest.raises(ValueError, match="batch"):
        m.step(torch.randn(3, D, dtype=torch.float64), m.init_state(2))
