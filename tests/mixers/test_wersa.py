"""WERSA-specific promises (the shared matrix covers causality, padding, recurrence).

* the random features converge to exact softmax attention (measured vs SDPA);
* the bandwidth is a real temperature;
* long sequences: finite gradients at 16k tokens in float32 and bfloat16;
* options: redraw, relu, renamed options and parameters, refusals.

The published computation is tested in ``test_wersa_published.py``; padding, step and
prefill over a grid of options in ``test_wersa_grid.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.mixers.wersa import exact_kernel_attention
from wersa.ops.heads import split_heads


def build(causal=False, seed=0, **opts):
    torch.manual_seed(seed)
    return wersa.build_mixer("wersa", dim=opts.pop("dim", 32), num_heads=opts.pop("heads", 2),
                             causal=causal, **opts).eval()


def exact_core(m, x, causal):
    """SDPA on the mixer's own l2-normalised q, k (bandwidth 1, identity filter)."""
    q, k, v = (split_heads(t, m.num_heads) for t in m.qkv(x).chunk(3, dim=-1))
    return F.scaled_dot_product_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v,
                                          is_causal=causal, scale=1.0)


def relative_error(m_features, seeds, causal, n=256):
    errs = []
    for s in seeds:
        m = build(causal, seed=s, dim=64, heads=1, levels=0, num_features=m_features, feature_seed=s).double()
        x = torch.randn(1, n, 64, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
        with torch.no_grad():
            approx, exact = m.attend(x), exact_core(m, x, causal)
        errs.append(((approx - exact).norm() / exact.norm()).item())
    return float(np.mean(errs))


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_converges_to_softmax_attention(causal):
    seeds = range(5)
    errors = {m: relative_error(m, seeds, causal) for m in (64, 256, 1024, 4096)}
    print(f"\nrelative error vs SDPA (causal={causal}):", {m: round(e, 4) for m, e in errors.items()})
    assert errors[4096] * 2.5 <= errors[256]
    assert errors[64] > errors[256] > errors[1024] > errors[4096]


@pytest.mark.parametrize("causal", [False, True])
def test_exact_kernel_oracle_equals_sdpa(causal):
    m = build(causal, levels=0, dim=64, heads=1).double()
    x = torch.randn(1, 50, 64, dtype=torch.float64)
    with torch.no_grad():
        m.beta.fill_(math.log(math.expm1(1.0 - m.min_bandwidth)))  # b = 1
        assert torch.allclose(m.attend_exact(x), exact_core(m, x, causal), atol=1e-12)
        q, k, v = (split_heads(t, m.num_heads) for t in m.qkv(x).chunk(3, dim=-1))
        y = exact_kernel_attention(q, k, v, m.bandwidth, causal=causal)
        assert torch.allclose(y, exact_core(m, x, causal), atol=1e-12)


@pytest.mark.parametrize("old", ["published", "exact"])
def test_moved_feature_maps_say_where_they_went(old):
    with pytest.raises(ValueError, match="wersa_published" if old == "published" else "exact_kernel_attention"):
        build(feature_map=old)


@pytest.mark.parametrize("causal", [False, True])
def test_bandwidth_changes_the_output(causal):
    m = build(causal)
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y = m(x)
        m.beta.add_(2.0)
        assert (m(x) - y).abs().max().item() > 1e-2


@pytest.mark.parametrize("levels,n", [(3, 64), (3, 61), (2, 30)])
def test_causal_with_unequal_band_gains(levels, n):
    """The published gated DWT leaks within blocks of 2^L when bands get different gains; ours does not."""
    m = build(True, levels=levels)
    with torch.no_grad():
        m.scale_weights.copy_(torch.linspace(0.1, 3.0, levels + 1))
        x = torch.randn(1, n, 32)
        for t in (n - 1, n // 2, 5):
            x2 = x.clone()
            x2[:, t:] += 2.0
            assert torch.equal(m(x2)[:, :t], m(x)[:, :t])


def test_gates_and_bandwidth_receive_gradients():
    for causal in (False, True):
        m = build(causal).train()
        m(torch.randn(2, 24, 32)).pow(2).mean().backward()
        for name in ("beta", "scale_weights", "gate_conv.weight"):
            grad = m.get_parameter(name).grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_feature_redraw_only_in_training():
    m = build(redraw_interval=2)
    before = m.omega.clone()
    x = torch.randn(1, 8, 32)
    m.eval()
    for _ in range(5):
        m(x)
    assert torch.equal(m.omega, before)
    m.train()
    for _ in range(3):
        m(x)
    assert not torch.equal(m.omega, before)
    again = build(redraw_interval=2).train()
    for _ in range(3):
        again(x)
    assert torch.equal(again.omega, m.omega), "redraws are reproducible"


@pytest.mark.parametrize("option,value", [("levels", -1), ("num_features", 0), ("feature_map", "cosine"),
                                          ("conv_size", 0), ("chunk_size", 0), ("bandwidth", 0.0),
                                          ("min_bandwidth", 0.0), ("redraw_interval", 0)])
def test_invalid_options(option, value):
    with pytest.raises(ValueError, match=option):
        build(**{option: value})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_gradients_at_16k_tokens(causal, dtype):
    m = build(causal, dim=64, heads=2, num_features=64).train().to(dtype)
    x = torch.randn(1, 16384, 64, dtype=dtype, requires_grad=True)
    y = m(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y.float()).all()
    assert torch.isfinite(x.grad.float()).all()
    assert all(torch.isfinite(p.grad.float()).all() for p in m.parameters() if p.grad is not None)


# ------------------------------------------------------------- renamed names
def test_old_option_names_still_work_with_a_future_warning():
    with pytest.warns(FutureWarning, match="recompute"):
        m = wersa.build_mixer("wersa", dim=32, num_heads=2, fused=False)
    assert m.recompute is False
    with pytest.warns(FutureWarning, match="conv_size"):
        m = wersa.build_mixer("wersa", dim=32, num_heads=2, kernel_size=7)
    assert m.conv_size == 7 and m.gate_conv.kernel_size == (7,)


def test_old_config_options_still_build():
    from wersa.models import WersaConfig, WersaForSequenceClassification

    with pytest.warns(FutureWarning):
        cfg = WersaConfig(mixer="wersa", mixer_options={"fused": False, "kernel_size": 5, "levels": 1},
                          hidden_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=11,
                          num_labels=2)
        model = WersaForSequenceClassification(cfg)
    mixer = model.wersa.layers[0].mixer if hasattr(model, "wersa") else next(
        mod for mod in model.modules() if isinstance(mod, wersa.mixers.wersa.WERSA))
    assert mixer.conv_size == 5 and mixer.recompute is False


def test_a_0_1_0_state_dict_loads():
    """0.1.0 named the output projection ``out``; such checkpoints load into ``out_proj``."""
    m = build()
    old = {("out." + k[len("out_proj."):] if k.startswith("out_proj.") else k): v.clone()
           for k, v in m.state_dict().items()}
    assert "out.weight" in old and "out_proj.weight" not in old
    fresh = build(seed=5)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.out_proj.weight, m.out_proj.weight)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))


