"""``benchmarks/performance.py``: its plans, its process settings and its report (nothing is timed here)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "performance.py"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("performance_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plans_hold_runnable_cells(perf):
    for plan in ("default", "quick", "full"):
        cells = perf.default_plan(2, full=plan == "full", quick=plan == "quick")
        assert cells and all(c["kind"] in perf.KINDS and c["threads"] == 2 for c in cells)
        assert len({json.dumps(c, sort_keys=True) for c in cells}) == len(cells)  # no cell twice
    assert max(c.get("n", 0) for c in perf.default_plan(2, quick=True)) <= 16384
    full = perf.default_plan(2, full=True)
    waveformer = {(c["n"], c["opts"].get("attention", "performer")) for c in full if c.get("mixer") == "waveformer"}
    assert waveformer == {(16384, "performer"), (131072, "performer"), (16384, "softmax")}
    assert {c["causal"] for c in full if c.get("mixer") == "sdpa" and c.get("n") == 65536 and c["kind"] == "train"} \
        == {False, True}


def test_malloc_retain_is_set_for_the_cells_and_recorded(perf, monkeypatch, tmp_path):
    for var in perf.RETAIN_MALLOC_ENV:
        monkeypatch.setenv(var, "unset-by-test")  # restored after the test
    seen = []

    def fake_cell(cell, timeout, omp_wait_policy=None):
        seen.append((cell, {v: os.environ[v] for v in perf.RETAIN_MALLOC_ENV}, omp_wait_policy))
        return {**cell, "status": "ok"}

    monkeypatch.setattr(perf, "run_isolated_cell", fake_cell)
    out = tmp_path / "perf.jsonl"
    perf.main(["--plan", "quick", "--only", '"kind": "gemm"', "--malloc", "retain", "--omp-wait-policy", "ACTIVE",
               "--out", str(out)])
    assert len(seen) == 1
    cell, env, policy = seen[0]
    assert cell["malloc"] == "retain" and env == perf.RETAIN_MALLOC_ENV and policy == "ACTIVE"
    assert json.loads(out.read_text())["malloc"] == "retain"


def test_report_gives_ratios_of_one_file(perf, tmp_path, capsys):
    def train(mixer, seconds, **extra):
        return {"kind": "train", "mixer": mixer, "causal": False, "n": 16384, "seconds": seconds,
                "cpu_seconds": 2 * seconds, "peak_bytes": 2 ** 30, "threads": 2, "omp_wait_policy": "default",
                **extra}

    rows = [train("wersa", 1.0, opts={"levels": 2}), train("sdpa", 8.0),
            train("waveformer", 3.0, opts={"levels": 3, "attention": "softmax"})]
    path = tmp_path / "perf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    perf.report(str(path))
    text = capsys.readouterr().out
    assert "malloc: default" in text
    assert "speed-up vs sdpa bidir 16k (seconds): 8.00" in text
    assert "| waveformer (softmax bands) bidir 16k | 3.00 | 6.00 | 1.00 |" in text
    assert "waveformer (softmax bands)/wersa bidir 16k (cpu_seconds): 3.00" in text
