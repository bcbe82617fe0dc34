"""Results store, report tables and plots, metrics helpers, presets."""

import json
import math
from pathlib import Path

import numpy as np

import pytest

from wersa.bench.presets import get_preset
from wersa.bench.report import make_report
from wersa.bench.results import append_result, cell_key, finished_keys, read_results
from wersa.bench.evaluation import macro_auc
from wersa.bench.train import TrainConfig, lr_at


def test_cell_key_is_order_independent_and_sensitive():
    a = {"mixer": "x", "seed": 0, "config": {"lr": 1e-3, "b": 2}}
    b = {"config": {"b": 2, "lr": 1e-3}, "seed": 0, "mixer": "x"}
    assert cell_key(a) == cell_key(b)
    assert cell_key(a) != cell_key({**a, "seed": 1})


def test_append_and_read_skips_corrupt_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    append_result(path, {"key": "a", "status": "ok"})
    with open(path, "a") as fh:
        fh.write('{"key": "b", "stat')  # a writer killed mid-line
    append_result(path, {"key": "c", "status": "oom"})  # starts on a fresh line
    with pytest.warns(UserWarning, match="corrupt"):
        recs = read_results(path)
    assert [r["key"] for r in recs] == ["a", "c"]
    assert finished_keys(recs) == {"a", "c"}
    assert finished_keys(recs, retry_failed=True) == {"a"}
    assert read_results(tmp_path / "missing.jsonl") == []


def test_macro_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    probs = rng.random((200, 4))
    probs /= probs.sum(1, keepdims=True)
    assert macro_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert macro_auc(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])) == 1.0
    assert macro_auc(np.array([1, 1]), np.array([[0.5, 0.5], [0.5, 0.5]])) is None


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(mixer="m", task="t", lr=1.0, warmup_steps=4, max_steps=14)
    assert lr_at(0, cfg) == pytest.approx(0.25)
    assert lr_at(3, cfg) == pytest.approx(1.0)
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(14, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(4, 14))


def test_unknown_training_option_is_named():
    with pytest.raises(ValueError, match="unknown training option.*max_step"):
        TrainConfig.from_dict({"mixer": "m", "task": "t", "max_step": 3})


def test_presets_and_did_you_mean():
    for name in ("quick", "standard", "paper"):
        sweep = get_preset(name)
        assert sweep.mixers and sweep.tasks
    assert set(get_preset("standard").mixers) >= {"softmax", "sdpa", "fnet", "linformer", "performer",
                                                    "waveformer", "wersa"}
    with pytest.raises(ValueError, match="did you mean 'quick'"):
        get_preset("quik")


def test_recall_preset_compares_mixers_at_equal_steps_and_one_rate():
    """Every recall cell has the same recipe (1,000 steps, no time budget, one rate); only mixer and seed differ."""
    from wersa.bench.sweep import cell_configs

    sweep = get_preset("recall")
    cells = cell_configs(sweep)
    assert len(cells) == len(sweep.mixers) * 5
    recipes = {str({k: v for k, v in cfg.to_dict().items() if k not in ("mixer", "seed", "mixer_options")})
               for _, cfg in cells}
    assert len(recipes) == 1
    cfg = cells[0][1]
    assert (cfg.max_steps, cfg.max_time_s, cfg.lr, cfg.eval_samples) == (1000, None, 3e-3, None)
    assert [c.seed for _, c in cells[:len(sweep.mixers)]] == [0] * len(sweep.mixers)  # every mixer at seed 0 first


def _rec(mixer, task, length, seed, status="ok", acc=0.5, **kw):
    rec = {"bench": "train", "key": f"{mixer}{task}{length}{seed}", "mixer": mixer, "task": task,
           "task_label": f"{task}-{length}", "length": length, "seed": seed, "status": status}
    if status == "ok":
        rec.update(accuracy=acc, auc=acc + 0.1, train_time_s=10.0 + seed, step_time_s=0.1, tokens_per_s=100.0,
                   flops_forward=2e9, flops_train_step=6e9, peak_mem_bytes=2**20 * 5, params=1000, steps=10)
    rec.update(kw)
    return rec


