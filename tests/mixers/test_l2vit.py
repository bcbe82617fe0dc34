"""L2ViT: linear form vs quadratic form, LCM convolutions, causal adaptation, padding."""
import math

import pytest
import torch
import torch.nn.functional as F

import wersa
from wersa.mixers.l2vit import l2vit_linear_attention, l2vit_linear_attention_reference

D, H = 16, 2


def build(causal=False, dtype=torch.float64, **opts):
    torch.manual_seed(0)
    return wersa.build_mixer("l2vit", dim=D, num_heads=H, causal=causal, **opts).to(dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("clamp_min", [100.0, 0.5])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_form_equals_quadratic(causal, clamp_min, masked):
    torch.manual_seed(0)
    q, k = (torch.relu(torch.randn(2, H, 19, 8, dtype=torch.float64) * 3).requires_grad_() for _ in range(2))
    v = torch.randn(2, H, 19, 8, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 19) > 0.3) if masked else None
    y = l2vit_linear_attention(q, k, v, tau, clamp_min, causal=causal, key_mask=mask, chunk_size=5)
    ref = l2vit_linear_attention_reference(q, k, v, tau, clamp_min, causal=causal, key_mask=mask)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * g).sum(), [q, k, v, tau]),
                    torch.autograd.grad((ref * g).sum(), [q, k, v, tau])):
        torch.testing.assert_close(a, b)
    if clamp_min == 0.5:  # both regimes of the clamp are exercised
        den = (q @ k.transpose(-1, -2)).sum(-1)
        assert (den > 0.5).any()


