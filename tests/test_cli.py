"""The command line: help, argument errors that name the fix, report and data commands."""

import subprocess
import sys

import pytest

from wersa.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("bench", "scale", "report", "train", "data", "generate"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["bench", "scale", "report", "train", "data", "generate"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: wersa" in capsys.readouterr().out


def test_bad_preset_suggests(capsys):
    with pytest.raises(SystemExit, match="did you mean 'standard'"):
        main(["bench", "--preset", "standrd", "--dry-run"])


def test_unknown_mixer_suggests():
    with pytest.raises(SystemExit, match="unknown mixer 'sdpaa'.*did you mean 'sdpa'"):
        main(["scale", "--mixers", "sdpaa", "--out", "/nonexistent/x.jsonl"])


def test_report_missing_results_file(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["report", str(tmp_path / "nope.jsonl")])


def test_bad_key_value(tmp_path):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["bench", "--mixers", "sdpa", "--tasks", "listops:64", "--task-option", "oops", "--dry-run"])


def test_bench_dry_run_lists_preset_cells(tmp_path, capsys):
    assert main(["bench", "--preset", "quick", "--out", str(tmp_path / "r.jsonl"), "--dry-run"]) == 0
    assert "quick: 10 cells" in capsys.readouterr().out


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    assert "listops" in capsys.readouterr().out


def test_python_dash_m_wersa():
    r = subprocess.run([sys.executable, "-m", "wersa", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "bench" in r.stdout
