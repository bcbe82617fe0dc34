"""WersaForCausalLM over every registered causal mixer: cache = full forward, generate = argmax loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from wersa.models import WersaCache, WersaConfig, WersaForCausalLM

from .helpers import VOCAB, mixers_where, tiny_config

CAUSAL = mixers_where(causal=True)
LEFT_PAD = [m for m in CAUSAL if m in mixers_where(left_padding=True, attention_mask=True)]
NO_LEFT_PAD = [m for m in CAUSAL if m not in LEFT_PAD]
MASKED = [m for m in CAUSAL if m in mixers_where(attention_mask=True)]
CONSTANT = [m for m in CAUSAL if m in mixers_where(recurrent=True, constant_state=True)]


def make_lm(name: str, **overrides) -> WersaForCausalLM:
    # float64 so that "equal" means equal up to rounding, and argmax never flips on a near-tie
    return WersaForCausalLM(tiny_config(name, **overrides)).double().eval()


def argmax_decode(lm: WersaForCausalLM, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by a full forward pass per token (no cache): the reference."""
    for _ in range(steps):
        nxt = lm(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def state_numel(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    return 0


@pytest.mark.parametrize("name", CAUSAL)
@torch.no_grad()
def test_cached_logits_equal_full_forward(name):
    lm = make_lm(name)
    ids = torch.randint(0, VOCAB, (2, 20))
    full = lm(ids, use_cache=False).logits
    out = lm(ids[:, :11], use_cache=True)
    cache = out.cache
    assert isinstance(cache, WersaCache) and cache.get_seq_length() == 11
    pieces = [out.logits]
    # one token at a time, then a chunk of several new tokens at once
    for t in range(11, 16):
        pieces.append(lm(ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    pieces.append(lm(ids[:, 16:], past_key_values=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", CAUSAL)
@torch.no_grad()
def test_future_tokens_do_not_change_past_logits(name):
    lm = make_lm(name)
    ids = torch.randint(0, VOCAB, (2, 20))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(lm(changed).logits[:, :12], lm(ids).logits[:, :12], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", CAUSAL)
@torch.no_grad()
def test_greedy_generate_equals_argmax_of_full_forward(name):
    lm = make_lm(name)
    prompt = torch.randint(1, VOCAB, (2, 7))
    out = lm.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, argmax_decode(lm, prompt, 6))


@pytest.mark.parametrize("name", LEFT_PAD)
@torch.no_grad()
def test_left_padded_generation_matches_unpadded(name):
    lm = make_lm(name)
    a, b = torch.randint(1, VOCAB, (1, 9)), torch.randint(1, VOCAB, (1, 5))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    # logits at real positions are those of the unpadded prompt
    logits = lm(batch, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(logits[1, 4:], lm(b, use_cache=False).logits[0], rtol=1e-7, atol=1e-9)
    out = lm.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0], lm.generate(a, max_new_tokens=4, do_sample=False, pad_token_id=0)[0])
    assert torch.equal(out[1, 4:], lm.generate(b, max_new_tokens=4, do_sample=False, pad_token_id=0)[0])


@pytest.mark.parametrize("name", NO_LEFT_PAD)
def test_left_padding_refused_when_mixer_cannot_apply_it(name):
    lm = make_lm(name)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="left padding"):
        lm(torch.randint(0, VOCAB, (2, 6)), attention_mask=mask)


@pytest.mark.parametrize("name", MASKED)
@torch.no_grad()
def test_right_padding_keeps_logits_at_real_positions(name):
    lm = make_lm(name)
    ids = torch.randint(0, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    logits = lm(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[1, :8], lm(ids[1:, :8]).logits[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", CONSTANT)
@torch.no_grad()
def test_constant_state_does_not_grow_with_context(name):
    lm = make_lm(name)
    short = lm(torch.randint(0, VOCAB, (1, 4)), use_cache=True).cache
    long = lm(torch.randint(0, VOCAB, (1, 40)), use_cache=True).cache
    assert [state_numel(s) for s in short.states] == [state_numel(s) for s in long.states]


def test_loss_shifts_labels_and_ignores_minus_100():
    lm = make_lm("_toy_recurrent")
    ids = torch.randint(0, VOCAB, (2, 10))
    labels = ids.clone()
    labels[0, 4:7] = -100
    out = lm(ids, labels=labels)
    assert out.cache is None  # training calls do not build a cache by default
    logits = out.logits[:, :-1].reshape(-1, VOCAB)
    expected = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters() if p.requires_grad)


def test_auto_from_config_and_tied_embeddings():
    cfg = tiny_config("_toy_recurrent")
    lm = AutoModelForCausalLM.from_config(cfg)
    assert isinstance(lm, WersaForCausalLM)
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    untied = WersaForCausalLM(tiny_config("_toy_recurrent", tie_word_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


@torch.no_grad()
def test_hybrid_layers_generate_like_full_forward():
    names = sorted(set(CAUSAL) - {"_toy_history"})[:1] + ["_toy_history", "_toy_recurrent"]
    cfg = tiny_config("_toy_recurrent", num_hidden_layers=3, layer_mixers=names, mixer_options={})
    lm = WersaForCausalLM(cfg).double().eval()
    prompt = torch.randint(1, VOCAB, (2, 6))
    assert torch.equal(lm.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0),
                       argmax_decode(lm, prompt, 6))


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "none"])
@torch.no_grad()
def test_other_position_schemes_decode_consistently(position_embedding_type):
    lm = make_lm("_toy_recurrent", position_embedding_type=position_embedding_type, max_position_embeddings=None)
    prompt = torch.randint(1, VOCAB, (1, 5))
    assert torch.equal(lm.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0),
                       argmax_decode(lm, prompt, 5))


def test_bad_inputs_raise_clear_errors():
    lm = make_lm("_toy_recurrent")
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(ValueError, match="input_ids must lie in"):
        lm(ids + VOCAB)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        lm(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="0/1"):
        lm(ids, attention_mask=torch.full((2, 6), 2))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm(torch.randint(0, VOCAB, (1, 65)))
    with pytest.raises(TypeError, match="unsupported argument"):
        lm(ids, head_mask=torch.ones(2))
    with pytest.raises(ValueError, match="output_attentions"):
        lm(ids, output_attentions=True)
    with pytest.raises(TypeError, match="WersaCache"):
        lm(ids, cache=object())
    with pytest.raises(ValueError, match="cache_position"):
        lm(ids, use_cache=True, cache_position=torch.arange(1, 7))


def test_lm_refuses_bidirectional_or_tokenless_configs():
    with pytest.raises(ValueError, match="causal"):
        WersaForCausalLM(tiny_config("_toy_recurrent", causal=False))
    with pytest.raises(ValueError, match="vocab_size"):
        WersaForCausalLM(tiny_config("_toy_recurrent", vocab_size=None, input_dim=3))
    bidir_only = mixers_where(causal=False)
    if bidir_only:
        with pytest.raises(ValueError, match="causal"):
            WersaForCausalLM(tiny_config(bidir_only[0]))
