"""The fused FAVOR+ core and the lean wavelet filters equal their plain autograd forms (float64).

* values and gradients (q, k, v, bandwidth) of :func:`favor_attention` equal
  :func:`favor_attention_reference`, bidirectional and causal, with padding, with
  blocks and chunks that do not divide the length;
* ``gradcheck`` of the fused node and of the lean Haar filter / causal pyramid;
* the prefill form returns the same running sums as the chunked reference;
* the WERSA mixer gives the same outputs and parameter gradients with
  ``recompute=True`` and ``recompute=False``;
* memory: the fused node saves no ``(N, m)`` tensor (counted with saved-tensor hooks).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import wersa
from wersa.ops.causal_pyramid import causal_haar_pyramid, causal_haar_pyramid_lean
from wersa.ops.favor_attention import favor_attention, favor_attention_reference, favor_attention_with_state
from wersa.ops.feature_maps import normalized_key_shift, orthogonal_random_matrix, softmax_kernel_features
from wersa.ops.haar import haar_filter, haar_filter_lean, padded_length
from wersa.ops.linear_attention import causal_linear_attention

F64 = torch.float64


def inputs(n, b=2, h=3, d=5, m=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=F64).requires_grad_(True) for _ in range(3))
    omega = torch.stack([orthogonal_random_matrix(m, d, generator=g, dtype=F64) for _ in range(h)])
    bw = (torch.rand(h, generator=g, dtype=F64) + 0.6).requires_grad_(True)
    return q, k, v, omega, bw


def padding_mask(b, n):
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, n - 5:] = False  # right padding
    mask[-1, :3] = False  # left padding
    return mask


def assert_close_with_grads(a, r, params):
    assert torch.allclose(a, r, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(a)
    for x, y in zip(torch.autograd.grad(a, params, g, retain_graph=True), torch.autograd.grad(r, params, g)):
        # rows whose keys are all padding divide by eps: compare relative to the largest entry
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12 * max(1.0, y.abs().max().item()))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n, chunk, block", [(37, 4, 10), (5, 8, 2048), (64, 16, 32), (1, 3, 3)])
@pytest.mark.parametrize("shifted", [False, True])
def test_fused_equals_reference(causal, masked, n, chunk, block, shifted):
    q, k, v, omega, bw = inputs(n)
    mask = padding_mask(2, n) if masked and n > 8 else None
    shift = normalized_key_shift(omega, bw) if shifted else None
    a = favor_attention(q, k, v, omega, bw, causal=causal, key_mask=mask, chunk_size=chunk, block_size=block,
                        key_shift=shift)
    r = favor_attention_reference(q, k, v, omega, bw, causal=causal, key_mask=mask, chunk_size=chunk,
                                  key_shift=shift)
    assert_close_with_grads(a, r, (q, k, v, bw))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n, block", [(37, 10), (5, 2048), (64, 7), (1, 3)])
@pytest.mark.parametrize("key_shift", [None, "max"])
def test_unnormalized_fused_equals_reference(masked, n, block, key_shift):
    """Performer's form: inputs only scaled (no l2 normalisation), keys shifted by their running max."""
    q, k, v, omega, bw = inputs(n)
    with torch.no_grad():  # norms well above 1, where the max shift matters
        q.mul_(3.0), k.mul_(3.0)
    mask = padding_mask(2, n) if masked and n > 8 else None
    a = favor_attention(q, k, v, omega, bw, causal=False, key_mask=mask, block_size=block, key_shift=key_shift,
                        normalize=False)
    r = favor_attention_reference(q, k, v, omega, bw, causal=False, key_mask=mask, key_shift=key_shift,
                                  normalize=False)
    assert_close_with_grads(a, r, (q, k, v, bw))


