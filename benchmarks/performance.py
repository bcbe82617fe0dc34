"""Speed and memory of WERSA against its peers, one fresh process per measurement.

Usage::

    python benchmarks/performance.py --out perf.json              # the cells of docs/performance.md
    python benchmarks/performance.py --plan full --out perf.json  # plus fused SDPA at 64k (slow)
    python benchmarks/performance.py --cell '{"kind": "train", "mixer": "wersa", "causal": false, "n": 16384}'

Cells (each runs in its own subprocess, so allocator caches and peak-RSS marks of
one measurement never leak into another):

* ``train``: one mixer, ``x`` of shape ``(1, n, dim)``, forward + backward of
  ``y.square().mean()``; median wall time of ``reps`` repetitions, and the peak
  resident memory of the first repetition above the resident size measured just
  before it (model and input already allocated).
* ``decode``: prefill ``n`` tokens (no grad), then ``steps`` single-token ``step``
  calls; median seconds per token.
* ``core``: the attention core alone (:func:`wersa.ops.favor_attention.favor_attention`,
  or the unfused composition), forward + backward, FLOPs counted by
  ``torch.utils.flop_counter`` and the fp32 GEMM rate of this machine measured in
  the same process (a 2048^3 ``matmul``).

Threads are pinned (``torch.set_num_threads``) and recorded with each result.
Nothing here asserts on time: results are data for ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


def _build(torch, cell):
    import wersa

    torch.manual_seed(0)
    opts = dict(cell.get("opts", {}))
    return wersa.build_mixer(cell["mixer"], dim=cell.get("dim", 512), num_heads=cell.get("heads", 8),
                             causal=cell["causal"], **opts)


def run_train(cell):
    torch = _setup(cell["threads"])
    from wersa.bench.memory import PeakMemory

    model = _build(torch, cell).train()
    x = torch.randn(1, cell["n"], cell.get("dim", 512), requires_grad=True)
    times, peak, info = [], None, None
    for rep in range(cell.get("reps", 3)):
        model.zero_grad(set_to_none=True)
        x.grad = None
        if rep == 0:
            mem = PeakMemory("cpu")
            mem.start()
        t0 = time.perf_counter()
        y = model(x)
        y.square().mean().backward()
        times.append(time.perf_counter() - t0)
        if rep == 0:
            peak, info = mem.peak_bytes(), mem.info()
            hwm = _vm_hwm()
        del y
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_bytes": peak,
            "absolute_hwm_bytes": hwm, "memory": info}


def _vm_hwm():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def run_decode(cell):
    torch = _setup(cell["threads"])
    model = _build(torch, cell).eval()
    n, steps = cell["n"], cell.get("steps", 32)
    with torch.no_grad():
        _, state = model.prefill(torch.randn(1, n, cell.get("dim", 512)))
        x = torch.randn(1, cell.get("dim", 512))
        for _ in range(3):  # warm-up
            _, state = model.step(x, state)
        per = []
        for _ in range(steps):
            t0 = time.perf_counter()
            _, state = model.step(x, state)
            per.append(time.perf_counter() - t0)
    return {"seconds_per_token": statistics.median(per), "steps": steps}


def run_core(cell):
    torch = _setup(cell["threads"])
    from torch.utils.flop_counter import FlopCounterMode

    from wersa.ops.favor_attention import favor_attention, favor_attention_reference

    B, H, n, d, m = 1, cell.get("heads", 8), cell["n"], cell.get("head_dim", 64), cell.get("m", 256)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, generator=g).requires_grad_(True) for _ in range(3))
    omega = torch.randn(H, m, d, generator=g)
    bw = torch.ones(H, requires_grad=True)
    fn = favor_attention if cell.get("fused", True) else favor_attention_reference

    def step():
        y = fn(q, k, v, omega, bw, causal=cell["causal"])
        y.backward(torch.ones_like(y))

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(cell.get("reps", 3)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        gemm.append(2 * 2048 ** 3 / (time.perf_counter() - t0))
    sec = statistics.median(times)
    rate = max(gemm)  # the machine's best-case rate in this run
    return {"seconds": sec, "all_seconds": times, "flops": flops, "gflops_per_s": flops / sec / 1e9,
            "gemm_gflops_per_s": rate / 1e9, "gemm_all": [r / 1e9 for r in gemm],
            "fraction_of_gemm": flops / sec / rate}


KINDS = {"train": run_train, "decode": run_decode, "core": run_core}


def run_cell_subprocess(cell, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--cell", json.dumps(cell)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cell, "error": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-600:]
        return {**cell, "error": ("out of memory" if "memory" in tail.lower() else "failed") + ": " + tail}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**cell, **out, "process_seconds": time.perf_counter() - t0}


def default_plan(threads: int, full: bool = False):
    """The cells of docs/performance.md. ``full`` adds fused SDPA at 64k (tens of minutes on 2 cores)."""
    wopts = {"levels": 2, "num_features": 256}
    W = {"mixer": "wersa", "opts": wopts}
    cells = []
    for causal in (False, True):
        for n, reps in ((4096, 3), (16384, 3), (65536, 2)):
            cells.append({**W, "kind": "train", "causal": causal, "n": n, "reps": reps})
        cells.append({"mixer": "wersa", "opts": {**wopts, "fused": False}, "kind": "train", "causal": causal,
                      "n": 16384, "reps": 2})
        cells.append({"mixer": "performer", "opts": {"num_features": 256}, "kind": "train", "causal": causal,
                      "n": 16384, "reps": 3})
        cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 4096, "reps": 3})
        cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 16384, "reps": 2})
        cells.append({"kind": "core", "causal": causal, "n": 16384, "reps": 3})
        cells.append({"kind": "core", "causal": causal, "n": 16384, "fused": False, "reps": 2})
        cells.append({**W, "kind": "train", "causal": causal, "n": 131072, "reps": 1})
    cells.append({"mixer": "waveformer", "opts": {"levels": 3, "num_features": 256}, "kind": "train",
                  "causal": False, "n": 16384, "reps": 2})
    for n in (1024, 65536):
        cells.append({**W, "kind": "decode", "causal": True, "n": n})
        cells.append({"mixer": "sdpa", "kind": "decode", "causal": True, "n": n})
    cells.append({"mixer": "waveformer", "opts": {"levels": 3, "num_features": 256}, "kind": "train",
                  "causal": False, "n": 65536, "reps": 1})
    for causal in (False, True):  # quadratic baselines: minutes each
        cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 32768, "reps": 1})
    if full:
        for causal in (False, True):
            cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 65536, "reps": 1})
    for c in cells:
        c.setdefault("threads", threads)
    return cells


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", help="run one cell (JSON) in this process and print its result")
    p.add_argument("--plan", choices=["default", "full"], default="default")
    p.add_argument("--only", nargs="*", default=None, help="run only cells whose JSON contains all these substrings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", default=None, help="append results (JSON lines) to this file")
    args = p.parse_args(argv)
    if args.cell:
        cell = json.loads(args.cell)
        cell.setdefault("threads", args.threads)
        print(json.dumps(KINDS[cell["kind"]](cell)))
        return
    cells = default_plan(args.threads, full=args.plan == "full")
    if args.only:
        cells = [c for c in cells if all(s in json.dumps(c) for s in args.only)]
    for cell in cells:
        res = run_cell_subprocess(cell, args.timeout)
        line = json.dumps(res)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
