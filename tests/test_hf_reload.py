"""A saved model reloads through the Auto classes in a new process after only ``import wersa``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from wersa.models import WersaConfig, WersaForCausalLM


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_auto_classes_reload_after_import_wersa(tmp_path):
    torch.manual_seed(0)
    cfg = WersaConfig(mixer="wersa", vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = WersaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 5, 7, 3, 2, 9]])
    with torch.no_grad():
        want = model(ids).logits
    torch.save(want, tmp_path / "want.pt")
    r = _fresh(f"""
        import sys
        import torch
        import wersa
        from transformers import AutoConfig, AutoModelForCausalLM
        assert AutoConfig.from_pretrained({str(tmp_path)!r}).model_type == "wersa"
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}).eval()
        assert type(m).__name__ == "WersaForCausalLM", type(m)
        with torch.no_grad():
            got = m(torch.tensor([[1, 5, 7, 3, 2, 9]])).logits
        torch.testing.assert_close(got, torch.load({str(tmp_path / "want.pt")!r}))
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_auto_config_alone_after_import_wersa(tmp_path):
    WersaConfig(mixer="sdpa", vocab_size=20, hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    r = _fresh(f"""
        import wersa
        from transformers import AutoConfig
        print(type(AutoConfig.from_pretrained({str(tmp_path)!r})).__name__)
    """)
    assert r.returncode == 0 and "WersaConfig" in r.stdout, r.stderr[-3000:]


def test_import_wersa_stays_light():
    """``import wersa`` registers lazily: transformers is not imported until it is used."""
    r = _fresh("""
        import sys
        import wersa
        print(sorted(m for m in ("transformers", "wersa.models.modeling") if m in sys.modules))
    """)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-3000:])


def test_registration_when_transformers_came_first(tmp_path):
    WersaForCausalLM(WersaConfig(mixer="sdpa", vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    r = _fresh(f"""
        from transformers import AutoConfig, AutoModelForCausalLM
        import wersa
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        print(type(m).__name__)
    """)
    assert r.returncode == 0 and "WersaForCausalLM" in r.stdout, r.stderr[-3000:]
