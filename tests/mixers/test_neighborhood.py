"""Neighbourhood attention against dense masked softmax built from the window formula."""

import pytest
import torch

import wersa
from wersa.mixers.neighborhood import (
    neighborhood_mask_2d, neighborhood_reference, neighborhood_window, window_mask_reference as formula_mask,
)

D, H = 16, 2


def window_as_dense(n, k, r, causal):
    idx, valid = neighborhood_window(torch.arange(n), torch.tensor(n), k, r, causal)
    dense = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        dense[i, idx[i][valid[i]]] = True
    assert int(valid.sum(-1).max()) <= k
    return dense


CASES = [(13, 5, 1), (13, 4, 1), (14, 3, 3), (13, 4, 2), (10, 1, 1), (11, 7, 2), (13, 13, 1), (9, 20, 1)]


@pytest.mark.parametrize("n,k,r", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_window_equals_formula(n, k, r, causal):
    assert torch.equal(window_as_dense(n, k, r, causal), formula_mask(n, k, r, causal))


def test_formula_properties():
    # interior, odd k: symmetric neighbourhood |i - j| <= k // 2
    m = formula_mask(20, 5)
    assert m[10].nonzero().flatten().tolist() == [8, 9, 10, 11, 12]
    # borders are shifted, not truncated: every query sees exactly k keys
    assert (m.sum(-1) == 5).all() and m[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    # even k: one more key on the left
    assert formula_mask(20, 4)[10].nonzero().flatten().tolist() == [8, 9, 10, 11]
    # dilation 3 on 14 tokens: groups of 5, 5, 4 tokens
    m = formula_mask(14, 3, 3)
    assert m[13].nonzero().flatten().tolist() == [7, 10, 13]
    assert m[1].nonzero().flatten().tolist() == [1, 4, 7]
    # k = n: full attention; causal k >= n: full causal; k * r > n: clamped per group
    assert formula_mask(9, 9).all()
    assert torch.equal(formula_mask(9, 12, causal=True), torch.ones(9, 9, dtype=torch.bool).tril())
    assert (formula_mask(10, 7, 2).sum(-1) == 5).all()
    # causal: the k most recent keys of the group, itself included
    assert formula_mask(12, 3, 2, causal=True)[9].nonzero().flatten().tolist() == [5, 7, 9]


@pytest.mark.parametrize("n,k,r", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_mixer_matches_dense_masked_softmax(n, k, r, causal):
    torch.manual_seed(0)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, causal=causal,
                          window_size=k, dilation=r).double()
    x = torch.randn(2, n, D, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, ref = m(x), neighborhood_reference(m, x2)
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad((y * g).sum(), x)[0],
                               torch.autograd.grad((ref * g).sum(), x2)[0])


def test_2d_matches_dense():
    Hh, Ww, (kh, kw), (rh, rw) = 5, 6, (3, 4), (1, 2)
    torch.manual_seed(0)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, image_size=(Hh, Ww),
                          window_size=(kh, kw), dilation=(rh, rw)).double()
    x = torch.randn(2, Hh * Ww, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), neighborhood_reference(m, x))
    idx, valid = neighborhood_mask_2d((Hh, Ww), (kh, kw), (rh, rw))
    # columns: groups of 3 tokens, so kw = 4 is clamped to 3 keys per axis
    assert idx.shape == (Hh * Ww, kh * kw) and (valid.sum(-1) == kh * 3).all()


@pytest.mark.parametrize("k,r", [(5, 1), (4, 2), (3, 3)])
def test_step_equals_parallel(k, r):
    torch.manual_seed(0)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, causal=True, window_size=k, dilation=r).double()
    x = torch.randn(2, 14, D, dtype=torch.float64)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, :3] = False
    mask[1, 8] = False
    for msk in (None, mask):
        ys, s = m.step_through(x, attention_mask=msk)
        torch.testing.assert_close(ys, m(x, attention_mask=msk))
    assert s["k"].shape[2] == (k - 1) * r + 1