def test_report_tables_and_plots(tmp_path):
    path = tmp_path / "r.jsonl"
    for rec in [_rec("a", "t", 64, 0, acc=0.4), _rec("a", "t", 64, 1, acc=0.6), _rec("b", "t", 64, 0),
                _rec("a", "t", 128, 0), _rec("b", "t", 128, 0, status="oom", error="out of memory"),
                {"bench": "scale", "key": "s1", "mixer": "a", "length": 64, "status": "ok", "fwd_time_s": 0.01,
                 "fwd_peak_bytes": 2**20, "fwdbwd_status": "ok", "fwdbwd_time_s": 0.03, "fwdbwd_peak_bytes": 2**21,
                 "flops_forward": 1e6},
                {"bench": "scale", "key": "s2", "mixer": "a", "length": 128, "status": "oom", "error": "oom"}]:
        append_result(path, rec)
    rep = make_report(path, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| 50 ± 14 [" in md  # accuracy % mean ± std over two seeds, then the interval
    assert "| OOM |" in md
    for name in ("train.csv", "scale.csv", "accuracy_vs_length.png", "time_vs_length.png", "memory_vs_length.png",
                 "accuracy_vs_time.png", "scale_time.png"):
        f = tmp_path / "rep" / name
        assert f.exists() and f.stat().st_size > 0, name
    assert (tmp_path / "rep" / "accuracy_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / "rep" / "train.csv").read_text().splitlines()[0].split(",")
    for col in ("accuracy", "accuracy_std", "auc", "train_time_s", "gflops_forward", "peak_mem_mib", "status"):
        assert col in header
    row = next(r for r in rep["train_rows"] if r["mixer"] == "a" and r["length"] == 64)
    assert row["accuracy"][0] == pytest.approx(0.5) and row["seeds"] == 2
    assert math.isclose(row["gflops_forward"][0], 2.0)


def test_report_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        make_report(tmp_path / "missing.jsonl", tmp_path / "out")


def test_cell_key_covers_code_version_and_run_limits(monkeypatch):
    from wersa.bench import results

    spec = {"mixer": "x", "seed": 0}
    key = cell_key(spec, {"mem_limit_bytes": 2**30, "timeout_s": 60})
    assert key == cell_key(dict(spec), {"timeout_s": 60, "mem_limit_bytes": 2**30})
    assert key != cell_key(spec, {"mem_limit_bytes": 2**31, "timeout_s": 60})  # an oom under 1 GiB says nothing at 2
    assert key != cell_key(spec, {"mem_limit_bytes": 2**30, "timeout_s": 120})
    other = {**results.code_version(), "source": "0" * 16}
    monkeypatch.setattr(results, "code_version", lambda: other)
    assert key != cell_key(spec, {"mem_limit_bytes": 2**30, "timeout_s": 60})


def test_sweep_key_changes_with_the_sweep_limits():
    from wersa.bench.sweep import Sweep, TaskEntry, key_of

    cfg = TrainConfig(mixer="m", task="t")
    sweep = Sweep(mixers=["m"], tasks=[TaskEntry("t", 8)], mem_limit_gb=8.0, timeout_s=900.0)
    assert key_of(cfg, sweep) == key_of(cfg, Sweep(mixers=["m"], tasks=[], mem_limit_gb=8.0, timeout_s=900.0))
    assert key_of(cfg, sweep) != key_of(cfg, Sweep(mixers=["m"], tasks=[], mem_limit_gb=4.0, timeout_s=900.0))
    assert key_of(cfg, sweep) != key_of(cfg, Sweep(mixers=["m"], tasks=[], mem_limit_gb=8.0, timeout_s=60.0))


def test_source_hash_follows_every_edit(tmp_path):
    from wersa.bench.results import code_version, source_hash

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    h = source_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("still not code")
    assert source_hash(tmp_path / "pkg") == h
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_hash(tmp_path / "pkg") != h
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("")
    assert source_hash(tmp_path / "pkg") != h
    assert len(code_version()["source"]) == 16


def test_source_hash_leaves_out_only_modules_no_cell_runs(tmp_path):
    """Editing the report or the command line keeps finished cells; a cell's process imports none of them."""
    import wersa
    from wersa.bench.cell import run_cell
    from wersa.bench.results import RESULT_NEUTRAL, code_version, source_hash

    (tmp_path / "pkg" / "bench").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "bench" / "report.py").write_text("y = 1\n")
    h = source_hash(tmp_path / "pkg", exclude=["bench/report.py"])
    (tmp_path / "pkg" / "bench" / "report.py").write_text("y = 2\n")
    assert source_hash(tmp_path / "pkg", exclude=["bench/report.py"]) == h
    assert source_hash(tmp_path / "pkg") != h
    root = Path(wersa.__file__).parent
    assert code_version()["source"] == source_hash(root, exclude=RESULT_NEUTRAL)
    assert all((root / name).is_file() for name in RESULT_NEUTRAL)  # no stale names
    # A real (tiny) training cell, through the real cell runner: which wersa modules did it load?
    spec = {"mixer": "bench_mean", "task": "bench_first_token", "length": 32, "batch_size": 8,
            "task_options": {"length": 32, "num_train": 16, "num_test": 16}, "max_steps": 2,
            "model": {"hidden_size": 16, "num_attention_heads": 2}, "threads": 1, "eval_samples": 8,
            "task_factory": "bench_standins:make_task", "model_factory": "bench_standins:make_model",
            "plugins": ["bench_standins"]}
    rec = run_cell("bench_standins:train_and_list_modules", spec, timeout_s=120, threads=1)
    assert rec["status"] == "ok", rec.get("error")
    loaded = set(rec["wersa_files"])
    assert "bench/train.py" in loaded and "bench/cell.py" in loaded
    assert not loaded & set(RESULT_NEUTRAL), loaded & set(RESULT_NEUTRAL)


def test_killed_cells_run_again():
    recs = [{"key": "a", "status": "ok"}, {"key": "b", "status": "killed"}, {"key": "c", "status": "timeout"}]
    assert finished_keys(recs) == {"a", "c"}
