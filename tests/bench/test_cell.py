"""The isolated-cell runner: statuses, memory measurement, load and thread records, warnings."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import bench_standins  # noqa: F401 - registers the stand-in mixers in this process
from wersa.bench.cell import auto_threads, run_cell
from wersa.bench.results import format_warnings

HERE = Path(__file__).parent
STANDINS = "bench_standins"
MiB = 2**20


def test_known_allocation_is_read_back_within_ten_percent():
    """200 MiB allocated inside the measured phase, from heap pages freed before it, reads as 200 MiB."""
    rec = run_cell(f"{STANDINS}:allocate_in_phase", {"mib": 200}, timeout_s=120, threads=1)
    assert rec["status"] == "ok", rec
    assert rec["peak_mem_bytes"] == pytest.approx(200 * MiB, rel=0.10), rec["peak_mem_bytes"] / MiB


def test_every_cell_waits_passively_and_records_load_threads_and_limits():
    rec = run_cell(f"{STANDINS}:report_environment", {}, mem_limit_bytes=512 * MiB, timeout_s=60, threads=1)
    assert rec["status"] == "ok", rec
    assert rec["omp_wait_policy_seen"] == "PASSIVE" and rec["omp_num_threads"] == "1"
    assert rec["threads"] == rec["torch_threads"] == 1 and rec["threads_source"] == "requested"
    assert rec["cpu_count"] >= 1 and "load_start" in rec and "load_end" in rec
    assert rec["mem_limit_bytes"] == 512 * MiB and rec["timeout_s"] == 60
    assert rec["stopped_by"] == "steps" and set(rec["code"]) == {"wersa", "source", "torch"}
    assert rec["entry_s"] >= 0 and rec["startup_s"] >= 0 and rec["process_peak_rss_bytes"] > 0
    auto = run_cell(f"{STANDINS}:report_environment", {}, timeout_s=60)
    assert auto["threads_source"] == "auto" and 1 <= auto["threads"] <= auto["cpu_count"]
    assert 1 <= auto_threads() <= auto["cpu_count"]


def test_torch_imports_its_lazy_parts_before_the_memory_cap():
    """The optimisers import ``torch._dynamo`` on first use. Imported under the cap, that import
    spent the cell's budget and sometimes failed as a ``SystemError`` (an ``error``, not an ``oom``,
    in about one run in five of the induced out-of-memory cell); the cell imports it first."""
    rec = run_cell(f"{STANDINS}:report_loaded_modules", {"modules": ["torch._dynamo", "torch.optim"]},
                   mem_limit_bytes=64 * MiB, timeout_s=60, threads=1)
    assert rec["status"] == "ok", rec
    assert rec["loaded"] == ["torch._dynamo", "torch.optim"]


def test_the_wait_policy_can_be_active_or_the_runtime_default(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    rec = run_cell(f"{STANDINS}:report_environment", {}, timeout_s=60, threads=1, omp_wait_policy=None)
    assert rec["status"] == "ok", rec
    assert rec["omp_wait_policy_seen"] is None and rec["omp_wait_policy"] == "default"
    rec = run_cell(f"{STANDINS}:report_environment", {}, timeout_s=60, threads=1, omp_wait_policy="ACTIVE")
    assert rec["omp_wait_policy_seen"] == rec["omp_wait_policy"] == "ACTIVE"
    with pytest.raises(ValueError, match="omp_wait_policy"):
        run_cell(f"{STANDINS}:report_environment", {}, omp_wait_policy="passive-ish")


def test_a_kill_from_outside_is_not_an_out_of_memory():
    rec = run_cell(f"{STANDINS}:kill_self", {"signal": "SIGKILL"}, mem_limit_bytes=2**30, timeout_s=60)
    assert rec["status"] == "killed" and rec["signal"] == "SIGKILL", rec
    assert rec["stopped_by"] == "error"
    rec = run_cell(f"{STANDINS}:kill_self", {"signal": "SIGTERM"}, timeout_s=60)
    assert rec["status"] == "killed" and rec["signal"] == "SIGTERM", rec


def test_timeout_is_stopped_by_time():
    rec = run_cell(f"{STANDINS}:sleep_forever", {}, timeout_s=1)
    assert rec["status"] == "timeout" and rec["stopped_by"] == "time", rec


def test_entry_point_from_a_file_and_a_bad_entry_point():
    rec = run_cell(f"{HERE / 'bench_standins.py'}:report_environment", {}, timeout_s=60, threads=1)
    assert rec["status"] == "ok", rec
    rec = run_cell(f"{STANDINS}:no_such_function", {}, timeout_s=60, threads=1)
    assert rec["status"] == "error" and "no_such_function" in rec["error"]


def test_training_cell_stopped_by_time_carries_a_warning():
    spec = {"mixer": "bench_mean", "task": "bench_first_token", "task_options": {"length": 32}, "length": 32,
            "model": {"hidden_size": 16, "num_attention_heads": 2}, "batch_size": 8, "max_steps": 100_000,
            "max_time_s": 0.5, "eval_samples": 16, "count_flops": False,
            "task_factory": "bench_standins:make_task", "model_factory": "bench_standins:make_model",
            "plugins": ["bench_standins"]}
    rec = run_cell("wersa.bench.train:run_cell", spec, timeout_s=120, threads=1)
    assert rec["status"] == "ok", rec
    assert rec["stopped_by"] == "time" and rec["steps"] < 100_000
    assert any("time budget" in w for w in rec["warnings"]), rec["warnings"]
    rec.update(mixer="bench_mean", task_label="first-token-32", seed=0, config=spec)
    (line,) = format_warnings([rec])
    assert line.startswith("bench_mean / first-token-32 / seed 0: stopped by the time budget after ")
    assert f"after {rec['steps']} of 100000 steps" in line


def test_load_above_the_core_count_is_a_warning():
    rec = {"mixer": "m", "task": "t", "seed": 1, "stopped_by": "steps", "cpu_count": 2, "load_start": 1.0,
           "load_end": 5.5}
    assert format_warnings([rec]) == ["m / t / seed 1: ran under load 5.5 on 2 cores"]
    assert format_warnings([{**rec, "load_end": 1.5}]) == []