def test_projection_biases():
    m = build(qkv_bias=True, out_bias=True)
    assert m.qkv.bias is not None and m.out_proj.bias is not None
    assert build().qkv.bias is None and build().out_proj.bias is None


# ------------------------------------------------------------- kernel accuracy
def _kernel_errors(b, m_features, n=256, seed=0):
    """(error vs softmax(cos/b^2), error vs softmax(cos), uniform error) of the bidirectional core."""
    m = build(False, seed=seed, dim=32, heads=1, levels=0, num_features=m_features, feature_seed=seed).double()
    x = torch.randn(1, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(50 + seed))
    with torch.no_grad():
        m.beta.fill_(math.log(math.expm1(b - m.min_bandwidth)))
        approx, exact = m.attend(x), m.attend_exact(x)
        m.beta.fill_(math.log(math.expm1(1.0 - m.min_bandwidth)))
        exact_b1 = m.attend_exact(x)
        v = split_heads(m.qkv(x).chunk(3, dim=-1)[2], m.num_heads)
    rel = lambda a, r: ((a - r).norm() / r.norm()).item()  # noqa: E731
    return rel(approx, exact), rel(approx, exact_b1), rel(v.mean(2, keepdim=True).expand_as(v), exact)


def test_kernel_accuracy_beats_uniform_attention_and_improves_with_features():
    """docs/wersa.md has the full table (benchmarks/wersa_kernel_accuracy.py)."""
    e256, _, uniform = _kernel_errors(1.0, 256)
    e4096, _, _ = _kernel_errors(1.0, 4096)
    assert e4096 < e256 < uniform
    assert e4096 < 0.3 * uniform


def test_estimated_kernel_temperature_follows_the_bandwidth():
    """At b = 0.5 the features estimate softmax(cos / 0.25), not softmax(cos)."""
    err_own, err_b1, _ = _kernel_errors(0.5, 4096)
    assert err_own < err_b1


def test_checkpoint_with_0_1_0_random_feature_buffers_loads():
    """0.1.0 saved WERSA's Omega as ``omega`` and a ``forward_count``; they load into the shared buffers."""
    m = wersa.build_mixer("wersa", dim=32, num_heads=4, num_features=16)
    state = m.state_dict()
    old = {("omega" if k == "projection_matrix" else k): v for k, v in state.items()
           if k not in ("redraws", "calls_since_redraw")}
    old["forward_count"] = torch.tensor(7)
    old["omega"] = torch.randn_like(old["omega"])
    fresh = wersa.build_mixer("wersa", dim=32, num_heads=4, num_features=16, feature_seed=9)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.projection_matrix, old["omega"]) and int(fresh.redraws) == 0


@pytest.mark.parametrize("causal", [False, True])
def test_lean_layer_allocates_few_sequence_sized_tensors(causal):
    """Forward + backward of the memory-lean layer: every fresh tensor of half an input size or
    more is a page-faulted ``mmap`` at long lengths on CPU, so their number is kept down. The
    core's output is stored token-major (the heads' merge is a view), and its q, k, v gradients
    fill one buffer laid out like the qkv projection (no concatenation after it); the gate
    convolution reads and writes token-major memory. What remains: the projections' outputs and
    input gradients, the gate convolution's output and input gradient (and, with more than one
    batch row, a copy of its input, in chunks, for its weight gradient), the core's output and q/k/v gradients, the head norm and its gradient, and
    the gradient sum of ``x``'s two uses (qkv and gates)."""
    from wersa.bench.memory import AllocatedBytes

    m = wersa.build_mixer("wersa", dim=64, num_heads=4, causal=causal, levels=2, num_features=16, block_size=64,
                          chunk_size=16, conv_size=5)
    x = torch.randn(2, 512, 64, requires_grad=True)
    with AllocatedBytes(min_bytes=x.numel() * 4 // 2) as probe:
        m(x).sum().backward()
    # 22 (26 input sizes) with a copy for the heads' merge, a concatenated qkv gradient and the
    # gate convolution on channel-major copies
    count, size = (14, 18.01) if not causal else (15, 19.03)
    assert probe.count <= count, probe.count
    assert probe.total <= size * x.numel() * 4, probe.total / (x.numel() * 4)
