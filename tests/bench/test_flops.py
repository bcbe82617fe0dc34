"""FLOP formulas registered for the ops PyTorch's counter leaves at 0, checked against hand counts."""

import torch
import torch.nn.functional as F

from wersa.bench.flops import count_flops, fft_flops, forward_and_step_flops, register_extra_flop_formulas


def test_registration_is_idempotent():
    register_extra_flop_formulas()
    assert register_extra_flop_formulas() == []


def test_cpu_sdpa_forward_and_backward_hand_count():
    b, h, n, d = 2, 3, 16, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    fwd = count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    # Q K^T: 2*b*h*n*n*d; P V: 2*b*h*n*n*d
    assert fwd == 4 * b * h * n * n * d
    total = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    # backward: five n x n x d products (recompute scores, dP, dV, dQ, dK)
    assert total - fwd == 5 * 2 * b * h * n * n * d


def test_cpu_sdpa_cross_attention_shapes():
    q = torch.randn(1, 2, 10, 4)
    k = torch.randn(1, 2, 6, 4)
    v = torch.randn(1, 2, 6, 5)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * 2 * 10 * 6 * 4 + 2 * 2 * 10 * 6 * 5


def test_fft_hand_counts():
    x = torch.randn(3, 64, 8)
    # rfft over 64: 3*8 transforms of 2.5 * 64 * log2(64)
    assert count_flops(lambda: torch.fft.rfft(x, dim=1)) == 3 * 8 * 2.5 * 64 * 6
    # complex 2-D FFT: per dim, (numel / n) transforms of 5 n log2 n
    xc = x.to(torch.complex64)
    assert count_flops(lambda: torch.fft.fft2(xc)) == 3 * 8 * 5 * 64 * 6 + 3 * 64 * 5 * 8 * 3
    # irfft back to 64 real samples costs as much as the rfft
    spec = torch.fft.rfft(x, dim=1)
    assert count_flops(lambda: torch.fft.irfft(spec, n=64, dim=1)) == 3 * 8 * 2.5 * 64 * 6
    assert fft_flops((4, 1), [1]) == 0  # a length-1 transform is free


def test_forward_and_step_flops_linear_model():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3, bias=False)

        def forward(self, x, labels=None):
            out = self.lin(x)
            return {"logits": out, "loss": out.sum()}

    m = M()
    fwd, step = forward_and_step_flops(m, {"x": torch.randn(4, 5)})
    assert fwd == 2 * 4 * 5 * 3
    assert step == 2 * fwd  # input needs no grad: forward + the weight-gradient product
    assert m.lin.weight.grad is None


def test_in_place_matmuls_count_like_their_out_of_place_forms():
    """``baddbmm_`` / ``addmm_`` (the memory-lean causal core accumulates with them) are matmuls too."""
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    acc = torch.zeros(3, 4, 6)
    assert count_flops(lambda: acc.baddbmm_(a, b)) == 2 * 3 * 4 * 5 * 6
    assert count_flops(lambda: acc.baddbmm_(a, b, beta=0)) == count_flops(lambda: torch.baddbmm(acc, a, b))
    assert count_flops(lambda: acc[0].addmm_(a[0], b[0])) == 2 * 4 * 5 * 6


def test_the_causal_memory_lean_core_counts_every_product():
    """Forward of the chunked causal core, counted by hand: features (2 n m d per side) and, per
    chunk of c tokens, scores (2 c c m), their product with [v | 1] (2 c c (d+1)), the queries
    against the running state (2 c m (d+1)) and the state update (2 m c (d+1))."""
    from wersa.ops.favor_attention import favor_attention

    bh, n, d, m, c = 2, 64, 4, 8, 16
    q, k, v = (torch.randn(1, bh, n, d) for _ in range(3))
    omega, bw = torch.randn(bh, m, d), torch.ones(bh)
    got = count_flops(lambda: favor_attention(q, k, v, omega, bw, causal=True, chunk_size=c, block_size=n))
    chunks = n // c
    want = bh * (2 * (2 * n * m * d) + chunks * (2 * c * c * m + 2 * c * c * (d + 1) + 2 * 2 * c * m * (d + 1)))
    assert got == want
