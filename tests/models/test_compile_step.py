"""``WersaConfig(compile_step=True)``: the causal LM decodes through its recurrent mixers'
compiled token step (``Mixer.compile_step``) and generates what the eager model generates;
a model with no token step to compile refuses the option."""

from __future__ import annotations

import shutil

import pytest
import torch

from wersa.models import WersaConfig, WersaForCausalLM, WersaForSequenceClassification

from .helpers import tiny_config


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (apt-get install g++)")
def test_compiled_decoding_generates_as_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = WersaForCausalLM(tiny_config("wersa")).eval()
    compiled = WersaForCausalLM(tiny_config("wersa", compile_step=True)).eval()
    compiled.load_state_dict(eager.state_dict())
    assert all(layer.mixer.step_compile_options is not None for layer in compiled.model.layers)
    assert all(layer.mixer.step_compile_options is None for layer in eager.model.layers)
    prompt = torch.randint(0, 23, (2, 7))
    kw = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    out_e, out_c = eager.generate(prompt, **kw), compiled.generate(prompt, **kw)
    assert torch.equal(out_e.sequences, out_c.sequences)
    for a, b in zip(out_e.scores, out_c.scores):
        assert (a - b).abs().max().item() < 1e-4


def test_compile_step_needs_a_recurrent_causal_layer():
    with pytest.raises(ValueError, match="compile_step"):
        WersaForSequenceClassification(tiny_config("wersa", compile_step=True, num_labels=2))
    with pytest.raises(ValueError, match="compile_step"):
        WersaForCausalLM(tiny_config("hyper", compile_step=True))
    with pytest.raises(TypeError, match="compile_step"):
        WersaConfig(compile_step="yes")
