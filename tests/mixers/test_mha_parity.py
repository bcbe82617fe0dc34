"""Exact attention (``softmax``, ``sdpa``) against ``torch.nn.MultiheadAttention`` on copied weights."""

from __future__ import annotations

import pytest
import torch

import wersa

D, H = 16, 2
EXACT = ["softmax", "sdpa"]


def in_projection(m) -> tuple[torch.Tensor, torch.Tensor]:
    """Our q, k, v projection stacked as MHA's ``in_proj_weight`` / ``in_proj_bias`` (rows q, k, v)."""
    if hasattr(m, "qkv"):  # sdpa: one fused Linear, already stacked q, k, v
        return m.qkv.weight, m.qkv.bias
    parts = (m.q_proj, m.k_proj, m.v_proj)
    return torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts])


def paired_mha(name: str, causal: bool):
    """Our mixer and ``torch.nn.MultiheadAttention`` holding the same weights (float64)."""
    torch.manual_seed(0)
    m = wersa.build_mixer(name, dim=D, num_heads=H, causal=causal, qkv_bias=True, out_bias=True)
    m = m.double().eval()
    peer = torch.nn.MultiheadAttention(D, H, bias=True, batch_first=True).double().eval()
    with torch.no_grad():
        weight, bias = in_projection(m)
        peer.in_proj_weight.copy_(weight)
        peer.in_proj_bias.copy_(bias)
        peer.out_proj.weight.copy_(m.out_proj.weight)
        peer.out_proj.bias.copy_(m.out_proj.bias)
    return m, peer


def mha(peer, x: torch.Tensor, causal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MHA self-attention: causal through a boolean ``attn_mask`` (True = not allowed),
    padding through ``key_padding_mask`` (True = padded key)."""
    n = x.shape[1]
    attn_mask = torch.ones(n, n, dtype=torch.bool).triu(1) if causal else None
    kpm = None if mask is None else ~mask
    return peer(x, x, x, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)[0]


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("causal", [False, True])
def test_parity_with_torch_multihead_attention(name, causal):
    m, peer = paired_mha(name, causal)
    x = torch.randn(3, 11, D, dtype=torch.float64, requires_grad=True)
    y, ref = m(x), mha(peer, x, causal)
    assert (y - ref).abs().max() < 1e-12
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    (rx,) = torch.autograd.grad((ref * g).sum(), x)
    assert (gx - rx).abs().max() < 1e-12


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("causal", [False, True])
def test_parity_with_torch_multihead_attention_key_padding(name, causal):
    """Right, left and interior padding through MHA's ``key_padding_mask``, compared at the
    real queries (MHA gives NaN for a query whose every key is masked)."""
    m, peer = paired_mha(name, causal)
    x = torch.randn(3, 11, D, dtype=torch.float64)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, 7:] = False   # right padding
    mask[1, :4] = False   # left padding
    mask[2, [2, 5]] = False  # interior padding
    with torch.no_grad():
        y, ref = m(x, attention_mask=mask), mha(peer, x, causal, mask)
    assert (y - ref)[mask].abs().max() < 1e-12
    assert y[~mask].abs().max() == 0


@pytest.mark.parametrize("name", EXACT)
def test_step_and_prefill_equal_the_parallel_form(name):
    m, _ = paired_mha(name, True)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    y = m(x)
    ys, _ = m.step_through(x)
    assert (ys - y).abs().max() < 1e-12
    yp, state = m.prefill(x[:, :4])
    assert (yp - y[:, :4]).abs().max() < 1e-12
    for t in range(4, 7):
        o, state = m.step(x[:, t], state)
        assert (o - y[:, t]).abs().max() < 1e-12
