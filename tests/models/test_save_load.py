"""save_pretrained / from_pretrained (safetensors, offline) preserve outputs exactly, for every mixer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from wersa.models import WersaForCausalLM, WersaForSequenceClassification, WersaModel

from .helpers import VOCAB, all_mixers, mixers_where, tiny_config


def _bidirectional_or_causal(name: str) -> dict:
    return {} if name in mixers_where(bidirectional=True) else {"causal": True}


@pytest.mark.parametrize("name", all_mixers())
@torch.no_grad()
def test_classifier_round_trip_is_exact(name, tmp_path):
    model = WersaForSequenceClassification(tiny_config(name, num_labels=3, **_bidirectional_or_causal(name))).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    before = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, WersaForSequenceClassification)
    # every buffer (random-feature matrices included) is saved, not redrawn
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(loaded(ids).logits, before)


@pytest.mark.parametrize("name", mixers_where(causal=True))
@torch.no_grad()
def test_causal_lm_round_trip_is_exact(name, tmp_path):
    model = WersaForCausalLM(tiny_config(name)).eval()
    ids = torch.randint(1, VOCAB, (2, 12))
    before = model(ids, use_cache=False).logits
    gen = model.generate(ids[:, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, WersaForCausalLM)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded(ids, use_cache=False).logits, before)
    assert torch.equal(loaded.generate(ids[:, :5], max_new_tokens=4, do_sample=False, pad_token_id=0), gen)


@torch.no_grad()
def test_backbone_via_auto_model(tmp_path):
    model = WersaModel(tiny_config("_toy_recurrent")).eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, WersaModel)
    assert torch.equal(loaded(ids).last_hidden_state, model(ids).last_hidden_state)
