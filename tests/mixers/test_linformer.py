"""Linformer: naive reference, identity projections = exact attention, parity with and
defect of the ``linformer`` package (0.2.3), fixed maximum length."""

from __future__ import annotations

import math

import pytest
import torch

import wersa
from wersa.mixers.linformer import LinformerAttention, linformer_reference as naive

D, H = 16, 2


def build(dtype=torch.float64, **opts) -> LinformerAttention:
    torch.manual_seed(0)
    opts = {"projected_length": 5, "max_len": 12, "qkv_bias": True, "out_bias": True, **opts}
    return wersa.build_mixer("linformer", dim=D, num_heads=H, **opts).to(dtype).eval()


@pytest.mark.parametrize("share_kv", [False, True])
def test_matches_naive_values_and_grads(share_kv):
    m = build(share_kv=share_kv)
    x = torch.randn(3, 9, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False   # right padding
    mask[1, :4] = False   # left padding
    params = (x, m.key_length_proj, m.k_proj.weight, m.out_proj.bias)
    for msk in (None, mask):
        y = m(x, attention_mask=msk)
        y_ref = naive(m, x, msk)
        assert (y - y_ref).abs().max() < 1e-12
        g = torch.randn_like(y)
        grads = torch.autograd.grad((y * g).sum(), params)
        refs = torch.autograd.grad((y_ref * g).sum(), params)
        for a, r in zip(grads, refs):
            assert (a - r).abs().max() < 1e-12


def test_identity_projection_is_exact_attention():
    """k = n, E = F = I: Linformer is exact softmax attention (same q/k/v/out weights)."""
    n = 7
    m = build(projected_length=n, max_len=n)
    exact = wersa.build_mixer("softmax", dim=D, num_heads=H, qkv_bias=True, out_bias=True).double().eval()
    with torch.no_grad():
        m.key_length_proj.copy_(torch.eye(n))
        m.value_length_proj.copy_(torch.eye(n))
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(exact, name).load_state_dict(getattr(m, name).state_dict())
    x = torch.randn(2, n, D, dtype=torch.float64)
    assert (m(x) - exact(x)).abs().max() < 1e-12


def test_k_larger_than_n_and_short_inputs():
    m = build(projected_length=20, max_len=12)
    for n in (1, 3, 12):
        x = torch.randn(2, n, D, dtype=torch.float64)
        assert (m(x) - naive(m, x)).abs().max() < 1e-12


def paired(k: int, max_len: int, share_kv: bool = False):
    """Our mixer and a ``linformer.LinformerSelfAttention`` holding the same weights.

    The package has no q/k/v bias and a biased output map, as ours with
    ``qkv_bias=False, out_bias=True``. With ``share_kv`` the package
    also reuses ``to_k`` for the values, so our ``v_proj`` is set equal to ``k_proj``.
    """
    lf = pytest.importorskip("linformer")
    m = build(projected_length=k, max_len=max_len, share_kv=share_kv, qkv_bias=False)
    peer = lf.LinformerSelfAttention(dim=D, seq_len=max_len, k=k, heads=H, share_kv=share_kv).double().eval()
    with torch.no_grad():
        if share_kv:
            m.v_proj.weight.copy_(m.k_proj.weight)
        else:
            peer.to_v.weight.copy_(m.v_proj.weight)
            peer.proj_v.copy_(m.value_length_proj)
        peer.to_q.weight.copy_(m.q_proj.weight)
        peer.to_k.weight.copy_(m.k_proj.weight)
        peer.proj_k.copy_(m.key_length_proj)
        peer.to_out.weight.copy_(m.out_proj.weight)
        peer.to_out.bias.copy_(m.out_proj.bias)
    return m, peer


@pytest.mark.parametrize("n", [12, 8])
def test_parity_with_linformer_package(n):
    """No mask: same weights, same outputs (full length and sliced projections)."""
    m, peer = paired(k=5, max_len=12)
    x = torch.randn(2, n, D, dtype=torch.float64)
    assert (m(x) - peer(x)).abs().max() < 1e-12


def test_share_kv_vs_package():
    """The package's share_kv also reuses to_k as to_v; ours shares only E = F (the paper's)."""
    m, peer = paired(k=4, max_len=10, share_kv=True)
    x = torch.randn(2, 10, D, dtype=torch.float64)
    assert (m(x) - peer(x)).abs().max() < 1e-12


def test_package_ignores_mask_ours_applies_it():
    m, peer = paired(k=5, max_len=12)
    x = torch.randn(2, 8, D, dtype=torch.float64)
    xp = torch.cat([x, torch.randn(2, 4, D, dtype=torch.float64)], 1)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :8] = True
    # the package: mask= is swallowed by **kwargs, padding changes the real outputs
    peer_masked = peer(xp, mask=mask)
    assert torch.equal(peer_masked, peer(xp))
    assert (peer_masked[:, :8] - peer(x)).abs().max() > 1e-3
    # ours: padded run equals unpadded run at real positions
    assert (m(xp, attention_mask=mask)[:, :8] - m(x)).abs().max() < 1e-12