def test_running_key_max_survives_keys_beyond_float32_exponents():
    """Key exponents near +-300 (beyond exp's float32 range either way): the running max keeps
    every real key finite, later blocks that raise the max rescale the sums, and a padded key
    far above the real ones is ignored (no inf * 0)."""
    q, k, v, omega, bw = (t.detach().float() for t in inputs(40, b=2, h=2, d=4, m=6))
    k = k * 12.0
    k[:, :, 30:] *= 2.0  # the last block holds the largest keys: the max grows mid-sequence
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :4] = False
    k[1, :, :4] = 1e3  # padded keys far above every real key
    kw = dict(causal=False, key_mask=mask, key_shift="max", normalize=False)
    a = favor_attention(q, k, v, omega, torch.ones(2), block_size=8, **kw)
    r = favor_attention_reference(q.double(), k.double(), v.double(), omega.double(), torch.ones(2, dtype=F64), **kw)
    assert torch.isfinite(a).all()
    assert torch.allclose(a.double(), r, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'max'"):
        favor_attention(q, k, v, omega, torch.ones(2), causal=False, key_shift="min", normalize=False)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n, chunk, block", [(37, 4, 10), (5, 8, 2048), (64, 16, 32), (1, 3, 3)])
@pytest.mark.parametrize("normalize", [False, True])
def test_causal_running_key_max_equals_reference(masked, n, chunk, block, normalize):
    """Causal keys shifted by each query's running max (Performer's causal form) in the lean
    core equal the explicit formula, values and gradients, with padding on both sides."""
    q, k, v, omega, bw = inputs(n)
    with torch.no_grad():
        q.mul_(3.0), k.mul_(3.0)
        k[:, :, n // 2:] *= 2.0  # the max grows mid-sequence: states are rescaled
    mask = padding_mask(2, n) if masked and n > 8 else None
    kw = dict(causal=True, key_mask=mask, key_shift="max", normalize=normalize)
    a = favor_attention(q, k, v, omega, bw, chunk_size=chunk, block_size=block, **kw)
    r = favor_attention_reference(q, k, v, omega, bw, **kw)
    assert_close_with_grads(a, r, (q, k, v, bw))


def test_causal_running_key_max_survives_keys_beyond_float32_exponents_and_is_causal():
    """Key exponents near -300 (float32's exp gives 0 there): finite, equal to the float64 reference;
    a future key far above every earlier one (or a padded key) changes no earlier output, not even
    through a shift shared by its chunk or block."""
    q, k, v, omega, bw = (t.detach().float() for t in inputs(40, b=2, h=2, d=4, m=6))
    k = k * 12.0
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :4] = False
    k[1, :, :4] = 1e3  # padded keys far above every real key
    kw = dict(causal=True, key_mask=mask, key_shift="max", normalize=False, chunk_size=4, block_size=8)
    a = favor_attention(q, k, v, omega, torch.ones(2), **kw)
    r = favor_attention_reference(q.double(), k.double(), v.double(), omega.double(), torch.ones(2, dtype=F64),
                                  **{key: val for key, val in kw.items() if key != "block_size"})
    assert torch.isfinite(a).all()
    assert torch.allclose(a.double(), r, rtol=1e-4, atol=1e-5)
    t = 21  # inside a chunk and a block
    k2 = k.clone()
    k2[:, :, t] /= 12.0  # exponents near 0, far above the others' (near -300): the max jumps at t
    b = favor_attention(q, k2, v, omega, torch.ones(2), **kw)
    assert torch.isfinite(b).all()
    assert torch.equal(a[:, :, :t], b[:, :, :t])
    assert not torch.allclose(a[:, :, t:], b[:, :, t:])


def test_reference_is_the_plain_feature_composition():
    q, k, v, omega, bw = inputs(9)
    b = bw.view(1, -1, 1, 1)
    phi_q = softmax_kernel_features(torch.nn.functional.normalize(q, dim=-1) / b, omega, stabilize=True)
    phi_k = softmax_kernel_features(torch.nn.functional.normalize(k, dim=-1) / b, omega)
    A = phi_q @ phi_k.transpose(-1, -2)
    expected = (A @ v) / (A.sum(-1, keepdim=True) + 1e-6)
    assert torch.allclose(favor_attention(q, k, v, omega, bw, causal=False), expected, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("key_shift", [None, "max"])
def test_gradcheck(causal, key_shift):
    q, k, v, omega, bw = inputs(8, b=1, h=2, d=3, m=4)
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 7:] = False
    assert gradcheck(lambda *t: favor_attention(*t[:3], omega, t[3], causal=causal, key_mask=mask,
                                                chunk_size=2, block_size=4, key_shift=key_shift),
                     (q, k, v, bw), fast_mode=True)


def test_zero_vectors_follow_the_normalize_clamp():
    q, k, v, omega, bw = inputs(10)
    with torch.no_grad():
        q[:, :, 2] = 0.0
        k[:, :, 4] = 0.0
    for causal in (False, True):
        a = favor_attention(q, k, v, omega, bw, causal=causal, chunk_size=4, block_size=4)
        r = favor_attention_reference(q, k, v, omega, bw, causal=causal, chunk_size=4)
        assert_close_with_grads(a, r, (q, k, v, bw))


def test_prefill_state_equals_chunked_reference():
    q, k, v, omega, bw = inputs(23)
    mask = padding_mask(2, 23)
    y, state = favor_attention_with_state(q, k, v, omega, bw, key_mask=mask, chunk_size=4, block_size=8)
    b = bw.view(1, -1, 1, 1)
    phi_q = softmax_kernel_features(torch.nn.functional.normalize(q, dim=-1, eps=1e-6) / b, omega, stabilize=True)
    phi_k = softmax_kernel_features(torch.nn.functional.normalize(k, dim=-1, eps=1e-6) / b, omega)
    y_ref, s_ref = causal_linear_attention(phi_q, phi_k, v, key_mask=mask, chunk_size=4, return_state=True)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(state.S, s_ref.S, atol=1e-12) and torch.allclose(state.z, s_ref.z, atol=1e-12)


def test_empty_sequence():
    q, k, v, omega, bw = inputs(0)
    assert favor_attention(q, k, v, omega, bw, causal=True).shape == (2, 3, 0, 5)


def test_fused_node_saves_no_feature_sized_tensor():
    """Saved-for-backward bytes: the fused node keeps O(N d) (+ per-block states), the plain path O(N m)."""
    n, m, d = 512, 64, 8

    def saved_bytes(fn):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t

        q, k, v, omega, bw = inputs(n, b=1, h=2, d=d, m=m)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(q, k, v, omega, bw)
        return sum(total)

    for causal in (False, True):
        fused = saved_bytes(lambda *t: favor_attention(*t, causal=causal, block_size=128))
        plain = saved_bytes(lambda *t: favor_attention_reference(*t, causal=causal))
        feature_tensor = 2 * n * m * 8  # one (B=1, H=2, N, m) float64 tensor
        assert fused < feature_tensor, (fused, feature_tensor)
        assert plain > 2 * feature_tensor


# ------------------------------------------------------------------ causal taps inside the core
def taps_reference(x, w):
    """``x~[t] = sum_j w[:, t, j] x[t - j]`` token by token (zeros before the start)."""
    n = x.shape[-2]
    rows = []
    for t in range(n):
        acc = torch.zeros_like(x[..., 0, :])
        for j in range(w.shape[-1]):
            if t - j >= 0:
                acc = acc + w[:, t, j].view(-1, *([1] * (x.dim() - 2))) * x[..., t - j, :]
        rows.append(acc)
    return torch.stack(rows, dim=-2)


@pytest.mark.parametrize("n, chunk, block, taps", [(37, 4, 8, 4), (37, 4, 8, 1), (19, 3, 6, 8), (5, 8, 2048, 4),
                                                   (64, 16, 32, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_taps_inside_the_core(n, chunk, block, taps, masked):
    """``taps=``: the core filters each block of q and k itself (reaching back into the previous
    block); values and gradients, the taps' included, equal filtering first and attending after."""
    q, k, v, omega, bw = inputs(n)
    g = torch.Generator().manual_seed(n + taps)
    w = torch.randn(2, n, taps, generator=g, dtype=F64).requires_grad_(True)
    mask = padding_mask(2, n) if masked else None
    shift = normalized_key_shift(omega, bw)
    fused = favor_attention(q, k, v, omega, bw, causal=True, key_mask=mask, chunk_size=chunk, block_size=block,
                            key_shift=shift, taps=w)
    ref = favor_attention_reference(taps_reference(q, w), taps_reference(k, w), v, omega, bw, causal=True,
                                    key_mask=mask, chunk_size=chunk, key_shift=shift)
    assert_close_with_grads(fused, ref, (q, k, v, bw, w))


def test_causal_taps_are_the_pyramid_and_pass_gradcheck():
    from wersa.ops.causal_pyramid import pyramid_delay_weights

    q, k, v, omega, bw = inputs(11, d=3, m=4)
    gains = torch.rand(2, 11, 3, dtype=F64, requires_grad=True)
    fused = favor_attention(q, k, v, omega, bw, causal=True, chunk_size=2, block_size=4,
                            taps=pyramid_delay_weights(gains, 2))
    ref = favor_attention_reference(causal_haar_pyramid(q, gains, 2), causal_haar_pyramid(k, gains, 2), v, omega,
                                    bw, causal=True, chunk_size=2)
    assert_close_with_grads(fused, ref, (q, k, v, bw, gains))
    assert gradcheck(lambda q, k, v, b, g: favor_attention(q, k, v, omega, b, causal=True, chunk_size=2,
                                                           block_size=4, taps=pyramid_delay_weights(g, 2)),
                     (q, k, v, bw, gains), fast_mode=True)
    with pytest.raises(ValueError, match="causal"):
        favor_attention(q, k, v, omega, bw, causal=False, taps=pyramid_delay_weights(gains, 2))
    with pytest.raises(ValueError, match="causal"):
        favor_attention(q, k, v, omega, bw, causal=True, key_shift="max", taps=pyramid_delay_weights(gains, 2))
    with pytest.raises(ValueError, match=r"\(B, N, J\)"):
        favor_attention(q, k, v, omega, bw, causal=True, taps=torch.ones(2, 10, 4, dtype=F64))


@pytest.mark.parametrize("n, block, levels", [(37, 8, 2), (37, 8, 0), (19, 4, 3), (5, 2048, 2), (64, 16, 4),
                                               (13, 6, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_haar_filter_inside_the_core(n, block, levels, masked):
    """``haar_gains=``: the bidirectional core Haar-filters each block of q and k itself (blocks
    rounded up to whole Haar blocks); values and gradients, the gains' included, equal filtering
    first and attending after."""
    q, k, v, omega, bw = inputs(n)
    g = torch.Generator().manual_seed(n + levels)
    n_pad = padded_length(n, levels)
    sizes = [n_pad >> levels] + [n_pad >> lv for lv in range(levels, 0, -1)]
    gains = [torch.rand(2, s, generator=g, dtype=F64, requires_grad=True) for s in sizes]
    mask = padding_mask(2, n) if masked else None
    shift = normalized_key_shift(omega, bw)
    fused = favor_attention(q, k, v, omega, bw, causal=False, key_mask=mask, block_size=block, key_shift=shift,
                            haar_gains=gains)
    ref = favor_attention_reference(haar_filter(q, gains, levels), haar_filter(k, gains, levels), v, omega, bw,
                                    causal=False, key_mask=mask, key_shift=shift)
    assert_close_with_grads(fused, ref, (q, k, v, bw, *gains))


def test_haar_filter_inside_the_core_gradcheck_and_errors():
    q, k, v, omega, bw = inputs(11, d=3, m=4)
    gains = [torch.rand(2, s, dtype=F64, requires_grad=True) for s in (3, 3, 6)]
    assert gradcheck(lambda q, k, v, b, *gs: favor_attention(q, k, v, omega, b, causal=False, block_size=4,
                                                             haar_gains=list(gs)),
                     (q, k, v, bw, *gains), fast_mode=True)
    with pytest.raises(ValueError, match="bidirectional"):
        favor_attention(q, k, v, omega, bw, causal=True, haar_gains=gains)
    with pytest.raises(ValueError, match="DWT order"):
        favor_attention(q, k, v, omega, bw, causal=False, haar_gains=gains[:2])


# ------------------------------------------------------------------ lean wavelet filters
@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_lean_haar_filter(levels):
    g = torch.Generator().manual_seed(levels)
    n = 13
    x = torch.randn(2, 3, n, 4, generator=g, dtype=F64, requires_grad=True)
    n_pad = padded_length(n, levels)
    sizes = [n_pad >> levels] + [n_pad >> lv for lv in range(levels, 0, -1)]
    gains = [torch.rand(2, s, generator=g, dtype=F64, requires_grad=True) for s in sizes]
    assert gradcheck(lambda x, *gs: haar_filter_lean(x, list(gs), levels), (x, *gains), fast_mode=True)
    a, r = haar_filter_lean(x, gains, levels), haar_filter(x, gains, levels)
    assert_close_with_grads(a, r, (x, *gains))


@pytest.mark.parametrize("n", [1, 5, 13, 40])
@pytest.mark.parametrize("levels", [0, 1, 2, 3, 4, 5])  # 5: the level recursion, below: the taps
@pytest.mark.parametrize("reduce_block", [4096, 3])  # 3: the gains' gradient over many token blocks
def test_lean_causal_pyramid(levels, n, reduce_block, monkeypatch):
    import wersa.ops.causal_pyramid as causal_pyramid

    monkeypatch.setattr(causal_pyramid, "_REDUCE_BLOCK", reduce_block)
    g = torch.Generator().manual_seed(levels)
    x = torch.randn(2, 3, n, 4, generator=g, dtype=F64, requires_grad=True)
    gains = torch.rand(2, n, levels + 1, generator=g, dtype=F64, requires_grad=True)
    assert gradcheck(lambda x, gs: causal_haar_pyramid_lean(x, gs, levels), (x, gains), fast_mode=True)
    assert_close_with_grads(causal_haar_pyramid_lean(x, gains, levels), causal_haar_pyramid(x, gains, levels),
                            (x, gains))
    # The layer's layout: a transposed view of a wider projection, gains only (no grad for x).
    wide = torch.randn(2, n, 24, generator=g, dtype=F64)
    view = wide[..., :12].view(2, n, 3, 4).transpose(1, 2)
    assert_close_with_grads(causal_haar_pyramid_lean(view, gains, levels), causal_haar_pyramid(view, gains, levels),
                            (gains,))


# ------------------------------------------------------------------------ the mixer
@pytest.mark.parametrize("causal", [False, True])
def test_wersa_fused_equals_plain(causal):
    torch.manual_seed(0)
    fused = wersa.build_mixer("wersa", dim=8, num_heads=2, causal=causal, levels=2, num_features=6,
                              conv_size=5, chunk_size=4, block_size=8).to(F64)
    plain = wersa.build_mixer("wersa", dim=8, num_heads=2, causal=causal, levels=2, num_features=6,
                              conv_size=5, chunk_size=4, recompute=False).to(F64)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 14, 8, dtype=F64, requires_grad=True)
    mask = padding_mask(2, 14)
    for attention_mask in (None, mask):
        ya, yr = fused(x, attention_mask), plain(x, attention_mask)
        g = torch.randn_like(ya)
        params = [x] + list(fused.parameters())
        ga = torch.autograd.grad(ya, params, g, allow_unused=True)
        gr = torch.autograd.grad(yr, [x] + list(plain.parameters()), g, allow_unused=True)
        assert torch.allclose(ya, yr, atol=1e-11)
        for a, r in zip(ga, gr):
            assert (a is None) == (r is None)
            if a is not None:
                assert torch.allclose(a, r, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_wersa_recomputed_gates_equal_stored_and_save_no_gate_activation(causal, dropout):
    """``recompute_gates=True``: the same values and gradients (dropout in the gate MLP included:
    the recompute replays its random mask), without saving the gate convolution's ``(B, N, D)``
    output or the MLP's hidden layer."""
    opts = dict(dim=8, num_heads=2, causal=causal, levels=2, num_features=6, conv_size=5, chunk_size=4,
                dropout=dropout)
    torch.manual_seed(0)
    lean = wersa.build_mixer("wersa", recompute_gates=True, **opts).to(F64)
    stored = wersa.build_mixer("wersa", **opts).to(F64)
    stored.load_state_dict(lean.state_dict())
    x = torch.randn(2, 14, 8, dtype=F64, requires_grad=True)
    mask = padding_mask(2, 14)

    def run(m):
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = m(x, mask)
        g = torch.autograd.grad(y, [x] + list(m.parameters()), torch.ones_like(y), allow_unused=True)
        return y, g, sum(saved)

    (ya, ga, sa), (yr, gr, sr) = run(lean), run(stored)
    assert torch.allclose(ya, yr, atol=1e-12)
    for a, r in zip(ga, gr):
        assert (a is None) == (r is None)
        if a is not None:
            assert torch.allclose(a, r, atol=1e-10)
    assert sr - sa >= 2 * 14 * 8 * 8  # the convolution's output (B, N, D) in float64, at least
    with pytest.raises(ValueError, match="recompute=True"):
        wersa.build_mixer("wersa", dim=8, num_heads=2, recompute=False, recompute_gates=True)
    with pytest.raises(ValueError, match="no gates"):
        wersa.build_mixer("wersa", dim=8, num_heads=2, levels=0, recompute_gates=True)
    with pytest.raises(ValueError, match="True or False"):
        wersa.build_mixer("wersa", dim=8, num_heads=2, recompute_gates=1)


def test_wersa_fused_prefill_equals_plain():
    torch.manual_seed(0)
    fused = wersa.build_mixer("wersa", dim=16, num_heads=2, causal=True, num_features=8, chunk_size=4,
                              block_size=8).to(F64).eval()
    plain = wersa.build_mixer("wersa", dim=16, num_heads=2, causal=True, num_features=8, chunk_size=4,
                              recompute=False).to(F64).eval()
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 19, 16, dtype=F64)
    with torch.no_grad():
        (ya, sa), (yr, sr) = fused.prefill(x), plain.prefill(x)
    assert torch.allclose(ya, yr, atol=1e-12)
    for key in sr:
        assert torch.allclose(sa[key], sr[key], atol=1e-12), key


# ------------------------------------------------------------- depthwise convolution
@pytest.mark.parametrize("batch", [1, 3])
def test_depthwise_conv1d(batch):
    from wersa.ops.depthwise_conv import depthwise_conv1d

    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, 12, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(4, 1, 5, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    assert gradcheck(depthwise_conv1d, (x, w, b), fast_mode=True)
    assert_close_with_grads(depthwise_conv1d(x, w, b), torch.nn.functional.conv1d(x, w, b, groups=4), (x, w, b))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels", [8, 16, 64])
def test_depthwise_conv1d_in_half_precision(dtype, channels):
    """Half-precision inputs (a bfloat16 oneDNN kernel does not return for 16 channels or
    fewer): float32 arithmetic, results in the input's dtype, gradients too."""
    from wersa.ops.depthwise_conv import depthwise_conv1d

    g = torch.Generator().manual_seed(channels)
    base = torch.randn(2, 37, channels, generator=g).to(dtype).requires_grad_(True)
    w = torch.randn(channels, 1, 33, generator=g).to(dtype).requires_grad_(True)
    b = torch.randn(channels, generator=g).to(dtype).requires_grad_(True)
    y = depthwise_conv1d(base.transpose(1, 2), w, b, (16, 16))
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(base.float().transpose(1, 2), (16, 16)), w.float(),
                                     b.float(), groups=channels)
    assert y.dtype == dtype and torch.allclose(y.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    grads = torch.autograd.grad(y.float().square().sum(), (base, w, b))
    assert [t.dtype for t in grads] == [dtype] * 3 and all(torch.isfinite(t.float()).all() for t in grads)


@pytest.mark.parametrize("padding", [(0, 0), (4, 0), (2, 2), (1, 3)])
@pytest.mark.parametrize("chunk", [512, 5])
def test_depthwise_conv1d_pads_inside_and_saves_no_padded_copy(padding, chunk, monkeypatch):
    """Padding inside the node: the values and gradients of ``conv1d(pad(x))`` (the weight
    gradient in one chunk or several); what it saves for the backward pass is ``x`` itself (here
    a transposed view, as the gates pass it), never a padded copy; output and input gradient
    are token-major like ``x``."""
    from wersa.bench.memory import AllocatedBytes
    from wersa.ops import depthwise_conv
    from wersa.ops.depthwise_conv import depthwise_conv1d

    monkeypatch.setattr(depthwise_conv, "WEIGHT_GRAD_CHUNK", chunk)

    g = torch.Generator().manual_seed(sum(padding))
    base = torch.randn(2, 12, 4, generator=g, dtype=F64, requires_grad=True)  # (B, N, C)
    w = torch.randn(4, 1, 5, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = depthwise_conv1d(base.transpose(1, 2), w, b, padding)
    r = torch.nn.functional.conv1d(torch.nn.functional.pad(base.transpose(1, 2), padding), w, b, groups=4)
    assert_close_with_grads(y, r, (base, w, b))
    assert all(t.shape[-1] <= 12 for t in saved)
    assert any(t.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for t in saved)
    # float32 (oneDNN): the forward allocates its output only, and output and input gradient
    # are token-major (channel stride 1) like x
    x32 = base.detach().float().transpose(1, 2).requires_grad_(True)
    w32, b32 = w.detach().float(), b.detach().float()
    with AllocatedBytes() as probe:
        y32 = depthwise_conv1d(x32, w32, b32, padding)
    assert probe.count == 1 and probe.total <= (y32.shape[-1] + max(padding)) * 2 * 4 * 4
    (g_x32,) = torch.autograd.grad(y32, x32, torch.randn_like(y32))
    assert y32.stride(1) == 1 and g_x32.stride(1) == 1
    assert gradcheck(lambda x, w, b: depthwise_conv1d(x, w, b, padding), (base.transpose(1, 2), w, b), fast_mode=True)
    with pytest.raises(ValueError, match="non-negative"):
        depthwise_conv1d(base.transpose(1, 2), w, b, (-1, 0))


@pytest.mark.parametrize("mode", ["bidir", "causal", "causal_taps", "bidir_haar"])
def test_heads_of_one_projection_get_their_gradients_in_one_buffer(mode):
    """q, k, v as heads of one fused projection (``split_qkv_heads``): the core's gradients fill
    one buffer laid out like the projection (no concatenation after), equal to the gradients
    of separate q, k, v; the output is stored token-major, so merging the heads is a view."""
    from wersa.ops.heads import is_fused_qkv, split_qkv_heads

    n, H, d = 21, 3, 5
    _, _, _, omega, bw = inputs(n, h=H, d=d)
    qkv = torch.randn(2, n, 3 * H * d, dtype=F64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    opts = {"causal": mode.startswith("causal"), "chunk_size": 4, "block_size": 8,
            "key_shift": normalized_key_shift(omega, bw)}
    if mode == "causal_taps":
        opts["taps"] = torch.rand(2, n, 4, dtype=F64)
    if mode == "bidir_haar":
        opts["haar_gains"] = [torch.rand(2, s, dtype=F64) for s in (6, 6, 12)]
    fused = split_qkv_heads(qkv, H)
    separate = [t.detach().clone().requires_grad_(True) for t in fused]
    y = favor_attention(*fused, omega, bw, **opts)
    y_sep = favor_attention(*separate, omega, bw, **opts)
    assert torch.equal(y, y_sep)
    assert y.transpose(1, 2).is_contiguous()  # token-major
    g = torch.randn_like(y)
    seen = {}
    hook = lambda name: (lambda grad: seen.__setitem__(name, grad))
    for name, t in zip("qkv", fused):
        t.register_hook(hook(name))
    (g_qkv,) = torch.autograd.grad(y, qkv, g)
    assert is_fused_qkv(seen["q"], seen["k"], seen["v"])
    g_sep = torch.autograd.grad(y_sep, separate, g)
    assert torch.equal(g_qkv, torch.cat([t.transpose(1, 2).reshape(2, n, H * d) for t in g_sep], dim=-1))
