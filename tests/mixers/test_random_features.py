"""The shared random projection: seeded, per head or shared, redrawn only in training."""

from __future__ import annotations

import pytest
import torch

import wersa
from wersa.mixers.random_features import check_random_feature_options, feature_generator

D, H = 32, 4


@pytest.mark.parametrize("name,shape", [("performer", (16, D // H)), ("wersa", (H, 16, D // H))])
def test_seeded_draws_and_redraw_sequence(name, shape):
    a = wersa.build_mixer(name, dim=D, num_heads=H, num_features=16, feature_seed=3, redraw_interval=2)
    b = wersa.build_mixer(name, dim=D, num_heads=H, num_features=16, feature_seed=3, redraw_interval=2)
    c = wersa.build_mixer(name, dim=D, num_heads=H, num_features=16, feature_seed=4)
    assert a.projection_matrix.shape == shape
    assert torch.equal(a.projection_matrix, b.projection_matrix)
    assert not torch.equal(a.projection_matrix, c.projection_matrix)
    x = torch.randn(1, 8, D)
    w0 = a.projection_matrix.clone()
    a.eval()
    for _ in range(5):
        a(x)
    assert torch.equal(a.projection_matrix, w0)  # eval never redraws
    a.train()
    a(x), a(x)
    assert torch.equal(a.projection_matrix, w0)
    a(x)  # the third training call redraws (interval 2)
    assert int(a.redraws) == 1 and not torch.equal(a.projection_matrix, w0)
    assert torch.equal(a.projection_matrix, a._draw(1).to(a.projection_matrix))
    if name == "wersa":  # one independent matrix per head
        assert not torch.equal(a.projection_matrix[0], a.projection_matrix[1])


def test_generator_and_checks():
    assert torch.equal(torch.randn(3, generator=feature_generator(5, 2)),
                       torch.randn(3, generator=feature_generator(5, 2)))
    assert not torch.equal(torch.randn(3, generator=feature_generator(5, 1)),
                           torch.randn(3, generator=feature_generator(5, 2)))
    for bad in ({"num_features": 0}, {"feature_seed": -1}, {"redraw_interval": 0}):
        args = {"num_features": 4, "feature_seed": 0, "redraw_interval": None, **bad}
        with pytest.raises(ValueError, match="m:"):
            check_random_feature_options("m", **args)
