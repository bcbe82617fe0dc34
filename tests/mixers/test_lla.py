"""Local linear attention against its literal per-query reference."""

import pytest
import torch

import wersa
from wersa.mixers.lla import local_linear_attention, local_linear_attention_reference
from wersa.ops.softmax_attention import softmax_attention_reference


def qkv(n, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 2, 9])
def test_matches_reference_values_and_gradients(causal, n):
    q, k, v = (t.requires_grad_() for t in qkv(n))
    y = local_linear_attention(q, k, v, causal=causal, ridge_lambda=0.1)
    r = local_linear_attention_reference(q, k, v, causal=causal, ridge_lambda=0.1)
    assert torch.allclose(y, r, atol=1e-9, rtol=1e-7)
    g1 = torch.autograd.grad(y.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(r.square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-6)


def test_large_ridge_is_softmax_attention():
    q, k, v = qkv(7)
    y = local_linear_attention(q, k, v, causal=True, ridge_lambda=1e9)
    assert torch.allclose(y, softmax_attention_reference(q, k, v, causal=True), atol=1e-6)


def test_constant_values_reproduced():
    """Effective weights sum to one: constant values come back unchanged."""
    q, k, _ = qkv(8)
    v = torch.ones_like(q) * 3.0
    assert torch.allclose(local_linear_attention(q, k, v, causal=True), v, atol=1e-6)


def test_padding_and_empty_rows_give_finite_gradients():
    m = wersa.build_mixer("lla", dim=16, num_heads=2, causal=True).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False  # left padding: rows 0..2 of sequence 0 see no key
    y = m(x, attention_mask=mask)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and (y[0, :3] == 0).all()
    ref = m(x[:1, 3:].detach())
    assert torch.allclose(y[:1, 3:], ref, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype):
    m = wersa.build_mixer("lla", dim=16, num_heads=2, causal=True).to(dtype)
    y = m(torch.randn(1, 11, 16, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()


def test_step_equals_parallel_with_padding_steps():
    torch.manual_seed(0)
    m = wersa.build_mixer("lla", dim=16, num_heads=2, causal=True).double().eval()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y = m(x)
    s = m.init_state(2)
    outs = []
    for t in range(10):
        o, s = m.step(x[:, t], s)
        outs.append(o)
    assert torch.allclose(torch.stack(outs, 1), y, atol=1e-9)
    # a padding step leaves later outputs unchanged
    s = m.init_state(2)
    pad = torch.tensor([False, True])
    o_pad, s = m.step(torch.randn(2, 16, dtype=torch.float64), s, attention_mask=pad)
    outs = [m.step(x[:, t], s)[0] for t in range(1)]
    assert torch.allclose(outs[0][0], y[0, 0], atol=1e-9)


def test_bad_options():
    with pytest.raises(ValueError, match="ridge_lambda"):
        wersa.build_mixer("lla", dim=16, num_heads=2, ridge_lambda=0.0)
    assert wersa.capabilities("lla").linear_time is False


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [True, False])
def test_memory_is_n2_plus_n_d2_not_n2_d(causal):
    """No (N, N, d) intermediate: the largest tensor is within 2x of max(N^2, N d^2) per head."""
    B, H, n, d = 1, 2, 128, 8  # N^2 d = 131072 per head, against N^2 = 16384 and N d^2 = 8192
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with LargestTensor() as mode:
        y = local_linear_attention(q, k, v, causal=causal)
        torch.autograd.grad(y.square().sum(), (q, k, v))
    assert mode.largest <= 2 * B * H * max(n * n, n * d * d), mode.largest


def test_out_renamed_out_proj_and_bias_split():
    m = wersa.build_mixer("lla", dim=16, num_heads=2)
    old = {("out." + k[len("out_proj."):] if k.startswith("out_proj.") else k): v for k, v in m.state_dict().items()}
    fresh = wersa.build_mixer("lla", dim=16, num_heads=2)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.out_proj.weight, m.out_proj.weight)
    with pytest.warns(FutureWarning, match="qkv_bias"):
        nb = wersa.build_mixer("lla", dim=16, num_heads=2, bias=False)
    assert nb.qkv.bias is None and nb.out_proj.bias is None
