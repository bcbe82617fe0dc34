"""What a cell records beyond its metrics: memory across a resume, the regime that ran, per-instance claims."""

from __future__ import annotations

import os

import pytest
import torch

import bench_standins  # noqa: F401 - registers the stand-in mixers in this process
from wersa.bench.scale import measure, run_scale
from wersa.bench.train import TrainConfig, run_training


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cfg(tmp_path, mixer="bench_mean", **kw):
    fields = dict(mixer=mixer, task="bench_first_token", task_options={"length": 32, "num_train": 256}, length=32,
                  model={"hidden_size": 256, "num_attention_heads": 2}, batch_size=64, max_steps=4,
                  warmup_steps=1, eval_samples=16, count_flops=False, threads=1,
                  task_factory="bench_standins:make_task", model_factory="bench_standins:make_model",
                  plugins=["bench_standins"], checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=2)
    fields.update(kw)
    return TrainConfig(**fields)


def test_a_cell_resumed_after_training_keeps_its_peak_memory(tmp_path, restore_threads):
    first = run_training(_cfg(tmp_path), progress=False)
    assert first["peak_mem_bytes"] > 0
    again = run_training(_cfg(tmp_path), progress=False)  # training is done: only evaluation runs
    assert again["resumed_from_step"] == 4 and again["steps"] == 4
    # The training phase's peak is kept, the very value the first run reported (read once,
    # before the final checkpoint is written: writing it could raise the high-water mark).
    assert again["peak_mem_bytes"] == first["peak_mem_bytes"]


def test_training_and_scale_rows_say_which_regime_ran(tmp_path, restore_threads):
    rec = run_training(_cfg(tmp_path, mixer="bench_regime", checkpoint_dir=None), progress=False)
    assert rec["regime"] == ["long"]
    assert measure("bench_regime", 8, dim=8, num_heads=2, repeats=1, count_flops=False)["regime"] == "short"
    assert measure("bench_mean", 8, dim=8, num_heads=2, repeats=1, count_flops=False)["regime"] is None


def test_scale_asks_the_instance_not_the_class(tmp_path):
    """The class claims a causal form; with ``causal_form=False`` the instance has none and is left out."""
    import wersa

    assert wersa.capabilities("bench_regime").causal
    out = tmp_path / "scale.jsonl"
    new = run_scale(["bench_regime"], [8], str(out), dim=8, num_heads=2, causal=True,
                    mixer_options={"bench_regime": {"causal_form": False}}, progress=False)
    assert new == [] and not out.exists()


def test_step_cost_is_measured_in_an_isolated_process(tmp_path):
    from wersa.bench.cost import measure_results, measure_step_cost
    from wersa.bench.results import append_result, read_results

    cfg = _cfg(tmp_path, model={"hidden_size": 16, "num_attention_heads": 2}, batch_size=8, max_time_s=0.001)
    rec = measure_step_cost(cfg.to_dict(), repeats=5, timeout_s=120, threads=1)
    assert rec["status"] == "ok", rec
    assert len(rec["step_wall_all_s"]) == len(rec["step_cpu_all_s"]) == 5
    assert rec["step_wall_s"] > 0 and rec["step_cpu_s"] > 0 and rec["flops_train_step"] > rec["flops_forward"] > 0
    assert rec["peak_mem_bytes"] >= 0 and rec["threads"] == 1
    # timed one at a time: the OpenMP runtime's own wait policy, not the shared-machine PASSIVE
    assert rec["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "default")
    with pytest.raises(ValueError, match="at least 5"):
        measure_step_cost(cfg.to_dict(), repeats=3)
    # From a results file: one measurement per configuration (seeds and learning rates share it), resumable.
    results, out = tmp_path / "r.jsonl", tmp_path / "cost.jsonl"
    for seed, lr in ((0, 1e-3), (1, 1e-3), (0, 3e-3)):
        append_result(results, {"bench": "train", "status": "ok", "mixer": "bench_mean", "task": "t",
                                "config": {**cfg.to_dict(), "seed": seed, "lr": lr}})
    assert len(measure_results(str(results), str(out), timeout_s=120, threads=1, progress=False)) == 1
    assert measure_results(str(results), str(out), timeout_s=120, threads=1, progress=False) == []
    (row,) = read_results(out)
    assert row["status"] == "ok" and row["bench"] == "cost"


def test_scale_cells_are_timed_under_the_runtime_wait_policy(tmp_path):
    """One scale cell at a time: the OpenMP runtime's own wait policy (not the shared-machine PASSIVE)."""
    (rec,) = run_scale(["sdpa"], [8], str(tmp_path / "scale.jsonl"), dim=8, num_heads=2, causal=False,
                       progress=False)
    assert rec["status"] == "ok", rec
    assert rec["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "default")


def test_allocated_bytes_counts_a_known_allocation_and_not_views():
    from wersa.bench.memory import AllocatedBytes

    x = torch.randn(256, 64)
    with AllocatedBytes() as probe:
        y = x * 2  # fresh: 64 KiB
        y.mul_(3)  # in place
        y[:, :8].t()  # views
        torch.add(x, y, out=y)  # out=
    assert probe.total == 256 * 64 * 4 and probe.count == 1
    with AllocatedBytes(min_bytes=256 * 64 * 4 + 1) as probe:
        x * 2
    assert probe.total == 0 and probe.count == 0
