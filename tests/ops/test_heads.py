import pytest
import torch

from wersa.ops.heads import compute_dtype, merge_heads, split_heads


def test_split_then_merge_is_identity_and_heads_are_contiguous_slices():
    x = torch.randn(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(h[:, 1], x[..., 4:8])  # head i is the i-th slice of width d
    assert torch.equal(merge_heads(h), x)


@pytest.mark.parametrize("dtype,expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                            (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_compute_dtype(dtype, expected):
    assert compute_dtype(dtype) is expected


def test_split_qkv_heads_equals_chunked_split_in_values_and_gradients():
    from wersa.ops.heads import split_qkv_heads

    x = torch.randn(2, 5, 36, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3)]
    ours = split_qkv_heads(x, 3)
    ref = [split_heads(c, 3) for c in x.chunk(3, dim=-1)]
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    g_ours = torch.autograd.grad(sum((a * wi).sum() for a, wi in zip(ours, w)), x)[0]
    g_ref = torch.autograd.grad(sum((b * wi).sum() for b, wi in zip(ref, w)), x)[0]
    assert torch.equal(g_ours, g_ref)
    # one output unused: its gradient is zero
    g_q_only = torch.autograd.grad(split_qkv_heads(x, 3)[0].sum(), x)[0]
    assert torch.equal(g_q_only[..., :12], torch.ones(2, 5, 12, dtype=torch.float64))
    assert (g_q_only[..., 12:] == 0).all()
    with pytest.raises(ValueError, match="3\\*H\\*d"):
        split_qkv_heads(torch.randn(2, 5, 35), 3)


def test_gradients_in_one_buffer_pass_through_split_qkv_heads_without_a_copy():
    from wersa.bench.memory import AllocatedBytes
    from wersa.ops.heads import empty_like_qkv, is_fused_qkv, split_qkv_heads

    x = torch.randn(2, 5, 36, requires_grad=True)
    q, k, v = split_qkv_heads(x, 3)
    assert is_fused_qkv(q, k, v)
    assert not is_fused_qkv(q, q, q) and not is_fused_qkv(k, q, v)
    assert not is_fused_qkv(*(split_heads(c, 3) for c in torch.randn(2, 5, 36).chunk(3, dim=-1)[::-1]))
    g_q, g_k, g_v = empty_like_qkv(q, k, v, zero=True)
    assert is_fused_qkv(g_q, g_k, g_v) and g_q.untyped_storage().nbytes() == x.numel() * 4
    for i, g in enumerate((g_q, g_k, g_v)):
        g.fill_(i + 1.0)
    with AllocatedBytes() as probe:
        (g_x,) = torch.autograd.grad((q, k, v), x, (g_q, g_k, g_v))
    assert probe.total == 0  # the three gradients already lie where x's gradient goes
    assert torch.equal(g_x, torch.cat([torch.full((2, 5, 12), i + 1.0) for i in range(3)], dim=-1))
    separate = empty_like_qkv(q.detach().clone(), k, v)
    assert not is_fused_qkv(*separate)
