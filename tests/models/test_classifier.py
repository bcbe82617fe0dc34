"""WersaForSequenceClassification: padding invariance, pooling, non-token inputs, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wersa.models import WersaForSequenceClassification, WersaModel

from .helpers import VOCAB, mixers_where, tiny_config

PADDABLE = [m for m in mixers_where(bidirectional=True) if m in mixers_where(attention_mask=True)]


@pytest.mark.parametrize("name", PADDABLE)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@torch.no_grad()
def test_right_padding_does_not_change_logits(name, pooling):
    model = WersaForSequenceClassification(
        tiny_config(name, num_labels=3, classifier_pooling=pooling)).double().eval()
    assert not model.model.causal  # bidirectional mixers by default
    ids = torch.randint(0, VOCAB, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    padded = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[1], model(ids[1:, :13]).logits[0], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(padded[0], model(ids[:1]).logits[0], rtol=1e-7, atol=1e-9)


@torch.no_grad()
def test_last_token_pooling_with_causal_mixer():
    model = WersaForSequenceClassification(
        tiny_config("_toy_history", num_labels=2, classifier_pooling="last")).double().eval()
    assert model.model.causal  # a causal-only mixer makes a causal backbone
    ids = torch.randint(0, VOCAB, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    torch.testing.assert_close(model(ids, attention_mask=mask).logits[0], model(ids[:1, :6]).logits[0])


def test_pixel_inputs_and_losses():
    cfg = tiny_config("_toy_recurrent", vocab_size=None, input_dim=3, num_labels=4, hidden_act="swiglu",
                      norm_type="layernorm", position_embedding_type="sinusoidal", hidden_dropout_prob=0.1)
    model = WersaForSequenceClassification(cfg)
    x = torch.rand(5, 16, 3)
    labels = torch.randint(0, 4, (5,))
    out = model(input_values=x, labels=labels)
    assert out.logits.shape == (5, 4)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    with pytest.raises(ValueError, match="input_values"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="input_dim=3"):
        model(input_values=torch.rand(1, 4, 2))
    reg = WersaForSequenceClassification(tiny_config("_toy_recurrent", num_labels=1))
    y = torch.randn(3)
    out = reg(torch.randint(0, VOCAB, (3, 6)), labels=y)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), y))


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    model = WersaForSequenceClassification(tiny_config("_toy_recurrent", num_labels=2))
    ids = torch.randint(0, VOCAB, (16, 12))
    labels = (ids == 3).any(1).long()  # learnable: does token 3 occur?
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_empty_rows_and_cache_on_encoder_are_refused():
    model = WersaForSequenceClassification(tiny_config("_toy_recurrent", num_labels=2))
    with pytest.raises(ValueError, match="at least one real token"):
        model(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    encoder = WersaModel(tiny_config("_toy_recurrent"))
    with pytest.raises(ValueError, match="causal"):
        encoder(torch.zeros(1, 4, dtype=torch.long), use_cache=True)
