"""HyperAttention against exact softmax attention (wersa.ops.softmax_attention)."""

import math

import pytest
import torch

import wersa
from wersa.mixers.hyper import (
    gray_rank_table,
    hyper_attention_causal_reference,
    hyper_attention_noncausal,
    hyper_attention_reference,
    lsh_buckets,
)
from wersa.ops.softmax_attention import softmax_attention_reference as exact


def build(causal=False, **opts):
    return wersa.build_mixer("hyper", dim=32, num_heads=2, causal=causal, **opts)


def qkv(n, b=2, h=2, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def test_gray_rank_neighbours_differ_in_one_bit():
    rank = gray_rank_table(5)
    order = torch.argsort(rank)  # codes in sorted-bucket order
    diff = order[1:] ^ order[:-1]
    assert all(bin(int(x)).count("1") == 1 for x in diff)
    assert sorted(rank.tolist()) == list(range(32))


def test_lsh_buckets_shape_and_range():
    x = torch.randn(2, 3, 10, 8)
    proj = torch.randn(8, 4)
    bk = lsh_buckets(x, proj, gray_rank_table(4))
    assert bk.shape == (2, 3, 10) and int(bk.min()) >= 0 and int(bk.max()) < 16


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 2, 37, 64, 101])
def test_one_block_no_samples_is_exact(causal, n):
    """block_size >= n, sample_size = 0: sort + block + unsort (+ causal recursion) is exact."""
    m = build(causal, min_seq_len=4, window_size=1024, sample_size=0).double().eval()
    q, k, v = qkv(n)
    assert torch.allclose(m.attention(q, k, v), exact(q, k, v, causal=causal), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_block_samples_masked_in_every_dtype(dtype):
    """One block holding every key: every sample is in-block, so masking them leaves exact attention."""
    q, k, v = qkv(50, dtype=dtype)
    proj = torch.randn(16, 7, generator=torch.Generator().manual_seed(1))
    out, lse = hyper_attention_noncausal(
        q, k, v, proj, gray_rank_table(7), window_size=64, sample_size=32,
        generator=torch.Generator().manual_seed(0), scale=0.25)
    ref, ref_lse = exact(q.double(), k.double(), v.double(), return_lse=True)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(out.double(), ref, atol=tol)
    assert torch.allclose(lse.double(), ref_lse, atol=tol * 10)


def test_padded_key_block_is_masked():
    """n_k not a multiple of block_size: the zero-padded keys of the last block are excluded."""
    q, k, v = qkv(10)
    proj = torch.zeros(16, 3)  # every token in one bucket: sorted order = input order
    out, _ = hyper_attention_noncausal(q, k, v, proj, gray_rank_table(3), window_size=4,
                                       sample_size=0, generator=None, scale=0.25)
    # last key block = keys 8, 9 (+2 pads); query block i (4 queries... here ceil(10/3)=4) sees key block i
    ref = exact(q[:, :, 8:], k[:, :, 8:], v[:, :, 8:], scale=0.25)
    assert torch.allclose(out[:, :, 8:], ref, atol=1e-12)


def test_error_falls_with_sample_size():
    q, k, v = qkv(1024, b=1, dtype=torch.float32, seed=3)
    ref = exact(q, k, v)
    errs = []
    for s in (16, 128, 1024):
        m = build(min_seq_len=256, window_size=64, sample_size=s, seed=5).eval()
        errs.append(((m.attention(q, k, v) - ref).norm() / ref.norm()).item())
    assert errs[0] > errs[1] > errs[2]


def test_merge_of_disjoint_blocks_is_exact_when_sampling_everything_else():
    """Causal recursion with an exact off-diagonal part (block covering all keys) = exact causal."""
    for n in (200, 201):
        m = build(True, min_seq_len=30, window_size=4096, sample_size=0).double().eval()
        q, k, v = qkv(n)
        assert torch.allclose(m.attention(q, k, v), exact(q, k, v, causal=True), atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_below_min_seq_len_equals_exact_mixer_math(causal):
    m = build(causal).double().eval()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    q, k, v = m.qkv(x).reshape(2, 37, 3, 2, 16).permute(2, 0, 3, 1, 4)
    ref = m.out_proj(exact(q, k, v, causal=causal).transpose(1, 2).reshape(2, 37, 32))
    assert torch.allclose(m(x), ref, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_approximate_path_deterministic_causal_and_padding(causal):
    torch.manual_seed(0)
    m = build(causal, min_seq_len=16, window_size=8, sample_size=8).eval()
    x = torch.randn(2, 45, 32)
    y = m(x)
    assert torch.equal(y, m(x))  # eval: deterministic
    for side in ("right", "left"):
        pad = torch.randn(2, 6, 32)
        xp = torch.cat([x, pad], 1) if side == "right" else torch.cat([pad, x], 1)
        mask = torch.ones(2, 51, dtype=torch.bool)
        if side == "right":
            mask[:, 45:] = False
            yp = m(xp, attention_mask=mask)[:, :45]
        else:
            mask[:, :6] = False
            yp = m(xp, attention_mask=mask)[:, 6:]
        assert torch.allclose(yp, y, atol=1e-5), side
    if causal:
        x2 = x.clone()
        x2[:, 30:] += 1.0
        assert torch.allclose(m(x2)[:, :30], y[:, :30], atol=1e-5)


def test_gradients_finite_and_training_resamples():
    m = build(True, min_seq_len=16, window_size=8, sample_size=8).train()
    x = torch.randn(2, 41, 32, requires_grad=True)
    y1 = m(x)
    y1.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert not torch.equal(y1.detach(), m(x).detach())  # fresh samples per training step


def test_bfloat16_runs():
    m = build(True, min_seq_len=16, window_size=8, sample_size=8).to(torch.bfloat16).eval()
    y = m(torch.randn(1, 33, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_projection_is_seeded_and_saved():
    a, b, c = build(seed=1), build(seed=1), build(seed=2)
    assert torch.equal(a.lsh_proj, b.lsh_proj) and not torch.equal(a.lsh_proj, c.lsh_proj)
    assert "lsh_proj" in a.state_dict()


def test_bad_options():
    with pytest.raises(ValueError, match="window_size"):
        build(window_size=0)
    with pytest.raises(ValueError, match="sample_size"):
        build(sample_size=-1)
    with pytest.raises(ValueError, match="recurrent"):
        build(True).init_state(1)


@pytest.mark.slow
def test_relative_error_at_8k():
    """Defaults at 8192 tokens (>= min_seq_len): an approximation, reported not bounded tightly."""
    q, k, v = qkv(8192, b=1, h=1, d=64, dtype=torch.float32)
    m = wersa.build_mixer("hyper", dim=64, num_heads=1).eval()
    err = ((m.attention(q, k, v) - exact(q, k, v)).norm() / exact(q, k, v).norm()).item()
    assert math.isfinite(err)


@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("nq,nk,b,m", [(37, 37, 8, 8), (50, 23, 4, 16), (16, 64, 64, 5), (9, 9, 2, 0)])
def test_noncausal_matches_dense_reference(per_query, nq, nk, b, m):
    """Values, LSE and gradients of the sort/block/sample/merge path vs one dense softmax
    with multiplicities, float64, the same samples."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, nq, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, nk, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    proj = torch.randn(8, 3, generator=g, dtype=torch.float64)
    kw = dict(window_size=b, sample_size=m, scale=0.3, per_query=per_query)
    out, lse = hyper_attention_noncausal(q, k, v, proj, gray_rank_table(3),
                                         generator=torch.Generator().manual_seed(1), **kw)
    ref, ref_lse = hyper_attention_reference(q, k, v, proj, gray_rank_table(3),
                                             generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    ga = torch.autograd.grad((out * w).sum() + lse.sum(), (q, k, v))
    gb = torch.autograd.grad((ref * w).sum() + ref_lse.sum(), (q, k, v))
    for a, c in zip(ga, gb):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("n", [40, 45, 64])
def test_causal_mixer_matches_dense_recursion(n):
    m = build(True, min_seq_len=10, window_size=4, sample_size=6, lsh_num_projs=3).double().eval()
    q, k, v = (t.requires_grad_(True) for t in qkv(n))
    out = m.attention(q, k, v)
    ref, _ = hyper_attention_causal_reference(
        q, k, v, m.lsh_proj, m.gray_rank, min_seq_len=10, window_size=4, sample_size=6,
        generator=torch.Generator().manual_seed(m.seed + 1), scale=16 ** -0.5)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    for a, c in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_capabilities_report_the_quadratic_regime(causal):
    caps = wersa.capabilities("hyper", causal=causal, min_seq_len=100)
    m = build(causal, min_seq_len=100)
    assert m.capabilities == caps
    assert caps.quadratic_below == (101 if causal else 100)
    assert m.regime(99) == "exact" and m.regime(101) == "lsh"
    assert m.regime(100) == ("exact" if causal else "lsh")
    assert wersa.capabilities("hyper").quadratic_below == 4096
    # the regime named is the one that runs: exact attention equals the reference below it
    x = torch.randn(1, 99, 32)
    q, k, v = m.qkv(x).reshape(1, 99, 3, 2, 16).permute(2, 0, 3, 1, 4)
    ref = m.out_proj(exact(q, k, v, causal=causal).transpose(1, 2).reshape(1, 99, 32))
    torch.testing.assert_close(m(x), ref)


def test_block_size_is_now_window_size():
    with pytest.warns(FutureWarning, match="window_size"):
        m = wersa.build_mixer("hyper", dim=32, num_heads=2, block_size=16)
    assert m.window_size == 16


def test_0_1_0_names_load():
    """0.1.0: one ``bias`` flag and the output projection named ``out``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = wersa.build_mixer("hyper", dim=16, num_heads=2, bias=False)
    assert any("'bias' is now called" in str(w.message) for w in caught)
    assert old.qkv.bias is None and old.out_proj.bias is None
    state = {k.replace("out_proj.", "out."): v for k, v in old.state_dict().items()}
    new = wersa.build_mixer("hyper", dim=16, num_heads=2, qkv_bias=False, out_bias=False)
    new.load_state_dict(state)
    assert torch.equal(new.out_proj.weight, old.out_proj.weight)
