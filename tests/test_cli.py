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


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("cmd", [[], ["bench"], ["scale"], ["report"], ["train"], ["data"], ["generate"]])
def test_help_states_each_default_once(cmd, capsys):
    text = " ".join(_help(cmd, capsys).split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert text.count("default:") == text.count("[default:")  # one style, one mention per flag
    assert "``" not in text  # no reStructuredText in help


def test_train_help_has_no_presets(capsys):
    assert "preset" not in _help(["train"], capsys).lower()


def test_checkpoint_every_help_says_zero_means_none(capsys):
    for cmd in ("bench", "train"):
        assert "0 = no checkpoints" in " ".join(_help([cmd], capsys).split())


def test_train_checkpoint_every_zero_means_no_checkpoints(tmp_path, monkeypatch):
    """As in bench: ``--checkpoint-every 0`` trains without checkpoints (it used to be an error)."""
    import wersa.bench.train as train_mod

    seen = {}

    def fake_run_training(cfg, save_params=None, progress=True, save_dir=None):
        seen["cfg"] = cfg
        return {"steps": 1}

    monkeypatch.setattr(train_mod, "run_training", fake_run_training)
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--mixer", "wersa", "--task", "listops", "--checkpoint-every", "0",
                 "--checkpoint-dir", str(ckpt), "--quiet"]) == 0
    assert seen["cfg"].checkpoint_dir is None and not ckpt.exists()
    assert main(["train", "--mixer", "wersa", "--task", "listops", "--checkpoint-every", "7",
                 "--checkpoint-dir", str(ckpt), "--quiet"]) == 0
    assert seen["cfg"].checkpoint_dir == str(ckpt) and seen["cfg"].checkpoint_every == 7


def test_bench_summary_comes_from_the_records(tmp_path):
    from wersa.bench.results import append_result
    from wersa.bench.sweep import Sweep, TaskEntry, cell_configs, key_of
    from wersa.cli import bench_summary

    sweep = Sweep(mixers=["wersa", "sdpa"], tasks=[TaskEntry("listops", 64)], name="tiny", mem_limit_gb=4.0,
                  timeout_s=60.0)
    out = tmp_path / "r.jsonl"
    (e, c_wersa), (_, c_sdpa) = cell_configs(sweep)
    # The key the sweep writes: the cell's config and the sweep's limits.
    append_result(out, {"key": key_of(c_wersa, sweep), "status": "ok", "mixer": "wersa", "task": "listops",
                        "task_label": e.title, "seed": 0, "accuracy": 0.4321, "auc": 0.61, "train_time_s": 3.0,
                        "steps": 7, "peak_mem_bytes": 2**20, "stopped_by": "max_time_s"})
    append_result(out, {"key": "another-sweep", "status": "ok", "mixer": "fnet", "task": "x", "seed": 0})
    text = bench_summary(sweep, out)
    assert text.splitlines()[0] == "tiny: 2 cells; 1 ok, 1 not run yet"
    assert "0.432" in text and "stopped by the time budget" in text and "fnet" not in text


def test_bench_summary_follows_a_learning_rate_grid(tmp_path):
    """With a grid, the later seeds run at the chosen rate: the summary counts them once it is chosen."""
    from wersa.bench.results import append_result
    from wersa.bench.sweep import Sweep, TaskEntry, cell_configs, key_of
    from wersa.cli import bench_summary

    sweep = Sweep(mixers=["sdpa"], tasks=[TaskEntry("listops", 64)], seeds=[0, 1], lr_grid=[1e-3, 3e-3],
                  name="grid")
    out = tmp_path / "r.jsonl"
    for score, (_, cfg) in zip((0.3, 0.5), cell_configs(sweep)):
        append_result(out, {"key": key_of(cfg, sweep), "status": "ok", "bench": "train", "mixer": "sdpa",
                            "task": "listops", "seed": 0, "lr": cfg.lr, "select_score": score, "accuracy": score,
                            "train_time_s": 1.0, "steps": 5, "peak_mem_bytes": 2**20})
    assert bench_summary(sweep, out).splitlines()[0] == "grid: 3 cells; 2 ok, 1 not run yet"