@pytest.mark.parametrize("causal", [False, True])
def test_mixer_without_lcm_is_projected_attention(causal):
    m = build(causal, lcm=False, clamp_min=1.0)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    q, k, v = m.qkv(x).view(2, 11, 3, H, D // H).permute(2, 0, 3, 1, 4)
    o = l2vit_linear_attention_reference(torch.relu(q), torch.relu(k), v, m.tau, 1.0, causal=causal)
    torch.testing.assert_close(m(x), m.out_proj(o.transpose(1, 2).reshape(2, 11, D)))


def _lcm_reference(m, u, a, norm_mid, two_d=None):
    """The LCM branch written out: convs as F.conv1d / F.conv2d with centred zero padding."""
    src = u + a if m.lcm_input == "stream" else a
    k = m.conv_size
    h = m.lcm_in_norm(src).transpose(1, 2)
    if two_d:
        B = h.shape[0]
        conv = lambda t, c: F.conv2d(t.reshape(B, D, *two_d), c.weight, c.bias, padding=k // 2,
                                     groups=D).flatten(2)
    else:
        conv = lambda t, c: F.conv1d(t, c.weight, c.bias, padding=k // 2, groups=D)
    h = conv(h, m.conv1)
    h = norm_mid(F.gelu(h).transpose(1, 2)).transpose(1, 2)
    return a + conv(h, m.conv2).transpose(1, 2)


def test_default_lcm_is_the_papers_batchnorm_branch():
    m = build(False)
    assert isinstance(m.lcm_mid_norm, torch.nn.BatchNorm1d) and m.lcm_input == "stream"
    x = torch.randn(2, 11, D, dtype=torch.float64)
    a = build(False, lcm=False)(x)  # same seed: same attention weights
    # training mode: batch statistics over all (B, N) tokens, per channel
    bn = lambda t: F.batch_norm(t.reshape(-1, D), None, None, m.lcm_mid_norm.weight, m.lcm_mid_norm.bias,
                                training=True).reshape(t.shape)
    torch.testing.assert_close(m.train()(x), _lcm_reference(m, x, a, bn))
    # eval mode: running statistics (updated by the call above)
    rm, rv = m.lcm_mid_norm.running_mean, m.lcm_mid_norm.running_var
    bn_eval = lambda t: (t - rm) / torch.sqrt(rv + m.lcm_mid_norm.eps) * m.lcm_mid_norm.weight + m.lcm_mid_norm.bias
    torch.testing.assert_close(m.eval()(x), _lcm_reference(m, x, a, bn_eval))


@pytest.mark.parametrize("lcm_input", ["stream", "attention"])
def test_layernorm_variant(lcm_input):
    m = build(False, lcm_norm="layer", lcm_input=lcm_input)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    a = build(False, lcm=False)(x)
    torch.testing.assert_close(m(x), _lcm_reference(m, x, a, m.lcm_mid_norm))


def test_2d_lcm_uses_2d_convolutions():
    m = build(False, image_size=(4, 5), conv_size=3, lcm_norm="layer")
    x = torch.randn(2, 20, D, dtype=torch.float64)
    a = build(False, lcm=False, image_size=(4, 5))(x)
    torch.testing.assert_close(m(x), _lcm_reference(m, x, a, m.lcm_mid_norm, two_d=(4, 5)))


def test_causal_early_tokens_get_their_attention_output():
    """Token 0 attends to itself only: its output is tau * v_0, not v_0 * (q.k) / 100."""
    m = build(True, lcm=False)
    x = torch.randn(2, 6, D, dtype=torch.float64) * 0.1
    q, k, v = m.qkv(x).view(2, 6, 3, H, D // H).permute(2, 0, 3, 1, 4)
    live = ((torch.relu(q[:, :, 0]) * torch.relu(k[:, :, 0])).sum(-1) > 0)  # (B, H)
    o0 = (m.tau.view(1, H, 1) * v[:, :, 0]) * live[..., None]
    torch.testing.assert_close(m(x)[:, 0], m.out_proj(o0.reshape(2, D)))
    assert m.clamp_min == 1e-6 and build(False).clamp_min == 100.0


@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_statistics_ignore_padding(train):
    m = build(False, clamp_min=0.1)
    m.train(train)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    ref = m(x)  # unpadded batch (equal lengths)
    if train:
        m.lcm_mid_norm.reset_running_stats()
    for left in (False, True):
        pad = torch.randn(2, 4, D, dtype=torch.float64) * 10
        xp = torch.cat([pad, x], 1) if left else torch.cat([x, pad], 1)
        mask = torch.zeros(2, 13, dtype=torch.bool)
        if left:
            mask[:, 4:] = True
        else:
            mask[:, :9] = True
        y = m(xp, attention_mask=mask)
        torch.testing.assert_close(y[mask].view(2, 9, D), ref)


def test_batchnorm_has_no_causal_form():
    with pytest.raises(ValueError, match="no causal form"):
        wersa.build_mixer("l2vit", dim=D, num_heads=H, causal=True, lcm_norm="batch")
    assert not wersa.capabilities("l2vit", lcm_norm="batch").causal
    assert wersa.capabilities("l2vit", causal=True).recurrent  # the causal default: LayerNorm
    assert wersa.capabilities("l2vit", lcm=False, lcm_norm="batch").causal


def test_renamed_option_and_old_checkpoint():
    with pytest.warns(FutureWarning, match="conv_size"):
        m = wersa.build_mixer("l2vit", dim=D, num_heads=H, lcm_kernel_size=3)
    assert m.conv_size == 3
    sd = {("proj." + k[len("out_proj."):] if k.startswith("out_proj.") else k): v for k, v in m.state_dict().items()}
    assert "proj.weight" in sd
    fresh = wersa.build_mixer("l2vit", dim=D, num_heads=H, conv_size=3)
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh.out_proj.weight, m.out_proj.weight)


@pytest.mark.parametrize("kernel", [1, 4, 7])
def test_step_and_prefill_equal_parallel(kernel):
    m = build(True, conv_size=kernel, chunk_size=4)
    x = torch.randn(2, 13, D, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, :3] = False
    mask[1, 9] = False
    for msk in (None, mask):
        torch.testing.assert_close(m.step_through(x, attention_mask=msk)[0], m(x, attention_mask=msk))
    yp, _ = m.prefill(x)
    torch.testing.assert_close(yp, m(x))


@pytest.mark.parametrize("causal", [False, True])
def test_padding_any_pattern(causal):
    # eval mode: BatchNorm (bidirectional default) couples the rows of a batch in training
    m = build(causal, clamp_min=0.1).eval()
    x = torch.randn(3, 13, D, dtype=torch.float64)
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[0, 9:] = False
    mask[1, :5] = False
    mask[2, [2, 3, 7]] = False
    y = m(x, attention_mask=mask)
    for b in range(3):
        torch.testing.assert_close(y[b, mask[b]], m(x[b : b + 1, mask[b]])[0])
        assert torch.all(y[b, ~mask[b]] == 0)


def test_layernorm_variant_train_equals_eval_and_batch_one():
    """LayerNorm variant: the same function in train and eval mode, at batch 1 and length 1."""
    m = build(False, lcm_norm="layer")
    x = torch.randn(1, 1, D, dtype=torch.float64)
    torch.testing.assert_close(m.train()(x), m.eval()(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_dtypes_lengths_and_grads_finite(dtype, causal):
    m = build(causal, dtype=dtype)
    for n in (1, 2, 9):
        x = torch.randn(2, n, D, dtype=dtype, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        y.float().square().mean().backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        m.zero_grad()


def test_trains_on_cpu():
    torch.manual_seed(0)
    m = wersa.build_mixer("l2vit", dim=D, num_heads=H, clamp_min=1.0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, target = torch.randn(2, 12, D), torch.randn(2, 12, D)
    losses = []
    for _ in range(8):
        loss = (m(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1])


@pytest.mark.parametrize("bad,match", [
    (dict(conv_size=4), "odd conv_size"),
    (dict(lcm_norm="group"), "lcm_norm"),
    (dict(lcm_input="x"), "lcm_input"),
    (dict(clamp_min=0.0), "clamp_min"),
    (dict(conv_size=0), "conv_size"),
    (dict(image_size=(4,)), "image_size"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        wersa.build_mixer("l2vit", dim=D, num_heads=H, **bad)


def test_2d_errors():
    with pytest.raises(ValueError, match="bidirectional only"):
        wersa.build_mixer("l2vit", dim=D, num_heads=H, causal=True, image_size=(4, 4))
    m = wersa.build_mixer("l2vit", dim=D, num_heads=H, image_size=(4, 4))
    with pytest.raises(ValueError, match="needs N = 16"):
        m(torch.randn(1, 15, D))
    with pytest.raises(ValueError, match="no padding mask"):
        m(torch.randn(1, 16, D), attention_mask=torch.arange(16).view(1, 16) < 10)
