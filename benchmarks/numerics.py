"""bfloat16 numerics at length: forward + backward of every linear-time mixer at 64k/128k tokens.

For each cell (mixer, length) a fresh process builds the mixer in float32 (fixed
seed), runs the float32 forward as the reference, then casts the *same weights* to
bfloat16 and runs forward + backward on the *same input* rounded to bfloat16. It
records whether the output, the input gradient and every parameter gradient are
finite, and the error of the bfloat16 output against the float32 one:

* ``max_rel_err``  = max |y_bf16 - y_fp32| / max |y_fp32|  (error relative to the output scale)
* ``mean_rel_err`` = mean |y_bf16 - y_fp32| / mean |y_fp32|

Each cell runs under an address-space cap (``resource.RLIMIT_AS``, default 12 GB
on top of the interpreter) and a wall-clock limit; out-of-memory and timeouts are
recorded, never fatal. Results are appended to a JSON-lines file (resumable: cells
already in the file are skipped) and printed as a Markdown table.

    python benchmarks/numerics.py                       # the default plan (see PLAN)
    python benchmarks/numerics.py --mixers wersa --lengths 64k --timeout 240
    python benchmarks/numerics.py --table-only --out results/numerics.jsonl

Mode: the causal form where a mixer has one (language modelling), else the
bidirectional form. Mixers whose ``max_len`` is below the length are listed as
skipped. The defaults use B=1, dim=128, 2 heads and ``num_features=64`` for the
random-feature mixers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Small options where a mixer's default is sized for quality at a large width.
SMALL_OPTIONS = {
    "wersa": {"num_features": 64},
    "performer": {"num_features": 64},
    "waveformer": {"num_features": 64},
}
# 128k is measured only for these (the rest at 64k): CPU time is the limit.
LONG_MIXERS = ("wersa", "performer", "transnormer", "mamba")
DIM, HEADS, BATCH = 128, 2, 1


def _parse_len(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def _cell(name: str, length: int, seed: int) -> dict:
    """Run one cell in this process (the child, under the runner's memory cap). Returns the record."""
    import torch

    import wersa
    from wersa.bench.memory import is_oom

    caps = wersa.capabilities(name)
    causal = bool(caps.causal)
    rec = {"mixer": name, "length": length, "causal": causal, "dim": DIM, "heads": HEADS,
           "batch": BATCH, "options": SMALL_OPTIONS.get(name, {}), "threads": torch.get_num_threads()}
    try:
        torch.manual_seed(seed)
        m = wersa.build_mixer(name, dim=DIM, num_heads=HEADS, causal=causal, **rec["options"]).train()
        g = torch.Generator().manual_seed(seed + 1)
        x32 = torch.randn(BATCH, length, DIM, generator=g).to(torch.bfloat16).float()  # exactly representable in bf16
        t0 = time.perf_counter()
        with torch.no_grad():
            y32 = m(x32)
        rec["fp32_forward_s"] = round(time.perf_counter() - t0, 2)
        rec["fp32_finite"] = bool(torch.isfinite(y32).all())
        m = m.to(torch.bfloat16)
        x = x32.to(torch.bfloat16).requires_grad_(True)
        t0 = time.perf_counter()
        y = m(x)
        r = torch.randn(y.shape, generator=g).to(torch.bfloat16)
        (y * r).float().sum().backward()
        rec["bf16_fwd_bwd_s"] = round(time.perf_counter() - t0, 2)
        yf = y.detach().float()
        rec["out_finite"] = bool(torch.isfinite(yf).all())
        rec["grad_x_finite"] = x.grad is not None and bool(torch.isfinite(x.grad.float()).all())
        rec["grad_params_finite"] = all(bool(torch.isfinite(p.grad.float()).all())
                                        for p in m.parameters() if p.grad is not None)
        diff = (yf - y32).abs()
        ref = y32.abs()
        rec["max_rel_err"] = float(diff.max() / ref.max().clamp_min(1e-30))
        rec["mean_rel_err"] = float(diff.mean() / ref.mean().clamp_min(1e-30))
        rec["status"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - every failure is a result
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec["status"] = "oom" if is_oom(exc) else "error"
        rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return rec


def measure_cell(spec: dict) -> dict:
    """Entry point of one isolated cell (:func:`wersa.bench.cell.run_cell`); the cap is the runner's."""
    return _cell(spec["mixer"], spec["length"], spec["seed"])


def _run_isolated(name: str, length: int, mem_gb: float, timeout: float, seed: int, threads: int) -> dict:
    from wersa.bench.cell import run_cell

    spec = {"mixer": name, "length": length, "seed": seed}
    rec = run_cell(f"{os.path.abspath(__file__)}:measure_cell", spec, timeout_s=timeout, threads=threads,
                   mem_limit_bytes=int(mem_gb * 1024**3) if mem_gb > 0 else None)
    return {"mixer": name, "length": length, **rec, "wall_s": round(rec["wall_s"], 1)}


def plan(mixers: list[str] | None, lengths: list[int] | None) -> list[tuple[str, int]]:
    import wersa

    names = mixers or [n for n in wersa.list_mixers() if wersa.capabilities(n).linear_time]
    cells = []
    for length in lengths or [64 * 1024, 128 * 1024]:
        for n in names:
            if lengths is None and length > 64 * 1024 and n not in LONG_MIXERS:
                continue
            cells.append((n, length))
    return cells


def table(records: list[dict]) -> str:
    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    def yn(v):
        return "" if v is None else ("yes" if v else "**NO**")

    rows = ["| mixer | length | mode | status | out finite | grads finite | max rel err | mean rel err "
            "| fp32 fwd s | bf16 fwd+bwd s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["length"], r["mixer"])):
        grads = None
        if "grad_x_finite" in r:
            grads = r["grad_x_finite"] and r["grad_params_finite"]
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')[:60]}"
        mode = "" if "causal" not in r else ("causal" if r["causal"] else "bidir")
        rows.append(f"| {r['mixer']} | {r['length'] // 1024}k | {mode} | {status} | {yn(r.get('out_finite'))} "
                    f"| {yn(grads)} | {fmt(r.get('max_rel_err'), '.2e')} | {fmt(r.get('mean_rel_err'), '.2e')} "
                    f"| {fmt(r.get('fp32_forward_s'), '.1f')} | {fmt(r.get('bf16_fwd_bwd_s'), '.1f')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixers", help="comma-separated mixers [default: every linear-time mixer]")
    p.add_argument("--lengths", help="comma-separated lengths, 1k = 1024 [default: 64k all, 128k for "
                                     + ", ".join(LONG_MIXERS) + "]")
    p.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space cap per cell (0 = none)")
    p.add_argument("--timeout", type=float, default=240.0, help="wall-clock limit per cell, seconds")
    p.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/numerics.jsonl", help="results file (JSON lines, resumable)")
    p.add_argument("--table-only", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    records = []
    if out.exists():
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip().startswith("{")]
    if not args.table_only:
        import wersa

        mixers = args.mixers.split(",") if args.mixers else None
        lengths = [_parse_len(t) for t in args.lengths.split(",")] if args.lengths else None
        done = {(r["mixer"], r["length"]) for r in records}
        for name, length in plan(mixers, lengths):
            if (name, length) in done:
                continue
            max_len = wersa.capabilities(name).max_len
            if max_len is not None and length > max_len:
                rec = {"mixer": name, "length": length, "status": "skipped",
                       "error": f"max_len={max_len} < length"}
            else:
                print(f"{name} @ {length}...", file=sys.stderr, flush=True)
                rec = _run_isolated(name, length, args.mem_limit_gb, args.timeout, args.seed, args.threads)
            records.append(rec)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
