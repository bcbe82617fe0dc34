"""``Mixer.step`` refuses a state built for another batch size and a floating-point mask, clearly."""

from __future__ import annotations

import pytest
import torch

import wersa


def _recurrent_causal():
    out = []
    for name in wersa.list_mixers():
        try:
            caps = wersa.capabilities(name, causal=True)
        except (ValueError, TypeError):
            continue
        if caps.causal and caps.recurrent:
            out.append(name)
    return out


RECURRENT = _recurrent_causal()


def test_some_mixers_are_recurrent():
    assert {"wersa", "sdpa", "performer"} <= set(RECURRENT)


@pytest.mark.parametrize("name", RECURRENT)
def test_step_with_another_batch_size(name):
    m = wersa.build_mixer(name, dim=16, num_heads=2, causal=True)
    state = m.init_state(2)
    with pytest.raises(ValueError, match=r"x_t holds 3 sequences but the state holds 2.*init_state\(3\)"):
        m.step(torch.randn(3, 16), state)


@pytest.mark.parametrize("name", RECURRENT)
def test_step_with_a_float_mask(name):
    m = wersa.build_mixer(name, dim=16, num_heads=2, causal=True)
    state = m.init_state(2)
    for mask in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, float("-inf")])):
        with pytest.raises(TypeError, match=r"attention_mask must be bool.*got torch.float32"):
            m.step(torch.randn(2, 16), state, attention_mask=mask)


@pytest.mark.parametrize("name", ["wersa", "sdpa"])
def test_step_mask_shape_and_accepted_masks(name):
    m = wersa.build_mixer(name, dim=16, num_heads=2, causal=True).eval()
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        m.step(x, m.init_state(2), attention_mask=torch.ones(2, 1, dtype=torch.bool))
    y_bool, _ = m.step(x, m.init_state(2), attention_mask=torch.tensor([True, False]))
    y_int, _ = m.step(x, m.init_state(2), attention_mask=torch.tensor([1, 0]))
    torch.testing.assert_close(y_bool, y_int, rtol=0, atol=0)
    assert bool((y_bool[1] == 0).all())
