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
    torch.testing.assert_close(m(x), m.proj(o.transpose(1, 2).reshape(2, 11, D)))


def test_lcm_is_depthwise_conv_residual():
    m = build(False)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    a = build(False, lcm=False)(x)  # same seed: same attention weights
    u = m.lcm_in_norm(a).transpose(1, 2)
    h = F.conv1d(u, m.conv1.weight, m.conv1.bias, padding=3, groups=D)
    h = m.lcm_mid_norm(F.gelu(h).transpose(1, 2)).transpose(1, 2)
    h = F.conv1d(h, m.conv2.weight, m.conv2.bias, padding=3, groups=D)
    torch.testing.assert_close(m(x), a + h.transpose(1, 2))


def test_2d_lcm_uses_2d_convolutions():
    m = build(False, image_size=(4, 5), lcm_kernel_size=3)
    x = torch.randn(2, 20, D, dtype=torch.float64)
    a = build(False, lcm=False, image_size=(4, 5))(x)
    img = m.lcm_in_norm(a).transpose(1, 2).reshape(2, D, 4, 5)
    h = F.conv2d(img, m.conv1.weight, m.conv1.bias, padding=1, groups=D)
    h = m.lcm_mid_norm(F.gelu(h).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, D, 4, 5)
    h = F.conv2d(h, m.conv2.weight, m.conv2.bias, padding=1, groups=D)
    torch.testing.assert_close(m(x), a + h.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("kernel", [1, 4, 7])
def test_step_and_prefill_equal_parallel(kernel):
    m = build(True, lcm_kernel_size=kernel, chunk_size=4)
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
    m = build(causal, clamp_min=0.1)
    x = torch.randn(3, 13, D, dtype=torch.float64)
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[0, 9:] = False
    mask[1, :5] = False
    mask[2, [2, 3, 7]] = False
    y = m(x, attention_mask=mask)
    for b in range(3):
        torch.testing.assert_close(y[b, mask[b]], m(x[b : b + 1, mask[b]])[0])
        assert torch.all(y[b, ~mask[b]] == 0)


def test_train_equals_eval_and_batch_one():
    """No BatchNorm: the same function in train and eval mode, at batch 1 and length 1."""
    m = build(False)
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
    (dict(lcm_kernel_size=4), "odd lcm_kernel_size"),
    (dict(clamp_min=0.0), "clamp_min"),
    (dict(lcm_kernel_size=0), "lcm_kernel_size"),
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
