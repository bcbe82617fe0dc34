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


# One case per command goes through a real `python -m wersa` process (about 2 CPU-seconds each,
# mostly importing torch); the rest call the same `main` in this process.
THROUGH_ENTRY_POINT = {0, 3, 6, 8, 10, 11, 13, 16}


def _check(rc, err: str, out: str, flag: str, folder) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc not in (0, None), (out, err)
    assert len(lines) == 1 and "error" in lines[0] and flag in lines[0], err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in folder.iterdir()) == ["README.md"]  # nothing written


@pytest.mark.parametrize("argv,flag", [c for i, c in enumerate(CASES) if i in THROUGH_ENTRY_POINT],
                         ids=[" ".join(a) for i, (a, _) in enumerate(CASES) if i in THROUGH_ENTRY_POINT])
def test_bad_input_through_python_dash_m(argv, flag, tmp_path):
    (tmp_path / "README.md").write_text("# not results\n\nsome text\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "wersa", *argv], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    _check(r.returncode, r.stderr, r.stdout, flag, tmp_path)


@pytest.mark.parametrize("argv,flag", [c for i, c in enumerate(CASES) if i not in THROUGH_ENTRY_POINT],
                         ids=[" ".join(a) for i, (a, _) in enumerate(CASES) if i not in THROUGH_ENTRY_POINT])
def test_bad_input_in_process(argv, flag, tmp_path, monkeypatch, capsys):
    from wersa.cli import main

    (tmp_path / "README.md").write_text("# not results\n\nsome text\n")
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
        if isinstance(exc.code, str):  # SystemExit("error: ...") is printed by the interpreter on exit
            rc = 1
            print(exc.code, file=sys.stderr)
    cap = capsys.readouterr()
    _check(rc, cap.err, cap.out, flag, tmp_path)
