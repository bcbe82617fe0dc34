"""Nothing is lost to a crash: training killed at a random moment resumes to the very same result,
a damaged checkpoint is skipped, and a killed sweep loses and duplicates no cell."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wersa import cli
from wersa.bench.checkpoint import CheckpointStore, atomic_write_bytes
from wersa.bench.results import read_results
from wersa.bench.train import TrainConfig, run_training

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

# Fields of a record that do not depend on timing, memory or the machine.
SAME = ("accuracy", "auc", "eval_loss", "eval_samples", "steps", "stopped_by", "final_train_loss", "params")

STEPS, EVERY = 40, 5
# Dropout (the torch RNG) and feature redraws (buffers) must both be carried across a resume.
TRAIN_ARGS = ["train", "--mixer", "wersa", "--task", "listops", "--length", "48", "--seed", "1",
              "--task-option", "num_train=48", "--task-option", "num_validation=8", "--task-option", "num_test=24",
              "--task-option", "min_length=16", "--task-option", "max_length=48", "--task-option", "max_depth=3",
              "--mixer-option", "redraw_interval=7", "--model-option", "hidden_dropout_prob=0.1",
              "--steps", str(STEPS), "--warmup", "3", "--batch-size", "8", "--hidden-size", "16", "--layers", "1",
              "--heads", "2", "--eval-samples", "24", "--threads", "1", "--no-flops", "--quiet"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train_in_process(tmp_path, name, extra):
    out = tmp_path / f"{name}.jsonl"
    params = tmp_path / f"{name}.pt"
    assert cli.main(TRAIN_ARGS + ["--cache-dir", str(tmp_path / "cache"), "--json-out", str(out),
                                  "--save-params", str(params)] + extra) == 0
    (rec,) = read_results(out)
    return rec, torch.load(params, weights_only=True)


def _assert_same_run(a, pa, b, pb):
    assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_train_killed_at_a_random_moment_resumes_exactly(tmp_path, restore_threads):
    rng = random.Random(1234)
    ckpt = tmp_path / "ckpt"
    ckpt_args = ["--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY)]
    # A fresh process, killed (SIGKILL: no clean-up of any kind) once a random checkpoint exists.
    after_step = EVERY * rng.randint(1, STEPS // EVERY - 1)
    delay = rng.uniform(0.0, 0.15)
    cmd = [sys.executable, "-m", "wersa", *TRAIN_ARGS, "--cache-dir", str(tmp_path / "cache"),
           "--json-out", str(tmp_path / "killed.jsonl"), "--save-params", str(tmp_path / "killed.pt"), *ckpt_args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    store = CheckpointStore(ckpt)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and max(store.steps(), default=0) < after_step:
        time.sleep(0.005)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert store.steps(), "the killed run wrote no checkpoint"
    assert not (tmp_path / "killed.jsonl").exists()

    # The same command again resumes; an uninterrupted run without checkpoints is the reference.
    resumed, p_resumed = _train_in_process(tmp_path, "resumed", ckpt_args)
    reference, p_reference = _train_in_process(tmp_path, "reference", [])
    assert resumed["resumed_from_step"] >= after_step and resumed["resumes"] == 1
    assert resumed["train_time_s"] > 0
    _assert_same_run(resumed, p_resumed, reference, p_reference)


def _tiny_cfg(tmp_path, **over) -> TrainConfig:
    fields = dict(mixer="wersa", task="listops", length=48, seed=2, max_steps=20, warmup_steps=2, batch_size=8,
                  task_options={"num_train": 40, "num_validation": 8, "num_test": 16, "min_length": 16,
                                "max_length": 48, "max_depth": 3},
                  mixer_options={"redraw_interval": 6},
                  model={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32, "hidden_dropout_prob": 0.1},
                  eval_samples=16, threads=1, count_flops=False, cache_dir=str(tmp_path / "cache"),
                  checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=5)
    fields.update(over)
    return TrainConfig(**fields)


def _run(cfg, path):
    rec = run_training(cfg, save_params=str(path), progress=False)
    return rec, torch.load(path, weights_only=True)


def test_damaged_checkpoints_are_skipped_with_a_warning(tmp_path, restore_threads):
    cfg = _tiny_cfg(tmp_path)
    full, p_full = _run(cfg, tmp_path / "full.pt")
    store = CheckpointStore(cfg.checkpoint_dir)
    assert full["resumed_from_step"] is None and store.steps() == [20, 15]  # the newest two are kept

    # The newest cut short (its digest no longer matches): back to step 15, same result.
    newest = store.path(20)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"skipping checkpoint: .*step-00000020\.pt"):
        again, p_again = _run(cfg, tmp_path / "again.pt")
    assert again["resumed_from_step"] == 15
    _assert_same_run(again, p_again, full, p_full)

    # Both damaged, one with no digest to check against: a fresh start, still the same result.
    for step in store.steps():
        store.path(step).with_name(store.path(step).name + ".sha256").unlink()
        atomic_write_bytes(store.path(step), b"not a checkpoint")
    with pytest.warns(UserWarning, match="skipping checkpoint") as caught:
        fresh, p_fresh = _run(cfg, tmp_path / "fresh.pt")
    assert len([w for w in caught if "skipping checkpoint" in str(w.message)]) == 2
    assert fresh["resumed_from_step"] is None
    _assert_same_run(fresh, p_fresh, full, p_full)

    # A checkpoint of another config (here: another seed) is not resumed.
    with pytest.warns(UserWarning, match="different config"):
        other, _ = _run(_tiny_cfg(tmp_path, seed=5, max_steps=5), tmp_path / "other.pt")
    assert other["resumed_from_step"] is None


def test_time_budget_accumulates_across_resumes(tmp_path, restore_threads):
    cfg = _tiny_cfg(tmp_path, max_steps=10, max_time_s=3600.0)
    first, _ = _run(cfg, tmp_path / "a.pt")
    store = CheckpointStore(cfg.checkpoint_dir)
    saved = store.load(store.steps()[0])
    assert saved["done"] and saved["train_time_s"] == pytest.approx(first["train_time_s"])
    # Resuming a finished run trains no further step; the training time is the one recorded.
    second, _ = _run(cfg, tmp_path / "b.pt")
    assert second["resumes"] == 1 and second["steps"] == 10
    assert second["train_time_s"] == pytest.approx(first["train_time_s"])


def test_atomic_write_replaces_whole_files_only(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    class Boom(Exception):
        pass

    from wersa.bench.checkpoint import atomic_open

    with pytest.raises(Boom):
        with atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise Boom
    assert target.read_bytes() == b"old"
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary file left behind


SWEEP_ARGS = ["bench", "--mixers", "bench_mean,bench_quad", "--tasks", "bench_first_token:32", "--seeds", "0,1",
              "--task-option", "length=32", "--steps", "8", "--checkpoint-every", "2", "--batch-size", "8",
              "--hidden-size", "16", "--heads", "2", "--eval-samples", "16", "--threads", "1", "--mem-limit-gb", "2",
              "--timeout", "120", "--plugin", "bench_standins", "--task-factory", "bench_standins:make_task",
              "--model-factory", "bench_standins:make_model", "--quiet", "--no-report"]


@pytest.mark.slow  # ~3 sweep starts and 4+ cell processes: about a minute on a busy 2-core machine
@pytest.mark.parametrize("seed", [7])
def test_sweep_killed_at_random_moments_loses_and_duplicates_nothing(tmp_path, seed):
    """test_sweep.py kills right after the first record; here the kills land anywhere (mid-cell included)."""
    rng = random.Random(seed)
    out = tmp_path / "res.jsonl"
    ckpt_root = tmp_path / "res.ckpt"
    cmd = [sys.executable, "-m", "wersa", *SWEEP_ARGS, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]

    def lines():
        return out.read_text().count("\n") if out.exists() else 0

    def has_checkpoint():
        return ckpt_root.is_dir() and any(ckpt_root.glob("*/step-*.pt"))

    # Kill 1: while a cell is in flight (one of its checkpoints exists), after a random delay.
    # Kill 2: after a random number of further records, a random delay later.
    plans = [(has_checkpoint, rng.uniform(0.0, 0.5))]
    extra = rng.randint(0, 2)
    plans.append((lambda: lines() >= first_lines + extra and has_checkpoint(), rng.uniform(0.0, 1.5)))
    first_lines = 0
    for i, (ready, delay) in enumerate(plans):
        first_lines = lines()
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read().decode()[-2000:]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = read_results(out, warn=False)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 4  # no cell lost, none duplicated
    assert {(r["mixer"], r["seed"]) for r in recs} == {(m, s) for m in ("bench_mean", "bench_quad") for s in (0, 1)}
    for rec in recs:
        assert rec["status"] == "ok", rec.get("error")
        assert rec["steps"] == 8 and "checkpoint_dir" not in rec["config"]
    assert any(r.get("resumed_from_step") for r in recs), "no cell was resumed from a checkpoint"
    assert not ckpt_root.exists()  # every cell's checkpoints are removed once its record is written
    res = subprocess.run(cmd + ["--dry-run"], env=_env(), capture_output=True, text=True, timeout=120)
    assert "0 to run" in res.stdout
