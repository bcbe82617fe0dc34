"""Speed and memory of WERSA against its peers, one fresh process per measurement.

Usage::

    python benchmarks/performance.py --out perf.json              # the cells of docs/performance.md
    python benchmarks/performance.py --plan full --out perf.json  # plus fused SDPA at 64k (slow)
    python benchmarks/performance.py --plan quick --out perf.json # the cells up to 16k tokens, decoding, generate()
    python benchmarks/performance.py --cell '{"kind": "train", "mixer": "wersa", "causal": false, "n": 16384}'

Cells (each runs in its own subprocess, so allocator caches and peak-RSS marks of
one measurement never leak into another):

* ``train``: one mixer, ``x`` of shape ``(1, n, dim)``, forward + backward of
  ``y.square().mean()``; median wall time of ``reps`` repetitions, and the peak
  resident memory of the first repetition above the resident size measured just
  before it (model and input already allocated).
* ``decode``: prefill ``n`` tokens (no grad), then ``steps`` single-token ``step``
  calls; median seconds per token. ``"compile_step": true`` runs the step through
  ``torch.compile`` (:meth:`wersa.mixers.Mixer.compile_step`); the warm-up steps, which
  compile, are timed apart (``warmup_seconds``).
* ``generate``: ``WersaForCausalLM.generate()`` end to end (greedy, batch 1) for a
  ``layers``-layer model of width ``dim``: an ``n``-token prompt then ``new`` tokens. A
  logits processor timestamps every generated token and records the resident memory
  (``VmRSS``): decoding speed is ``new - 1`` tokens from the first to the last stamp
  (the prompt's prefill excluded), flat memory means equal ``VmRSS`` at the first and
  the last token (the cache's tensor bytes are recorded too). ``"compile_step": true`` builds the
  model with ``WersaConfig(compile_step=True)``; the warm-up generation compiles.
* ``core``: the attention core alone (:func:`wersa.ops.favor_attention.favor_attention`,
  or the unfused composition), forward + backward, FLOPs counted by
  ``torch.utils.flop_counter`` and the fp32 GEMM rate of this machine measured in
  the same process (a 2048^3 ``matmul``).

Threads are pinned (``torch.set_num_threads``) and recorded with each result.
Nothing here asserts on time: results are data for ``docs/performance.md``.

``--malloc retain`` runs the cells with glibc's allocator told to keep freed memory
(``MALLOC_MMAP_MAX_=0``, a huge ``MALLOC_TRIM_THRESHOLD_``; each cell records
``"malloc": "retain"``). By default glibc serves every allocation above 32 MiB (a
``(16k, 512)`` float tensor) with a fresh ``mmap`` and returns it on free, so every
large temporary costs one page fault per 4 KiB page, again on every pass. Retaining
trades that for a higher resident peak (freed blocks stay mapped; the peak-memory
figures of such cells are not the library's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    times, cpus, peak, info, hwm = [], [], None, None, None
    # Rep 0 measures peak memory; with "warmup" (default) it is not timed either: the
    # first pass pays one-off costs (allocator growth, page faults, kernel setup).
    warm = 1 if cell.get("warmup", True) else 0
    for rep in range(cell.get("reps", 3) + warm):
        model.zero_grad(set_to_none=True)
        x.grad = None
        if rep == 0:
            mem = PeakMemory("cpu")
            mem.start()
        t0, c0 = time.perf_counter(), time.process_time()
        y = model(x)
        y.square().mean().backward()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if rep == 0:
            peak, info, hwm = mem.peak_bytes(), mem.info(), _vm_hwm()
            first, first_cpu = elapsed, cpu
        if rep >= warm:
            times.append(elapsed)
            cpus.append(cpu)
        del y
    if not times:  # reps == 0: the (untimed-warm-up) memory pass is the only measurement
        times, cpus = [first], [first_cpu]
    return {"seconds": statistics.median(times), "all_seconds": times, "first_seconds": first,
            "cpu_seconds": statistics.median(cpus), "all_cpu_seconds": cpus,
            "peak_bytes": peak, "absolute_hwm_bytes": hwm, "memory": info}


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
    if cell.get("compile_step"):
        model.compile_step()
    n, steps = cell["n"], cell.get("steps", 32)
    with torch.no_grad():
        _, state = model.prefill(torch.randn(1, n, cell.get("dim", 512)))
        x = torch.randn(1, cell.get("dim", 512))
        t0 = time.perf_counter()
        # warm-up; compiled steps recompile once when a growing cache's length turns dynamic
        for _ in range(6 if cell.get("compile_step") else 3):
            _, state = model.step(x, state)
        warmup_seconds = time.perf_counter() - t0
        per, per_cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            _, state = model.step(x, state)
            per.append(time.perf_counter() - t0)
            per_cpu.append(time.process_time() - c0)
    return {"seconds_per_token": statistics.median(per), "cpu_seconds_per_token": statistics.median(per_cpu),
            "steps": steps, "warmup_seconds": warmup_seconds}


def _vm(key):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def _tensor_bytes(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def run_generate(cell):
    torch = _setup(cell["threads"])
    from transformers import LogitsProcessor, LogitsProcessorList

    from wersa.models import WersaConfig, WersaForCausalLM

    torch.manual_seed(0)
    dim, n, new = cell.get("dim", 512), cell["n"], cell.get("new", 256)
    cfg = WersaConfig(mixer=cell["mixer"], mixer_options=cell.get("opts", {}), vocab_size=256, hidden_size=dim,
                      num_hidden_layers=cell.get("layers", 2), num_attention_heads=cell.get("heads", 8),
                      position_embedding_type="sinusoidal", max_position_embeddings=None,
                      compile_step=bool(cell.get("compile_step")))
    lm = WersaForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, n))
    trace = []

    class Probe(LogitsProcessor):  # called once per generated token, after that token's forward
        def __call__(self, input_ids, scores):
            trace.append((time.perf_counter(), time.process_time(), _vm("VmRSS")))
            return scores

    def gen(prompt, count):
        trace.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        out = lm.generate(prompt, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0,
                          logits_processor=LogitsProcessorList([Probe()]), return_dict_in_generate=True)
        return t0, c0, time.perf_counter() - t0, time.process_time() - c0, out

    with torch.no_grad():
        warmup_seconds = gen(ids[:, :64], 4)[2]  # warm-up (a compiled step compiles here)
    t0, c0, full, full_cpu, out = gen(ids, new)
    (w1, c1, rss1), (wl, cl, rssl) = trace[0], trace[-1]
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return {"seconds_to_first_token": w1 - t0, "cpu_seconds_to_first_token": c1 - c0,
            "seconds": full, "cpu_seconds": full_cpu,
            # decoding alone, from the probe's timestamps (first to last generated token)
            "decode_tokens_per_s": (new - 1) / (wl - w1), "decode_tokens_per_cpu_s": (new - 1) / (cl - c1),
            # end to end: prefill of the prompt included
            "tokens_per_s": new / full, "rss_first_token_bytes": rss1, "rss_last_token_bytes": rssl,
            "cache_bytes_after": _tensor_bytes(getattr(cache, "states", None)) if cache is not None else None,
            "new": new, "warmup_seconds": warmup_seconds}


def run_core(cell):
    torch = _setup(cell["threads"])
    from torch.utils.flop_counter import FlopCounterMode

    from wersa.bench.flops import register_extra_flop_formulas
    from wersa.ops.favor_attention import favor_attention, favor_attention_reference

    register_extra_flop_formulas()  # the core's in-place accumulating matmuls (baddbmm_) count too

    B, H, n, d, m = 1, cell.get("heads", 8), cell["n"], cell.get("head_dim", 64), cell.get("m", 256)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, generator=g).requires_grad_(True) for _ in range(3))
    omega = torch.randn(H, m, d, generator=g)
    bw = torch.ones(H, requires_grad=True)
    fn = favor_attention if cell.get("recompute", True) else favor_attention_reference

    extra = {"chunk_size": cell["chunk_size"]} if "chunk_size" in cell else {}

    def step():
        y = fn(q, k, v, omega, bw, causal=cell["causal"], **extra)
        y.backward(torch.ones_like(y))

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times, cpus = [], []
    for _ in range(cell.get("reps", 3)):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm, gemm_cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        gemm.append(2 * 2048 ** 3 / (time.perf_counter() - t0))
        gemm_cpu.append(2 * 2048 ** 3 / (time.process_time() - c0))
    sec, cpu = statistics.median(times), statistics.median(cpus)
    rate, rate_cpu = max(gemm), max(gemm_cpu)  # the machine's best case in this run
    return {"seconds": sec, "all_seconds": times, "cpu_seconds": cpu, "flops": flops,
            "gflops_per_s": flops / sec / 1e9, "gemm_gflops_per_s": rate / 1e9, "gemm_all": [r / 1e9 for r in gemm],
            "fraction_of_gemm": flops / sec / rate,
            # per CPU-second (both threads busy = 2 CPU-seconds per second): robust to other load
            "gflops_per_cpu_s": flops / cpu / 1e9, "gemm_gflops_per_cpu_s": rate_cpu / 1e9,
            "fraction_of_gemm_cpu": (flops / cpu) / rate_cpu}


def run_gemm(cell):
    """A ``size^3`` matmul in float32 and in bfloat16, median of ``reps``: is bf16 a lever here?"""
    torch = _setup(cell["threads"])
    size, out = cell.get("size", 2048), {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        walls, cpus = [], []
        for _ in range(cell.get("reps", 3)):
            t0, c0 = time.perf_counter(), time.process_time()
            a @ b
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[name] = {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
                     "gflops_per_s": 2 * size ** 3 / statistics.median(walls) / 1e9}
    out["bf16_over_fp32_seconds"] = out["bfloat16"]["seconds"] / out["float32"]["seconds"]
    out["bf16_over_fp32_cpu_seconds"] = out["bfloat16"]["cpu_seconds"] / out["float32"]["cpu_seconds"]
    return out


KINDS = {"train": run_train, "decode": run_decode, "generate": run_generate, "core": run_core,
         "gemm": run_gemm}


def measure_cell(cell):
    """Entry point of one isolated cell (:func:`wersa.bench.cell.run_cell`)."""
    return KINDS[cell["kind"]](cell)


# glibc: no mmap-served allocations (which are unmapped on free) and no trimming of the heap top.
RETAIN_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 36)}


def run_isolated_cell(cell, timeout, omp_wait_policy=None):
    """``cell`` in a fresh process (load, threads and OpenMP wait policy recorded); failures carry ``error``."""
    from wersa.bench.cell import run_cell

    res = run_cell(f"{os.path.abspath(__file__)}:measure_cell", cell, timeout_s=timeout, threads=cell["threads"],
                   omp_wait_policy=omp_wait_policy)
    return {**cell, **res, "process_seconds": res["wall_s"]}


def default_plan(threads: int, full: bool = False, quick: bool = False):
    """The cells of docs/performance.md, most important first. ``full`` adds fused SDPA at 64k (slow);
    ``quick`` keeps the cells up to 16k tokens."""
    wopts = {"levels": 2, "num_features": 256}
    W = {"mixer": "wersa", "opts": wopts}
    cells = []
    for causal in (False, True):
        cells.append({**W, "kind": "train", "causal": causal, "n": 4096, "reps": 2})
        cells.append({**W, "kind": "train", "causal": causal, "n": 16384, "reps": 1})
        cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 16384, "reps": 1, "warmup": False})
        cells.append({"mixer": "performer", "opts": {"num_features": 256}, "kind": "train", "causal": causal,
                      "n": 16384, "reps": 1})
        cells.append({"kind": "core", "causal": causal, "n": 16384, "reps": 1})
    # decoding, eager and through torch.compile (Mixer.compile_step), both mechanisms
    for n in (1024, 65536):
        for compiled in (False, True):
            extra = {"compile_step": True} if compiled else {}
            cells.append({**W, "kind": "decode", "causal": True, "n": n, "steps": 32, **extra})
            cells.append({"mixer": "sdpa", "kind": "decode", "causal": True, "n": n, "steps": 32, **extra})
    # generate() end to end, 2 layers: a 16k prompt (fused SDPA's 64k prefill takes many minutes here)
    for compiled in (False, True):
        extra = {"compile_step": True} if compiled else {}
        for mixer, opts in (("wersa", wopts), ("sdpa", {})):
            cells.append({"mixer": mixer, "opts": opts, "kind": "generate", "causal": True, "n": 16384, "new": 256,
                          **extra})
    for chunk in (128, 256):  # the causal core's chunk size (64 is the default, above)
        cells.append({"kind": "core", "causal": True, "n": 16384, "reps": 1, "chunk_size": chunk})
    cells.append({"kind": "gemm", "causal": False, "size": 2048, "reps": 3})
    for causal in (False, True):
        cells.append({**W, "kind": "train", "causal": causal, "n": 65536, "reps": 3})
        # 128k: the memory pass, then one timed pass (the first pass pays first-touch costs)
        cells.append({**W, "kind": "train", "causal": causal, "n": 131072, "reps": 1})
        cells.append({"mixer": "wersa", "opts": {**wopts, "recompute_gates": True}, "kind": "train",
                      "causal": causal, "n": 131072, "reps": 1})
    # The paper's Waveformer (per band, own weights): FAVOR+ in every band (the official block's
    # default) at 16k and 128k, and exact softmax attention in every band at 16k.
    for n, attention in ((16384, "performer"), (131072, "performer"), (16384, "softmax")):
        opts = {"levels": 3, "num_features": 256} if attention == "performer" else {"levels": 3, "attention": attention}
        cells.append({"mixer": "waveformer", "opts": opts, "kind": "train", "causal": False, "n": n, "reps": 1})
    for causal in (False, True):
        cells.append({"mixer": "wersa", "opts": {**wopts, "recompute": False}, "kind": "train", "causal": causal,
                      "n": 16384, "reps": 1})
        cells.append({"kind": "core", "causal": causal, "n": 16384, "recompute": False, "reps": 1})
    # Performer's plain autograd path beside its default (the memory-lean core, bidirectional).
    cells.append({"mixer": "performer", "opts": {"num_features": 256, "recompute": False}, "kind": "train",
                  "causal": False, "n": 16384, "reps": 1})
    if quick:  # up to 16k tokens, 3 timed passes (1 for SDPA), memory-lean paths only: minutes, not hours
        cells = [{**c, "reps": max(c.get("reps", 3), 3)} if c["kind"] in ("train", "core") and c.get("mixer") != "sdpa" else c
                 for c in cells if c.get("n", 0) <= 16384 and c.get("opts", {}).get("recompute", True) and c.get("recompute", True)
                 and c.get("mixer") != "waveformer"]
    if full:
        for causal in (False, True):
            cells.append({"mixer": "sdpa", "kind": "train", "causal": causal, "n": 65536, "reps": 1,
                          "warmup": False})
        for mixer, opts in (("wersa", wopts), ("sdpa", {})):  # the target's 64k prompt
            cells.append({"mixer": mixer, "opts": opts, "kind": "generate", "causal": True, "n": 65536, "new": 256})
    for c in cells:
        c.setdefault("threads", threads)
    return cells


def _find(rows, **want):
    for r in rows:
        if "error" not in r and all(r.get(k) == v or (k == "recompute" and r.get("opts", {}).get("recompute", True) == v)
                                    for k, v in want.items()):
            return r
    return None


def report(path):
    """Print the targets table of docs/performance.md from a results file (JSON lines)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    default_gates = [r for r in rows if not r.get("opts", {}).get("recompute_gates")]
    recomputed_gates = [r for r in rows if r.get("opts", {}).get("recompute_gates")]
    W = lambda causal, n, recompute=True: _find(default_gates, kind="train", mixer="wersa", causal=causal, n=n,
                                                recompute=recompute)
    S = lambda causal, n: _find(rows, kind="train", mixer="sdpa", causal=causal, n=n)
    GiB = 2 ** 30

    def ratio(a, b, key):
        return None if a is None or b is None else b[key] / a[key]

    def fmt(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    policies = sorted({str(r.get("omp_wait_policy")) for r in rows})
    print(f"OpenMP wait policy of the cells: {', '.join(policies)}; threads: "
          f"{', '.join(sorted({str(r.get('threads')) for r in rows}))}; malloc: "
          f"{', '.join(sorted({r.get('malloc', 'default') for r in rows}))}")
    print()
    print("| cell | wall s | CPU s | peak above baseline GiB |")
    print("|---|---|---|---|")
    for r in rows:
        if r.get("kind") != "train":
            continue
        opts = r.get("opts", {})
        name = f"{r['mixer']}{'' if opts.get('recompute', True) else ' (recompute=False)'}" \
               f"{' (' + opts['attention'] + ' bands)' if 'attention' in opts else ''}" \
               f"{' (recompute_gates)' if opts.get('recompute_gates') else ''} " \
               f"{'causal' if r['causal'] else 'bidir'} {r['n'] // 1024}k"
        if "error" in r:
            print(f"| {name} | {r['error'][:40]} | | |")
            continue
        print(f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['peak_bytes'] / GiB:.2f} |")
    print()
    for causal in (False, True):
        mode = "causal" if causal else "bidir"
        for n in (16384, 65536):
            for key in ("seconds", "cpu_seconds"):
                print(f"speed-up vs sdpa {mode} {n // 1024}k ({key}): {fmt(ratio(W(causal, n), S(causal, n), key))}")
        for key in ("seconds", "cpu_seconds"):
            a, b = W(causal, 4096), W(causal, 65536)
            print(f"time 64k/4k {mode} ({key}): {fmt(ratio(a, b, key))}")
        a, b = W(causal, 4096), W(causal, 65536)
        print(f"memory 64k/4k {mode}: {fmt(ratio(a, b, 'peak_bytes'))}")
        for label, r in (("", W(causal, 131072)),
                         (" (recompute_gates)", _find(recomputed_gates, kind="train", mixer="wersa", causal=causal,
                                                      n=131072))):
            print(f"peak 128k {mode}{label}: {fmt(None if r is None else r['peak_bytes'] / GiB)} GiB above baseline, "
                  f"{fmt(None if r is None else r['absolute_hwm_bytes'] / GiB)} GiB absolute")
        print(f"memory 64k wersa/sdpa {mode}: {fmt(ratio(S(causal, 65536), W(causal, 65536), 'peak_bytes'))}")
        p = _find(rows, kind="train", mixer="performer", causal=causal, n=16384)
        for key in ("seconds", "cpu_seconds"):
            print(f"wersa/performer {mode} 16k ({key}): {fmt(ratio(p, W(causal, 16384), key))}")
        c = _find(rows, kind="core", causal=causal, n=16384, recompute=True)
        if c:
            print(f"core {mode} 16k: {c['flops'] / 1e9:.1f} GFLOP, {c['fraction_of_gemm']:.2f} of GEMM (wall), "
                  f"{c['fraction_of_gemm_cpu']:.2f} (CPU time)")
    for wf in (r for r in rows if r.get("kind") == "train" and r.get("mixer") == "waveformer" and "error" not in r):
        bands = wf.get("opts", {}).get("attention", "performer")
        for key in ("seconds", "cpu_seconds"):
            print(f"waveformer ({bands} bands)/wersa bidir {wf['n'] // 1024}k ({key}): "
                  f"{fmt(ratio(W(False, wf['n']), wf, key))}")
    for g in rows:
        if g.get("kind") == "generate" and "error" not in g:
            mixer = g["mixer"] + (" (compile_step)" if g.get("compile_step") else "")
            print(f"generate {mixer} {g['n'] // 1024}k prompt + {g['new']}: {g['decode_tokens_per_s']:.1f} tokens/s "
                  f"({g['decode_tokens_per_cpu_s']:.1f} per CPU s), first token after {g['seconds_to_first_token']:.1f} s, "
                  f"VmRSS first/last token {g['rss_first_token_bytes'] / 2**20:.1f}/{g['rss_last_token_bytes'] / 2**20:.1f} MiB, "
                  f"cache {g['cache_bytes_after'] / 2**20:.2f} MiB")
    for r in rows:
        if r.get("kind") == "core" and "chunk_size" in r and "error" not in r:
            print(f"core causal 16k chunk {r['chunk_size']}: {r['seconds']:.2f} s, {r['cpu_seconds']:.2f} CPU s")
        if r.get("kind") == "gemm" and "error" not in r:
            print(f"gemm {r['size']}^3: bf16/fp32 time {r['bf16_over_fp32_seconds']:.1f} (CPU {r['bf16_over_fp32_cpu_seconds']:.1f})")
    for mixer in ("wersa", "sdpa"):
        for compiled in (False, True):
            d1, d64 = (_find(rows, kind="decode", mixer=mixer, n=n, compile_step=True if compiled else None)
                       for n in (1024, 65536))
            if d1 is None and d64 is None:
                continue
            label = mixer + (" (compile_step)" if compiled else "")
            for key in ("seconds_per_token", "cpu_seconds_per_token"):
                print(f"decode {label} per token 1k / 64k ({key}): {fmt(d1 and d1[key] * 1e3, '.3f')} ms / "
                      f"{fmt(d64 and d64[key] * 1e3, '.3f')} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", help="run one cell (JSON) in this process and print its result")
    p.add_argument("--plan", choices=["default", "full", "quick"], default="default")
    p.add_argument("--only", nargs="*", default=None, help="run only cells whose JSON contains all these substrings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--omp-wait-policy", choices=["default", "PASSIVE", "ACTIVE"], default="default",
                   help="OMP_WAIT_POLICY of the cell processes: 'default' leaves the OpenMP runtime's own "
                        "(what a user's process gets; measure on an idle machine), PASSIVE for a shared one")
    p.add_argument("--malloc", choices=["default", "retain"], default="default",
                   help="glibc allocator of the cell processes: 'retain' keeps freed memory mapped "
                        "(fewer page faults, higher resident peak; see the module docstring)")
    p.add_argument("--out", default=None, help="append results (JSON lines) to this file")
    p.add_argument("--report", default=None, help="print the summary of a results file and exit")
    args = p.parse_args(argv)
    if args.report:
        report(args.report)
        return
    if args.cell:
        cell = json.loads(args.cell)
        cell.setdefault("threads", args.threads)
        print(json.dumps(KINDS[cell["kind"]](cell)))
        return
    cells = default_plan(args.threads, full=args.plan == "full", quick=args.plan == "quick")
    if args.only:
        cells = [c for c in cells if all(s in json.dumps(c) for s in args.only)]
    if args.malloc == "retain":  # read by glibc when each cell's process starts
        os.environ.update(RETAIN_MALLOC_ENV)
        cells = [{**c, "malloc": "retain"} for c in cells]
    for cell in cells:
        res = run_isolated_cell(cell, args.timeout, None if args.omp_wait_policy == "default" else args.omp_wait_policy)
        line = json.dumps(res)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
