"""WERSA's decoding step: constants reused across tokens, and gradients through ``step``.

``step`` caches ``Omega^T / b`` and the key exponent terms while autograd is off; the
cache must follow in-place updates of ``beta`` and ``Omega`` (optimizer steps,
``redraw_features``, ``load_state_dict``) and dtype changes, and with autograd on
``step`` must give the parallel form's gradients.
"""

from __future__ import annotations

import torch

import wersa

F64 = torch.float64
DIM, HEADS = 16, 2


def build(seed=0, **opts):
    torch.manual_seed(seed)
    opts = {"levels": 2, "num_features": 16, "conv_size": 5, "chunk_size": 4, "block_size": 8, **opts}
    return wersa.build_mixer("wersa", dim=DIM, num_heads=HEADS, causal=True, **opts).eval().to(F64)


def x_of(n, b=2, seed=1):
    return torch.randn(b, n, DIM, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_step_follows_in_place_parameter_updates():
    m = build()
    x = x_of(7)
    with torch.no_grad():
        m.step_through(x)  # fills the cache with the old beta / Omega
        m.beta.add_(0.7)  # as an optimizer step would
        ys, _ = m.step_through(x)
        assert (ys - m(x)).abs().max().item() < 1e-10
        m.omega.copy_(m.omega.flip(1))  # as redraw_features would
        ys, _ = m.step_through(x)
        assert (ys - m(x)).abs().max().item() < 1e-10
        fresh = build(seed=3)
        m.load_state_dict(fresh.state_dict())
        ys, _ = m.step_through(x)
        assert (ys - fresh(x)).abs().max().item() < 1e-10


def test_step_follows_dtype_changes():
    m = build()
    with torch.no_grad():
        m.step_through(x_of(5))
        m32 = m.float()
        x = x_of(5).float()
        ys, _ = m32.step_through(x)
        assert (ys - m32(x)).abs().max().item() < 1e-5


def test_step_gradients_equal_parallel():
    m = build(levels=3)
    x = x_of(9).requires_grad_(True)
    params = [m.beta, m.qkv.weight, m.scale_weights, m.gate_conv.weight]
    m.step_through(x.detach())  # a cache filled without autograd must not be reused with it
    with torch.no_grad():
        m.step_through(x.detach())
    g_step = torch.autograd.grad(m.step_through(x)[0].square().sum(), [x, *params])
    g_par = torch.autograd.grad(m(x).square().sum(), [x, *params])
    for a, b in zip(g_step, g_par):
        assert a.abs().sum() > 0
        assert (a - b).abs().max().item() < 1e-9
