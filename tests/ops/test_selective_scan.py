"""Chunked selective scan against the token-by-token reference."""

import pytest
import torch
import torch.nn.functional as F

from wersa.ops.selective_scan import selective_scan, selective_scan_reference, selective_scan_step


def inputs(b=2, L=37, Dm=8, N=4, G=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, z = r(b, L, Dm), r(b, L, Dm)
    delta = F.softplus(r(b, L, Dm))
    A = -torch.exp(r(Dm, N))
    B, C, D = r(b, L, G, N), r(b, L, G, N), r(Dm)
    return [t.to(dtype) for t in (u, delta, A, B, C, D, z)]


@pytest.mark.parametrize("L,chunk", [(1, 16), (37, 16), (37, 5), (64, 64)])
def test_chunked_equals_reference_values_state_gradients(L, chunk):
    args = [t.requires_grad_() for t in inputs(L=L)]
    h0 = torch.randn(2, 8, 4, dtype=torch.float64)
    y1, h1 = selective_scan(*args, initial_state=h0, chunk_size=chunk, return_state=True)
    y2, h2 = selective_scan_reference(*args, initial_state=h0, return_state=True)
    assert torch.allclose(y1, y2, atol=1e-10) and torch.allclose(h1, h2, atol=1e-10)
    g1 = torch.autograd.grad(y1.square().sum() + h1.sum(), args)
    g2 = torch.autograd.grad(y2.square().sum() + h2.sum(), args)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-8)


def test_long_sequence_float32_no_overflow():
    """4k tokens, large steps: chunk-local log-decays never overflow; matches the loop."""
    u, delta, A, B, C, D, z = inputs(b=1, L=4096, Dm=4, N=4, G=1, dtype=torch.float32)
    delta = delta * 5
    y1 = selective_scan(u, delta, A, B, C, D, z)
    y2 = selective_scan_reference(u, delta, A, B, C, D, z)
    assert torch.isfinite(y1).all()
    assert torch.allclose(y1, y2, rtol=6e-4, atol=2e-3)


def test_zero_delta_is_identity_step():
    u, delta, A, B, C, D, z = inputs(L=5)
    delta[:, 2] = 0
    _, h_a = selective_scan(u[:, :2], delta[:, :2], A, B[:, :2], C[:, :2], return_state=True)
    _, h_b = selective_scan(u[:, :3], delta[:, :3], A, B[:, :3], C[:, :3], return_state=True)
    assert torch.allclose(h_a, h_b)


def test_step_matches_scan():
    u, delta, A, B, C, D, z = inputs(L=6)
    y, h = selective_scan(u, delta, A, B, C, D, z, return_state=True)
    s = torch.zeros(2, 8, 4, dtype=torch.float64)
    for t in range(6):
        y_t, s = selective_scan_step(u[:, t], delta[:, t], A, B[:, t], C[:, t], s, D, z[:, t])
        assert torch.allclose(y_t, y[:, t])
    assert torch.allclose(s, h)


def test_bfloat16_computes_in_float32():
    args = inputs(L=20, dtype=torch.bfloat16)
    y = selective_scan(*args)
    ref = selective_scan_reference(*[t.double() for t in args])
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.double(), ref, rtol=3e-2, atol=5e-2)


def test_bad_shapes():
    u, delta, A, B, C, D, z = inputs()
    with pytest.raises(ValueError, match="groups"):
        selective_scan(u, delta, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)


@pytest.mark.parametrize("chunk,block", [(4, 10), (7, 7), (3, 64), (16, 5)])
def test_two_level_scan_any_chunk_and_block_equals_reference(chunk, block):
    """Chunks that do not divide blocks, blocks that do not divide L, groups: values and gradients."""
    args = [t.requires_grad_() for t in inputs(L=29, G=2, seed=3)]
    h0 = torch.randn(2, 8, 4, dtype=torch.float64, requires_grad=True)
    y1, h1 = selective_scan(*args, initial_state=h0, chunk_size=chunk, block_size=block, return_state=True)
    y2, h2 = selective_scan_reference(*args, initial_state=h0, return_state=True)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(y1.square().sum() + h1.sum(), [*args, h0])
    g2 = torch.autograd.grad(y2.square().sum() + h2.sum(), [*args, h0])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bad_chunk_or_block():
    u, delta, A, B, C, D, z = inputs()
    with pytest.raises(ValueError, match="block_size"):
        selective_scan(u, delta, A, B, C, block_size=0)
