"""Linear attention: every form equals the explicit O(N^2) masked formula (float64)."""

import pytest
import torch

from wersa.ops.linear_attention import (
    causal_linear_attention,
    linear_attention,
    linear_attention_init_state,
    linear_attention_reference,
    linear_attention_step,
)


def inputs(n, m=6, d=3, b=2, h=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, n, m, generator=g, dtype=torch.float64).requires_grad_(True)
    k = torch.rand(b, h, n, m, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(b, h, n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    return q, k, v


def assert_same_with_grads(a, b, params):
    assert torch.allclose(a, b, atol=1e-11)
    g = torch.randn_like(a)
    for x, y in zip(torch.autograd.grad(a, params, g, retain_graph=True), torch.autograd.grad(b, params, g)):
        assert torch.allclose(x, y, atol=1e-10)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional(normalize, masked):
    q, k, v = inputs(11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    if masked:
        mask[0, 7:] = False
    km = mask if masked else None
    assert_same_with_grads(linear_attention(q, k, v, km, normalize=normalize),
                           linear_attention_reference(q, k, v, False, km, normalize=normalize), (q, k, v))


@pytest.mark.parametrize("n,chunk", [(1, 4), (9, 4), (16, 4), (17, 5), (30, 64)])
@pytest.mark.parametrize("normalize", [True, False])
def test_causal_chunked(n, chunk, normalize):
    q, k, v = inputs(n)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, : n // 3] = False
    assert_same_with_grads(
        causal_linear_attention(q, k, v, mask, chunk_size=chunk, normalize=normalize),
        linear_attention_reference(q, k, v, True, mask, normalize=normalize), (q, k, v))


@pytest.mark.parametrize("normalize", [True, False])
def test_recurrent_step_and_state_continuation(normalize):
    q, k, v = inputs(13)
    ref = linear_attention_reference(q, k, v, True, normalize=normalize)
    state = linear_attention_init_state(2, 2, 6, 3, dtype=torch.float64)
    outs = []
    for t in range(13):
        y, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, normalize=normalize)
        outs.append(y)
    assert torch.allclose(torch.stack(outs, 2), ref, atol=1e-12)
    # chunked prefix + continuation from its final state
    y1, s1 = causal_linear_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], chunk_size=3,
                                     normalize=normalize, return_state=True)
    y2 = causal_linear_attention(q[:, :, 8:], k[:, :, 8:], v[:, :, 8:], chunk_size=3,
                                 normalize=normalize, initial_state=s1)
    assert torch.allclose(torch.cat([y1, y2], 2), ref, atol=1e-12)
    assert torch.allclose(s1.S, state.S * 0 + (k[:, :, :8].transpose(-1, -2) @ v[:, :, :8]), atol=1e-12)


def test_chunked_never_builds_n_by_m_by_d():
    """Peak autograd memory of the chunked form stays far below an N x m x d prefix tensor."""
    n, m, d = 4096, 64, 32
    q = torch.rand(1, 1, n, m)
    k = torch.rand(1, 1, n, m)
    v = torch.randn(1, 1, n, d)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        causal_linear_attention(q, k, v, chunk_size=64)
    biggest = max((e.cpu_memory_usage for e in prof.key_averages()), default=0)
    assert biggest < n * m * d * 4 / 4


def test_bad_chunk_size():
    q, k, v = inputs(4)
    with pytest.raises(ValueError, match="chunk_size"):
        causal_linear_attention(q, k, v, chunk_size=0)
