"""The linear transformer of ``my_mixer.py`` against its naive reference.

The capability matrix (``tests/mixers/test_matrix.py``) checks the claims every mixer
makes; this file checks the math only this mixer has: its fast path equals the literal
formula in values and gradients (float64, bidirectional and causal, right and left
padding, both feature maps), and decoding after a prompt equals that formula too.

    PYTHONPATH=docs/examples python -m pytest -q docs/examples/test_my_mixer.py
"""

from __future__ import annotations

import pytest
import torch

import wersa
from my_mixer import linear_transformer_reference

NAME = "linear_transformer"


def build(causal: bool, **options) -> wersa.Mixer:
    torch.manual_seed(0)
    return wersa.build_mixer(NAME, dim=8, num_heads=2, causal=causal, chunk_size=4, **options).double()


def padding(kind: str, b: int = 2, n: int = 11) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(b, n, dtype=torch.bool)
    if kind == "right":
        mask[0, 7:] = False
    else:  # "left", or "all": row 0 left-padded, row 1 all padding
        mask[0, :3] = False
    if kind == "all":
        mask[1] = False
    return mask


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("pad", ["none", "right", "left", "all"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_fast_path_equals_reference(causal, pad, feature_map):
    m = build(causal, feature_map=feature_map)
    x = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)  # 11: not a multiple of chunk_size
    mask = padding(pad)
    y, y_ref = m(x, attention_mask=mask), linear_transformer_reference(m, x, mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    params = [x, *m.parameters()]
    grads = torch.autograd.grad(y, params, g)
    grads_ref = torch.autograd.grad(y_ref, params, g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("prompt", [1, 6])
def test_prefill_then_step_equals_reference(prompt):
    m = build(True)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    mask = padding("left", n=9)
    with torch.no_grad():
        y_ref = linear_transformer_reference(m, x, mask)
        y, state = m.prefill(x[:, :prompt], attention_mask=mask[:, :prompt])
        outs = [y]
        for t in range(prompt, 9):
            y_t, state = m.step(x[:, t], state, attention_mask=mask[:, t])
            outs.append(y_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1), y_ref, rtol=1e-10, atol=1e-12)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="feature_map"):
        wersa.build_mixer(NAME, dim=8, num_heads=2, feature_map="softmax")
    with pytest.raises(ValueError, match="chunk_size"):
        wersa.build_mixer(NAME, dim=8, num_heads=2, chunk_size=0)
