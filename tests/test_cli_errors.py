"""CLI errors not pinned in tests/test_cli.py: each names the problem, no traceback."""

from __future__ import annotations

import pytest

from wersa.cli import main


def _error(argv, capsys) -> str:
    """Run the CLI; return the error text (SystemExit message or stderr) after checking it failed."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        assert exc.code not in (0, None)
        return str(exc.code)
    assert rc != 0
    return capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["train", "--mixer", "wersaa", "--task", "listops"], "did you mean 'wersa'"),
    (["data", "describe", "listop"], "did you mean 'listops'"),
    (["bench", "--preset", "quik", "--dry-run"], "did you mean 'quick'"),
    (["scale", "--lengths", "abc"], "--lengths expects comma-separated integers"),
    (["bench", "--dry-run"], "choose --preset"),
    (["generate", "--model", "/nonexistent/model"], "does not exist"),
    (["report", "/nonexistent/results.jsonl"], "run `wersa bench` or `wersa scale` first"),
])
def test_cli_errors_name_the_fix(argv, match, capsys):
    assert match in _error(argv, capsys)


def test_train_unknown_task_suggests(capsys):
    assert "did you mean 'listops'" in _error(["train", "--mixer", "wersa", "--task", "listop"], capsys)
