"""What one training step costs, measured apart from training: ``python -m wersa.bench.cost``.

A training cell's own step times are taken on whatever machine state the sweep met
(other processes, a time budget); its accuracy is what it learnt in its steps. The
cost of a configuration is measured separately, each in a fresh isolated process
(:func:`wersa.bench.cell.run_cell`), so that training time can be reported as
``steps to reach a target x isolated seconds per step``:

* ``step_wall_s`` / ``step_cpu_s``: median wall time and process CPU time of one
  optimiser step (forward, backward, clipping, AdamW update) over ``repeats`` (at
  least 5) steps, after ``warmup`` untimed ones. CPU time is robust to other load;
  wall time is what a user waits;
* ``peak_mem_bytes``: what the steps add to memory (activations, gradients,
  optimiser state; :class:`wersa.bench.memory.PeakMemory`);
* ``flops_forward`` / ``flops_train_step``: FLOPs of one global batch.

Usage::

    python -m wersa.bench.cost --results results/study.jsonl --out results/study-cost.jsonl

measures every ``ok`` training record of ``--results`` (resumable: configurations
already in ``--out`` under the same key are skipped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

MIN_REPEATS = 5
# Training-config fields that do not change the cost of one step (left out of a cost key).
NOT_COST = ("seed", "lr", "max_time_s", "max_steps", "warmup_steps", "eval_every", "eval_samples",
            "select_samples", "eval_split", "eval_batch_size", "count_flops")


def step_cost(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of an isolated cost cell: ``spec = {"config": TrainConfig dict, "warmup": int, "repeats": int}``."""
    import torch

    from . import adapters
    from .flops import forward_and_step_flops
    from .memory import PeakMemory
    from .train import TrainConfig, _batches, optimiser_step, seed_everything

    cfg = TrainConfig.from_dict(spec["config"])
    warmup, repeats = int(spec.get("warmup", 2)), int(spec.get("repeats", MIN_REPEATS))
    adapters.load_plugins(cfg.plugins)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    task = adapters.build_task(cfg.task, cfg.task_options, cfg.task_factory, cache_dir=cfg.cache_dir)
    seed_everything(cfg.seed)
    model = adapters.build_model(task.info, cfg.mixer, cfg.mixer_options, cfg.length, cfg.model, cfg.model_factory)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    batches = _batches(task, cfg)
    model.train()
    peak = PeakMemory("cpu")
    peak.start()  # before the first step: the optimiser state is allocated there
    wall, cpu = [], []
    for step in range(warmup + repeats):
        batch = next(batches)
        t0, c0 = time.perf_counter(), time.process_time()
        optimiser_step(model, model, opt, batch, step, cfg)
        if step >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    rec: dict[str, Any] = {
        "step_wall_s": statistics.median(wall), "step_cpu_s": statistics.median(cpu),
        "step_wall_all_s": wall, "step_cpu_all_s": cpu, "warmup": warmup, "repeats": repeats,
        "peak_mem_bytes": peak.peak_bytes(), "peak_mem_method": peak.info()["method"],
        "params": sum(p.numel() for p in model.parameters()),
        "regime": adapters.model_regimes(model, cfg.length),
    }
    fwd, train_step = forward_and_step_flops(model, next(batches))
    rec.update(flops_forward=fwd, flops_train_step=train_step)
    return rec