@pytest.mark.parametrize("causal", [False, True])
def test_padding_any_pattern(causal):
    """Windows are computed over each row's real tokens: right/left/inner padding invariant."""
    torch.manual_seed(0)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, causal=causal, window_size=4, dilation=2).double()
    x = torch.randn(3, 13, D, dtype=torch.float64)
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[0, 9:] = False
    mask[1, :5] = False
    mask[2, [2, 3, 7]] = False
    y = m(x, attention_mask=mask)
    torch.testing.assert_close(y, neighborhood_reference(m, x, mask))
    for b in range(3):
        torch.testing.assert_close(y[b, mask[b]], m(x[b : b + 1, mask[b]])[0])
        assert torch.all(y[b, ~mask[b]] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_dtypes_lengths_and_grads_finite(dtype, causal):
    torch.manual_seed(0)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, causal=causal, window_size=5).to(dtype)
    for n in (1, 2, 9):
        x = torch.randn(2, n, D, dtype=dtype, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        y.float().square().mean().backward()
        assert torch.isfinite(x.grad).all()


def test_defaults_and_errors():
    assert wersa.build_mixer("neighborhood", dim=D, num_heads=H).window_size == 31
    assert wersa.build_mixer("neighborhood", dim=D, num_heads=H, image_size=(4, 4)).window_size == (7, 7)
    with pytest.raises(ValueError, match="neighborhood"):
        wersa.build_mixer("neighborhood", dim=D, num_heads=H, window_size=0)
    with pytest.raises(ValueError, match="neighborhood"):
        wersa.build_mixer("neighborhood", dim=D, num_heads=H, window_size=(3, 3))
    with pytest.raises(ValueError, match="bidirectional only"):
        wersa.build_mixer("neighborhood", dim=D, num_heads=H, causal=True, image_size=(4, 4))
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, image_size=(4, 4))
    with pytest.raises(ValueError, match="needs N = 16"):
        m(torch.randn(1, 15, D))
    with pytest.raises(ValueError, match="no padding mask"):
        m(torch.randn(1, 16, D), attention_mask=torch.arange(16).view(1, 16) < 10)


def test_old_option_names_still_work():
    with pytest.warns(FutureWarning, match="'kernel_size' is now called 'window_size'"):
        m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, kernel_size=5, bias=False)
    assert m.window_size == 5 and m.qkv.bias is None and m.out_proj.bias is None


# ------------------------------------------------------------------ parity with NATTEN
# NATTEN 0.21 on CPU runs through its Flex Attention backend: float32 (no float64), forward
# only (no backward on CPU), and it refuses k * r > n (clamped per group here). Install:
# pip install --no-build-isolation --no-deps natten==0.21.7  (its build imports torch).
NATTEN_CASES = [(13, 5, 1), (13, 4, 1), (14, 3, 3), (13, 4, 2), (11, 5, 2), (64, 7, 1), (40, 31, 1)]


def natten_pair(natten, dim: int = 2, **opts):
    """Our mixer and NATTEN's ``NeighborhoodAttention{1,2}D`` holding the same weights.

    Both fuse q/k/v in one ``Linear(D, 3D)`` read as ``(3, heads, head_dim)``; NATTEN's
    ``proj`` is our ``out_proj``; NATTEN's ``kernel_size`` is our ``window_size``.
    """
    torch.manual_seed(0)
    image_size = opts.pop("image_size", None)
    k, r, causal = opts["window_size"], opts["dilation"], opts.get("causal", False)
    m = wersa.build_mixer("neighborhood", dim=D, num_heads=H, image_size=image_size, **opts).eval()
    cls = natten.NeighborhoodAttention2D if image_size else natten.NeighborhoodAttention1D
    peer = cls(D, H, kernel_size=k, dilation=r, is_causal=causal).eval()
    with torch.no_grad():
        peer.qkv.weight.copy_(m.qkv.weight)
        peer.qkv.bias.copy_(m.qkv.bias)
        peer.proj.weight.copy_(m.out_proj.weight)
        peer.proj.bias.copy_(m.out_proj.bias)
    return m, peer


def import_natten():
    natten = pytest.importorskip("natten")
    if not hasattr(natten, "NeighborhoodAttention1D"):
        pytest.skip("natten without NeighborhoodAttention1D")
    return natten


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("n,k,r", NATTEN_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_parity_with_natten_1d(n, k, r, causal):
    """Same weights, float32: even windows, dilation with unequal groups, shifted borders."""
    natten = import_natten()
    m, peer = natten_pair(natten, window_size=k, dilation=r, causal=causal)
    x = torch.randn(2, n, D, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        assert (m(x) - peer(x)).abs().max() < 2e-6


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("k,r", [((3, 3), (1, 1)), ((5, 3), (1, 2))])
def test_parity_with_natten_2d(k, r):
    natten = import_natten()
    Hh, Ww = 5, 6
    m, peer = natten_pair(natten, image_size=(Hh, Ww), window_size=k, dilation=r)
    x = torch.randn(2, Hh * Ww, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = peer(x.view(2, Hh, Ww, D)).reshape(2, Hh * Ww, D)
        assert (m(x) - ref).abs().max() < 2e-6


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("causal", [False, True])
def test_padded_rows_equal_natten_on_the_unpadded_sequence(causal):
    """NATTEN has no padding mask; a padded row here equals NATTEN on the real tokens alone."""
    natten = import_natten()
    m, peer = natten_pair(natten, window_size=5, dilation=2, causal=causal)
    x = torch.randn(3, 16, D, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[0, 12:] = False
    mask[1, :4] = False
    mask[2, [3, 8, 9]] = False
    with torch.no_grad():
        y = m(x, attention_mask=mask)
        for b in range(3):
            assert (y[b, mask[b]] - peer(x[b : b + 1, mask[b]])[0]).abs().max() < 2e-6
