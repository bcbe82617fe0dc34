"""Bad input through the real entry point (``python -m wersa``): one line naming the flag, non-zero exit,
nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    (["bench", "--mixers", "sdpa", "--tasks", "listops:abc", "--dry-run"], "--tasks"),
    (["bench", "--mixers", "sdpa", "--tasks", "listops:0", "--dry-run"], "--tasks"),
    (["bench", "--mixers", "sdpa", "--tasks", "listops:64", "--seeds", "a", "--dry-run"], "--seeds"),
    (["bench", "--mixers", "wersaa", "--tasks", "listops:64", "--dry-run"], "--mixers: unknown mixer 'wersaa'"),
    (["bench", "--mixers", "sdpa", "--tasks", "listop:256", "--dry-run"], "--tasks: unknown task 'listop'"),
    (["bench", "--mixers", "sdpa", "--tasks", "listops:64", "--checkpoint-every", "-1", "--dry-run"],
     "--checkpoint-every"),
    (["scale", "--mixers", "sdpa", "--lengths=-1k", "--quiet"], "--lengths"),
    (["scale", "--mixers", "sdpa", "--lengths", "0", "--quiet"], "--lengths"),
    (["scale", "--mixers", "sdpa", "--lengths", "64", "--dim", "250", "--heads", "4", "--quiet"], "--dim 250"),
    (["scale", "--mixers", "sdpa", "--lengths", "64", "--repeats", "0", "--quiet"], "--repeats"),
    (["report", "README.md"], "not a results file"),
    (["train", "--mixer", "wersaa", "--task", "listops"], "--mixer: unknown mixer 'wersaa'"),
    (["train", "--mixer", "wersa", "--task", "listop"], "--task: unknown task 'listop'"),
    (["train", "--mixer", "wersa", "--task", "listops", "--length", "-5"], "--length"),
    (["train", "--mixer", "wersa", "--task", "listops", "--steps", "0"], "--steps"),
    (["train", "--mixer", "wersa", "--task", "listops", "--checkpoint-every", "-2"], "--checkpoint-every"),
    (["generate", "--model", "nowhere", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--model", "nowhere"], "--model"),
]


@pytest.mark.parametrize("argv,flag", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_naming_the_flag(argv, flag, tmp_path):
    (tmp_path / "README.md").write_text("# not results\n\nsome text\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "wersa", *argv], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert len(lines) == 1 and "error" in lines[0] and flag in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # nothing written