def measure_step_cost(config: dict[str, Any], *, warmup: int = 2, repeats: int = MIN_REPEATS,
                      mem_limit_bytes: int | None = None, timeout_s: float | None = 600.0,
                      threads: int | None = None) -> dict[str, Any]:
    """:func:`step_cost` of ``config`` (a ``TrainConfig`` dict) in a fresh isolated process.

    Checkpointing and time budgets of ``config`` are ignored: the cost is that of a step.
    Returns the runner's record (``status``, load, threads, ...) with the cost fields.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be at least {MIN_REPEATS} (a median of fewer steps is noise), got {repeats}")
    from .cell import run_cell

    config = {**config, "checkpoint_dir": None, "max_time_s": None}
    if threads:
        config["threads"] = threads
    # Cost cells run one at a time: the OpenMP runtime's default wait policy (what a user's
    # process gets). PASSIVE's thread wake-ups dominate chunked causal loops (docs/performance.md, run E).
    return run_cell("wersa.bench.cost:step_cost", {"config": config, "warmup": warmup, "repeats": repeats},
                    mem_limit_bytes=mem_limit_bytes, timeout_s=timeout_s, threads=config.get("threads"),
                    omp_wait_policy=None)


def measure_results(results: str, out: str, *, warmup: int = 2, repeats: int = MIN_REPEATS,
                    mem_limit_bytes: int | None = None, timeout_s: float | None = 600.0, threads: int | None = None,
                    cache_dir: str | None = None, plugins: list[str] | None = None,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Measure the step cost of every ``ok`` training record of ``results``, appending one record each to ``out``."""
    from .results import append_result, cell_key, finished_keys, read_results

    done = finished_keys(read_results(out))
    written, seen = [], set()
    for row in read_results(results):
        if row.get("bench") != "train" or row.get("status") != "ok" or not row.get("config"):
            continue
        config = dict(row["config"])
        limits = {"mem_limit_bytes": mem_limit_bytes, "timeout_s": timeout_s, "threads": threads}
        # Seed, learning rate and the run's length and evaluation change what is learnt, not
        # what a step costs: one measurement per configuration of model, data and batch.
        key = cell_key({"bench": "cost", "warmup": warmup, "repeats": repeats,
                        **{k: v for k, v in config.items() if k not in NOT_COST}}, limits)
        if key in done or key in seen:
            continue
        seen.add(key)
        config.update(cache_dir=cache_dir, plugins=list(plugins or config.get("plugins") or []))
        rec = measure_step_cost(config, warmup=warmup, repeats=repeats, mem_limit_bytes=mem_limit_bytes,
                                timeout_s=timeout_s, threads=threads)
        rec = {"bench": "cost", "key": key, "mixer": row.get("mixer"), "task": row.get("task"),
               "task_label": row.get("task_label"), "length": row.get("length"), "config": config,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        append_result(out, rec)
        written.append(rec)
        if progress:
            what = f"{rec['mixer']} / {rec.get('task_label') or rec['task']}"
            if rec["status"] == "ok":
                print(f"{what}: {rec['step_wall_s'] * 1e3:.1f} ms wall, {rec['step_cpu_s'] * 1e3:.1f} ms CPU per step, "
                      f"peak {rec['peak_mem_bytes'] / 2**20:.0f} MiB, {rec['flops_train_step'] / 1e9:.2f} GFLOP",
                      flush=True)
            else:
                print(f"{what}: {rec['status'].upper()} {rec.get('error', '')}"[:200], flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wersa.bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="training results (JSON lines) whose configurations to measure")
    p.add_argument("--out", required=True, help="cost records (JSON lines, resumable)")
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed steps (median; at least {MIN_REPEATS})")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the free cores)")
    p.add_argument("--mem-limit-gb", type=float, default=8.0, help="memory cap per cell (0 = none)")
    p.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit per cell, seconds")
    p.add_argument("--cache-dir", default=None, help="task data cache")
    p.add_argument("--plugin", action="append", default=[], help="module to import first (registers mixers/tasks)")
    args = p.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        p.error(f"--repeats must be at least {MIN_REPEATS}")
    measure_results(args.results, args.out, warmup=args.warmup, repeats=args.repeats,
                    mem_limit_bytes=int(args.mem_limit_gb * 2**30) if args.mem_limit_gb > 0 else None,
                    timeout_s=args.timeout, threads=args.threads, cache_dir=args.cache_dir, plugins=args.plugin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
