"""train --save DIR -> generate --model DIR, through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from wersa.models import WersaConfig, WersaForCausalLM


def _wersa(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "wersa", *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def byte_lm(tmp_path_factory):
    """A tiny untrained byte-level LM folder (257 ids: byte + 1, 0 = padding), as save_pretrained writes it."""
    path = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    cfg = WersaConfig(mixer="wersa", vocab_size=257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      pad_token_id=0)
    WersaForCausalLM(cfg).save_pretrained(path)
    return path


def test_generate_with_the_default_empty_prompt(byte_lm):
    r = _wersa("generate", "--model", str(byte_lm), "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.encode("utf-8", errors="surrogateescape")) >= 1


def test_generate_streams_after_the_prompt_and_matches_the_model(byte_lm):
    r = _wersa("generate", "--model", str(byte_lm), "--prompt", "ROMEO:", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ROMEO:")
    model = WersaForCausalLM.from_pretrained(str(byte_lm)).eval()
    ids = torch.tensor([[b + 1 for b in b"ROMEO:"]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    logits[0] = float("-inf")  # padding is never generated
    first = bytes([int(logits.argmax()) - 1]).decode("utf-8", errors="replace")
    assert r.stdout[len("ROMEO:")] == first[0]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler (apt-get install g++)")
def test_generate_with_a_compiled_step_writes_the_same_bytes(byte_lm):
    argv = ["generate", "--model", str(byte_lm), "--prompt", "ab", "--max-new-tokens", "6"]
    eager, compiled = _wersa(*argv), _wersa(*argv, "--compile-step")
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert compiled.stdout == eager.stdout


def test_train_save_then_generate(tmp_path):
    """A real (tiny) run: the folder holds the model, its config, the byte convention and the record."""
    if "shakespeare_lm" not in _wersa("data", "list").stdout:
        pytest.skip("shakespeare_lm is not available here")
    out = tmp_path / "lm"
    r = _wersa("train", "--mixer", "wersa", "--task", "shakespeare_lm", "--task-option", "seq_len=64",
               "--steps", "2", "--batch-size", "2", "--eval-samples", "2", "--hidden-size", "16", "--layers", "1",
               "--heads", "2", "--no-flops", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--save", str(out))
    if r.returncode != 0 and "shakespeare" in r.stderr and "fetch" in r.stderr:
        pytest.skip("the Shakespeare texts are not on this machine")
    assert r.returncode == 0, r.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "byte_tokens.json", "training.json"} <= set(names)
    assert json.loads((out / "byte_tokens.json").read_text())["offset"] == 1
    assert json.loads((out / "training.json").read_text())["bpb"] > 0
    g = _wersa("generate", "--model", str(out), "--prompt", "KING", "--max-new-tokens", "5",
               "--temperature", "0.9", "--top-k", "20", "--seed", "3")
    assert g.returncode == 0 and g.stdout.startswith("KING"), g.stderr[-2000:]


def test_generate_refuses_a_classifier(tmp_path):
    from wersa.models import WersaForSequenceClassification

    cfg = WersaConfig(mixer="sdpa", vocab_size=257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_labels=3)
    WersaForSequenceClassification(cfg).save_pretrained(tmp_path)
    r = _wersa("generate", "--model", str(tmp_path))
    assert r.returncode != 0 and "not a causal language model" in r.stderr
