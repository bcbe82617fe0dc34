"""Random feature maps: orthogonality, unbiased softmax kernel, no leak from stabilisers."""

import math

import pytest
import torch

from wersa.ops.feature_maps import (
    orthogonal_random_matrix,
    relu_features,
    softmax_kernel_features,
    softmax_kernel_features_reference,
)


def test_orthogonal_blocks_and_seeding():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    w = orthogonal_random_matrix(40, 16, generator=g1, dtype=torch.float64)
    assert torch.equal(w, orthogonal_random_matrix(40, 16, generator=g2, dtype=torch.float64))
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    assert torch.allclose(block @ block.T, torch.eye(16, dtype=torch.float64), atol=1e-10)
    w2 = orthogonal_random_matrix(16, 16, scaling="sqrt_dim", dtype=torch.float64)
    assert torch.allclose(w2.norm(dim=1), torch.full((16,), 4.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="scaling"):
        orthogonal_random_matrix(4, 4, scaling="nope")


def test_features_match_reference():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.5
    w = orthogonal_random_matrix(12, 4, dtype=torch.float64)
    assert torch.allclose(softmax_kernel_features(x, w), softmax_kernel_features_reference(x, w), atol=1e-12)
    wh = torch.stack([orthogonal_random_matrix(12, 4, dtype=torch.float64) for _ in range(3)])
    assert torch.allclose(softmax_kernel_features(x, wh), softmax_kernel_features_reference(x, wh), atol=1e-12)


def test_kernel_estimate_converges_to_exp_dot_product():
    torch.manual_seed(0)
    q = torch.randn(64, 8, dtype=torch.float64) * 0.3
    k = torch.randn(64, 8, dtype=torch.float64) * 0.3
    exact = torch.exp(q @ k.T)
    errs = {}
    for m in (64, 1024):
        e = []
        for seed in range(5):
            w = orthogonal_random_matrix(m, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            est = softmax_kernel_features(q, w) @ softmax_kernel_features(k, w).T
            e.append(((est - exact).norm() / exact.norm()).item())
        errs[m] = sum(e) / len(e)
    assert errs[1024] < errs[64] / 2.5  # ~ 1/sqrt(m): ratio 4 expected


def test_query_stabiliser_is_a_per_row_constant():
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    w = orthogonal_random_matrix(10, 4, dtype=torch.float64)
    a, b = softmax_kernel_features(x, w), softmax_kernel_features(x, w, stabilize=True)
    ratio = a / b
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio))


def test_relu_features_are_positively_homogeneous():
    x = torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(9, 4, dtype=torch.float64)
    assert torch.allclose(relu_features(3.0 * x, w), 3.0 * relu_features(x, w))
    assert (relu_features(x, w) >= 0).all()
    assert math.isclose(relu_features(torch.ones(1, 4), torch.ones(4, 4))[0, 0].item(), 4 / 2)
