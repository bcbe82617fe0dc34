"""End to end: a tiny isolated sweep, its columns, kill + resume, an induced OOM, the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench_standins  # noqa: F401 - registers the stand-in mixers in this process
from wersa.bench.cell import run_cell
from wersa.bench.results import read_results

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

BENCH_ARGS = ["bench", "--mixers", "bench_mean,bench_quad", "--tasks", "bench_first_token:32", "--seeds", "0",
              "--task-option", "length=32", "--steps", "6", "--batch-size", "8", "--hidden-size", "16",
              "--heads", "2", "--eval-samples", "16", "--threads", "1", "--mem-limit-gb", "2", "--timeout", "120",
              "--plugin", "bench_standins", "--task-factory", "bench_standins:make_task",
              "--model-factory", "bench_standins:make_model", "--quiet"]

OK_COLUMNS = ["accuracy", "auc", "train_time_s", "step_time_s", "tokens_per_s", "peak_mem_bytes", "flops_forward",
              "flops_train_step", "params", "steps", "env", "config", "key", "mixer", "task", "length", "seed"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow  # ~8 interpreter starts: about 40 s on an idle 2-core machine
def test_sweep_kill_resume_columns_and_report(tmp_path):
    out = tmp_path / "res.jsonl"
    cmd = [sys.executable, "-m", "wersa", *BENCH_ARGS, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    # First run: killed as soon as the first cell is written.
    proc = subprocess.Popen(cmd + ["--no-report"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_results(out)
    assert 1 <= len(first) < 2, proc.stderr.read().decode()[-2000:]
    # A torn line from a crash in the middle of a write is skipped, not fatal.
    with open(out, "a") as fh:
        fh.write('{"key": "torn", "sta')
    # Second run resumes: only the missing cells run, then the report is written.
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = read_results(out, warn=False)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 2  # no cell lost, none duplicated
    assert keys[: len(first)] == [r["key"] for r in first]
    for rec in recs:
        assert rec["status"] == "ok", rec.get("error")
        for col in OK_COLUMNS:
            assert rec.get(col) is not None, col
        assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["auc"] <= 1.0
        assert rec["flops_train_step"] > rec["flops_forward"] > 0
        assert rec["env"]["torch"] and rec["env"]["torch_threads"] == 1
        assert rec["config"]["max_steps"] == 6 and rec["steps"] == 6
    assert {(r["mixer"], r["seed"]) for r in recs} == {(m, s) for m in ("bench_mean", "bench_quad") for s in (0,)}
    rep = tmp_path / "res-report"
    md = (rep / "report.md").read_text()
    assert "bench_mean" in md and "bench_quad" in md and "accuracy" in md
    assert (rep / "train.csv").exists() and (rep / "accuracy_vs_time.png").exists()
    # A third run has nothing left to do.
    res = subprocess.run(cmd + ["--dry-run"], env=_env(), capture_output=True, text=True, timeout=120)
    assert "0 to run" in res.stdout and len(read_results(out, warn=False)) == 2


def test_induced_oom_is_a_recorded_result():
    spec = {"mixer": "bench_quad", "task": "bench_first_token", "length": 2048, "batch_size": 16,
            "task_options": {"length": 2048, "num_train": 16, "num_test": 16}, "max_steps": 2,
            "model": {"hidden_size": 16, "num_attention_heads": 2}, "threads": 1,
            "task_factory": "bench_standins:make_task", "model_factory": "bench_standins:make_model",
            "plugins": ["bench_standins"]}
    # (16, 2048, 2048) float32 scores alone are 256 MiB: far over a 64 MiB cap.
    rec = run_cell("wersa.bench.train:run_cell", spec, mem_limit_bytes=64 * 2**20, timeout_s=120, threads=1)
    assert rec["status"] == "oom", rec
    assert rec["wall_s"] > 0


def test_crash_is_a_recorded_error():
    rec = run_cell("wersa.bench.train:run_cell", {"mixer": "bench_mean", "task": "t", "bogus_option": 1}, timeout_s=60)
    assert rec["status"] == "error" and "bogus_option" in rec["error"]


def test_timeout_is_recorded():
    rec = run_cell("wersa.bench.train:run_cell", {"mixer": "bench_mean", "task": "t"}, timeout_s=0.05)
    assert rec["status"] == "timeout"


def _grid_sweep():
    from wersa.bench.sweep import Sweep, TaskEntry

    return Sweep(mixers=["m1", "m2"], tasks=[TaskEntry("t1", 8), TaskEntry("t2", 8, mixers=["m1"])],
                 seeds=[0, 1, 2], lr_grid=[1e-3, 3e-3, 1e-2], recipe={"max_steps": 5})


def test_lr_grid_order_then_selection_on_validation():
    from wersa.bench.sweep import cell_configs, chosen_lr, key_of, pending_selection

    sweep = _grid_sweep()
    cells = cell_configs(sweep)
    # Tuning first, task by task, the middle rate first for every mixer; all at the first seed.
    assert [(c.task, c.mixer, c.lr, c.seed) for _, c in cells] == [
        ("t1", "m1", 3e-3, 0), ("t1", "m2", 3e-3, 0), ("t1", "m1", 1e-3, 0), ("t1", "m2", 1e-3, 0),
        ("t1", "m1", 1e-2, 0), ("t1", "m2", 1e-2, 0), ("t2", "m1", 3e-3, 0), ("t2", "m1", 1e-3, 0),
        ("t2", "m1", 1e-2, 0)]
    assert pending_selection(sweep, []) == 6
    scores = {3e-3: 0.5, 1e-3: 0.4, 1e-2: 0.7}
    recs = [{"key": key_of(c, sweep), "status": "ok", "select_score": scores[c.lr]} for e, c in cells
            if c.task == "t1" and c.mixer == "m1"]
    recs.append({"key": key_of(cells[1][1], sweep), "status": "skipped"})  # m2: not available here
    assert chosen_lr(sweep, sweep.tasks[0], "m1", recs) == 1e-2
    assert chosen_lr(sweep, sweep.tasks[0], "m2", recs) is None
    later = cell_configs(sweep, recs)[len(cells):]
    assert [(c.task, c.mixer, c.lr, c.seed) for _, c in later] == [("t1", "m1", 1e-2, 1), ("t1", "m1", 1e-2, 2)]
    # The first seed at the chosen rate is the tuning cell itself: no extra cell, no duplicate key.
    keys = [key_of(c, sweep) for _, c in cell_configs(sweep, recs)]
    assert len(keys) == len(set(keys))
    # A failed (diverged) rate is not chosen; ties go to the middle rate (tried first).
    recs2 = [dict(r, status="error") if r.get("select_score") == 0.7 else r for r in recs]
    assert chosen_lr(sweep, sweep.tasks[0], "m1", recs2) == 3e-3


def test_jobs_run_cells_at_once(monkeypatch, tmp_path):
    """``Sweep.jobs=2`` starts two cells together: a barrier both must reach before either returns."""
    import threading

    from wersa.bench import sweep as sweep_mod
    from wersa.bench.sweep import Sweep, TaskEntry, run_sweep

    barrier = threading.Barrier(2, timeout=20)

    def fake_run_cell(entry, spec, **kw):
        barrier.wait()  # raises BrokenBarrierError unless a second cell runs meanwhile
        return {"status": "ok", "select_score": 0.5, "accuracy": 0.5, "auc": 0.5, "train_time_s": 0.0,
                "steps": 1, "peak_mem_bytes": 0}

    monkeypatch.setattr(sweep_mod, "run_cell", fake_run_cell)
    sw = Sweep(mixers=["bench_mean", "bench_quad"], tasks=[TaskEntry("bench_first_token", 32, {"length": 32})],
               recipe={"task_factory": "bench_standins:make_task", "model_factory": "bench_standins:make_model"},
               checkpoint_every=0, jobs=2)
    recs = run_sweep(sw, tmp_path / "r.jsonl", cache_dir=str(tmp_path / "cache"), progress=False)
    assert sorted(r["mixer"] for r in recs) == ["bench_mean", "bench_quad"]
    assert len(read_results(tmp_path / "r.jsonl")) == 2


@pytest.mark.parametrize("jobs", [1, 2])
def test_cells_wait_passively_only_when_several_run_at_once(monkeypatch, tmp_path, jobs):
    """One cell at a time gets the OpenMP runtime's own wait policy (PASSIVE's wake-ups slow
    chunked causal loops); cells sharing the cores wait passively, so spinning threads do not
    fight each other."""
    from wersa.bench import sweep as sweep_mod
    from wersa.bench.sweep import Sweep, TaskEntry, run_sweep

    policies = []

    def fake_run_cell(entry, spec, **kw):
        policies.append(kw.get("omp_wait_policy", "PASSIVE"))
        return {"status": "ok", "select_score": 0.5, "accuracy": 0.5, "auc": 0.5, "train_time_s": 0.0,
                "steps": 1, "peak_mem_bytes": 0}

    monkeypatch.setattr(sweep_mod, "run_cell", fake_run_cell)
    sw = Sweep(mixers=["bench_mean"], tasks=[TaskEntry("bench_first_token", 32, {"length": 32})],
               recipe={"task_factory": "bench_standins:make_task", "model_factory": "bench_standins:make_model"},
               checkpoint_every=0, jobs=jobs)
    run_sweep(sw, tmp_path / "r.jsonl", cache_dir=str(tmp_path / "cache"), progress=False)
    assert policies == [None if jobs == 1 else "PASSIVE"]


def test_capability_refusal_is_skipped_with_the_reason(tmp_path):
    """A mixer that cannot do what a task needs is refused from its capabilities, before any process starts."""
    from wersa.bench.sweep import TaskEntry, capability_refusal, prepare_task

    recipe = {"task_factory": "bench_standins:make_task"}
    # The stand-in task draws lengths between half and all of the cell length: its batches are padded.
    reason, needs = prepare_task(TaskEntry("bench_first_token", 32, {"length": 32}), recipe, str(tmp_path))
    assert reason is None
    assert needs == {"causal": False, "padding": True}
    assert "padding mask" in capability_refusal("wersa_published", {}, 32, needs)
    assert capability_refusal("wersa_published", {}, 32, {"causal": False, "padding": False}) is None
    assert "no causal form" in capability_refusal("wersa_published", {}, 32, {"causal": True, "padding": False})
    assert "at most 64 tokens" in capability_refusal("linformer", {"max_len": 64}, 128, needs)
    assert capability_refusal("wersa", {}, 32, needs) is None
