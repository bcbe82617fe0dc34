"""The Mamba mixer: parallel = recurrent, padding, options."""

import pytest
import torch

import wersa
import wersa.mixers.mamba as mm
from wersa.ops.selective_scan import selective_scan_reference


def build(**opts):
    return wersa.build_mixer("mamba", dim=16, num_heads=2, causal=True, **opts)


def test_parallel_equals_sequential_reference_scan():
    torch.manual_seed(0)
    m = build(chunk_size=7).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64, requires_grad=True)
    y = m(x)
    # the same block with the token-by-token loop scan
    orig = mm.selective_scan
    mm.selective_scan = lambda *a, chunk_size, **k: selective_scan_reference(*a, **k)
    try:
        y_ref = m(x)
    finally:
        mm.selective_scan = orig
    assert torch.allclose(y, y_ref, atol=1e-10)
    g1 = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
    g2 = torch.autograd.grad(y_ref.square().sum(), [x, *m.parameters()])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("n", [1, 3, 37])
def test_step_and_prefill_equal_parallel(n):
    torch.manual_seed(1)
    m = build().eval()
    x = torch.randn(2, n, 16)
    with torch.no_grad():
        y = m(x)
        s = m.init_state(2)
        outs = []
        for t in range(n):
            o, s = m.step(x[:, t], s)
            outs.append(o)
        assert torch.allclose(torch.stack(outs, 1), y, atol=1e-5)
        k = n // 2
        yp, s = m.prefill(x[:, :k])
        for t in range(k, n):
            o, s = m.step(x[:, t], s)
            yp = torch.cat([yp, o[:, None]], 1)
        assert torch.allclose(yp, y, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance_and_prefill_state(side):
    torch.manual_seed(2)
    m = build().eval()
    x = torch.randn(2, 12, 16)
    nxt = torch.randn(2, 16)
    pad = torch.randn(2, 4, 16)
    xp = torch.cat([pad, x], 1) if side == "left" else torch.cat([x, pad], 1)
    mask = torch.ones(2, 16, dtype=torch.bool)
    if side == "left":
        mask[:, :4] = False
    else:
        mask[:, 12:] = False
    with torch.no_grad():
        y, s = m.prefill(x)
        yp, sp = m.prefill(xp, attention_mask=mask)
        real = yp[:, 4:] if side == "left" else yp[:, :12]
        assert torch.allclose(real, y, atol=1e-5)
        assert torch.allclose(m.step(nxt, sp)[0], m.step(nxt, s)[0], atol=1e-5)


def test_paper_block_whatever_num_heads_and_groups_as_an_option_and_dt_init():
    """The S6 block has one B/C selection: num_heads (passed by models) does not group it."""
    for heads in (1, 4):
        m = wersa.build_mixer("mamba", dim=32, num_heads=heads, causal=True)
        assert m.num_groups == 1 and m.x_proj.out_features == m.dt_rank + 2 * m.d_state and m.dt_rank == 2
    g = wersa.build_mixer("mamba", dim=32, num_heads=4, causal=True, num_groups=4)
    assert g.x_proj.out_features == g.dt_rank + 2 * 4 * g.d_state
    with pytest.raises(ValueError, match="num_groups"):
        wersa.build_mixer("mamba", dim=32, num_heads=4, causal=True, num_groups=3)
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert float(dt.min()) >= 1e-4 - 1e-7 and float(dt.max()) <= 0.1 + 1e-6
    assert torch.allclose(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))


def test_d_conv_renamed_conv_size():
    with pytest.warns(FutureWarning, match="conv_size"):
        m = wersa.build_mixer("mamba", dim=16, num_heads=2, causal=True, d_conv=3)
    assert m.conv_size == 3 and m.conv1d.kernel_size == (3,)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_parity_with_mambapy_on_copied_weights(num_heads):
    """mambapy 1.2's MambaBlock (sequential scan) with this block's weights, float64."""
    mp = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    m = wersa.build_mixer("mamba", dim=16, num_heads=num_heads, causal=True, chunk_size=5).double()
    cfg = mp.MambaConfig(d_model=16, n_layers=1, d_state=m.d_state, expand_factor=m.expand,
                         d_conv=m.conv_size, pscan=False)
    peer = mp.MambaBlock(cfg).double()
    missing, unexpected = peer.load_state_dict(m.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), peer(x), rtol=1e-9, atol=1e-10)


def test_gradients_and_bfloat16():
    m = build()
    x = torch.randn(2, 19, 16, requires_grad=True)
    m(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    mb = build().to(torch.bfloat16)
    y = mb(torch.randn(1, 9, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_causal_only_and_bad_options():
    with pytest.raises(ValueError, match="causal"):
        wersa.build_mixer("mamba", dim=16, num_heads=2, causal=False)
    with pytest.raises(ValueError, match="d_state"):
        build(d_state=0)
    with pytest.raises(ValueError, match="dt_min"):
        build(dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="conv_size"):
        build(conv_size=0)