def test_left_padding_invariance():
    m = build()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    xp = torch.cat([torch.randn(2, 4, D, dtype=torch.float64), x, torch.randn(2, 2, D, dtype=torch.float64)], 1)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 4:10] = True
    yp = m(xp, attention_mask=mask)
    assert (yp[:, 4:10] - m(x)).abs().max() < 1e-12
    assert yp[:, :4].abs().max() == 0 and yp[:, 10:].abs().max() == 0


def test_max_len_and_refusals():
    m = build(max_len=12)
    assert m.capabilities.max_len == 12 and m.max_len == 12
    assert wersa.capabilities("linformer").max_len == 4096  # the class default
    assert wersa.capabilities("linformer", max_len=12) == m.capabilities  # per instance
    assert m(torch.randn(1, 12, D, dtype=torch.float64)).shape == (1, 12, D)
    with pytest.raises(ValueError, match="linformer: sequence length 13 exceeds .*max_len=12"):
        m(torch.randn(1, 13, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="linformer has no causal form"):
        wersa.build_mixer("linformer", dim=D, num_heads=H, causal=True)
    for bad in ({"projected_length": 0}, {"max_len": -1}, {"projected_length": 2.5}, {"dropout": 1.5}):
        with pytest.raises(ValueError, match="linformer"):
            wersa.build_mixer("linformer", dim=D, num_heads=H, **bad)
    with pytest.raises(ValueError, match="recurrent"):
        m.init_state(1)


def test_default_init_dtypes_and_grads():
    m = wersa.build_mixer("linformer", dim=D, num_heads=H)
    assert m.key_length_proj.shape == (4096, 256)
    assert m.key_length_proj.abs().max() <= 1 / math.sqrt(256)
    for dtype in (torch.float32, torch.bfloat16):
        mm = build(dtype=dtype)
        x = torch.randn(2, 7, D, dtype=dtype, requires_grad=True)
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[1, 5:] = False
        y = mm(x, attention_mask=mask)
        assert y.dtype == dtype and torch.isfinite(y).all()
        y.float().sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(mm.key_length_proj.grad).all()


def test_old_option_names_and_checkpoints_still_work():
    """0.1.0 named the projected length ``k``, one ``bias`` flag, and ``proj_k``/``proj_v``."""
    with pytest.warns(FutureWarning, match="'k' is now called 'projected_length'"):
        old = wersa.build_mixer("linformer", dim=D, num_heads=H, k=5, max_len=12, bias=True)
    assert old.projected_length == 5 and old.q_proj.bias is not None and old.out_proj.bias is not None
    state = {key.replace("key_length_proj", "proj_k").replace("value_length_proj", "proj_v"): v
             for key, v in old.state_dict().items()}
    assert "proj_k" in state and "key_length_proj" not in state
    new = build(dtype=torch.float32)
    new.load_state_dict(state)
    assert torch.equal(new.key_length_proj, old.key_length_proj)
    assert torch.equal(new.value_length_proj, old.value_length_proj)
