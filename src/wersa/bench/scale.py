"""How time and memory grow with sequence length: ``wersa scale``.

For each mixer and length, one isolated process (:mod:`.cell`) builds the mixer
alone (no model around it), runs ``warmup`` untimed passes then ``repeats`` timed
ones, and records the median forward time, the median forward+backward time and
the peak memory of each (what the pass adds on top of the input). An
out-of-memory or a time-out is recorded as such, and longer lengths of that
mixer are then skipped (they would only fail slower). The log-log plot of time
against length shows linear mechanisms with slope ~1 and exact attention with
slope ~2.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

import torch

from . import adapters
from .env import environment
from .memory import PeakMemory, is_oom
from .results import append_result, cell_key, finished_keys, read_results


def measure(mixer: str, length: int, dim: int = 256, num_heads: int = 4, batch_size: int = 1,
            causal: bool = False, options: dict[str, Any] | None = None, warmup: int = 1, repeats: int = 3,
            device: str = "cpu", dtype: str = "float32", threads: int | None = None, seed: int = 0,
            plugins: list[str] | None = None, backward: bool = True, count_flops: bool = True) -> dict[str, Any]:
    """Time and memory of mixer ``mixer`` on ``x: (batch_size, length, dim)``.

    Returns ``fwd_time_s`` / ``fwdbwd_time_s`` (median seconds per pass),
    ``fwd_peak_bytes`` / ``fwdbwd_peak_bytes``, ``flops_forward``, ``params``, ``regime``
    (the computation the mixer ran at this length, for mixers that expose ``regime(n)``),
    ``flops_time_s`` (time spent counting FLOPs) and ``env``.
    A forward that runs out of memory raises (the caller records ``oom``); a
    backward that does is recorded as ``fwdbwd_status="oom"`` with the forward kept.
    """
    adapters.load_plugins(plugins)
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    dt = getattr(torch, dtype)
    torch.manual_seed(seed)
    m = adapters.build_mixer(mixer, dim, num_heads, causal=causal, **(options or {})).to(dev, dt)
    m.check_finite = False  # the scan is a validation cost, not the mechanism's
    x = torch.randn(batch_size, length, dim, device=dev, dtype=dt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rec: dict[str, Any] = {"params": sum(p.numel() for p in m.parameters()),
                           "regime": adapters.mixer_regime(m, length)}
    # Forward (inference: no autograd graph kept).
    peak = PeakMemory(dev)
    times = []
    peak.start()
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            y = m(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            del y
    rec.update(fwd_time_s=statistics.median(times), fwd_times_s=times, fwd_peak_bytes=peak.peak_bytes())
    if count_flops:
        from .flops import count_flops as _count

        t0 = time.perf_counter()
        with torch.no_grad():
            rec["flops_forward"] = _count(lambda: m(x))
        rec["flops_time_s"] = time.perf_counter() - t0
    if backward:
        xg = x.detach().requires_grad_(True)
        peak = PeakMemory(dev)
        times = []
        try:
            peak.start()
            for i in range(warmup + repeats):
                sync()
                t0 = time.perf_counter()
                m(xg).square().mean().backward()
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                m.zero_grad(set_to_none=True)
                xg.grad = None
            rec.update(fwdbwd_status="ok", fwdbwd_time_s=statistics.median(times), fwdbwd_times_s=times,
                       fwdbwd_peak_bytes=peak.peak_bytes())
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            rec.update(fwdbwd_status="oom", fwdbwd_error=f"{type(exc).__name__}: {str(exc)[:200]}")
    rec["env"] = environment(dev)
    return rec


def measure_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of an isolated scale cell (:func:`wersa.bench.cell.run_cell`): :func:`measure` of ``spec``."""
    return measure(**spec)


def scale_specs(mixers: Iterable[str], lengths: Iterable[int], **common: Any) -> list[dict[str, Any]]:
    """One measurement spec per (mixer, length), mixers outermost, lengths ascending."""
    return [{"mixer": m, "length": int(n), **common} for m in mixers for n in sorted(lengths)]


def run_scale(mixers: list[str], lengths: list[int], out: str, *, dim: int = 256, num_heads: int = 4,
              batch_size: int = 1, causal: bool = False, device: str = "cpu", threads: int | None = None,
              warmup: int = 1, repeats: int = 3, mem_limit_gb: float | None = 8.0, timeout_s: float = 300.0,
              mixer_options: dict[str, dict[str, Any]] | None = None, plugins: list[str] | None = None,
              retry_failed: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every (mixer, length) in isolation, appending one record each to ``out`` (JSON lines).

    Resumable: records already in ``out`` (same key) are skipped. After an ``oom`` or
    ``timeout`` the longer lengths of that mixer are recorded as ``skipped``.
    """
    from tqdm.auto import tqdm

    from .cell import run_cell

    adapters.load_plugins(plugins)
    mixer_options = mixer_options or {}
    for name in mixers:
        adapters.check_mixer(name)
    # A mixer without the requested form is left out (the capabilities of the instance
    # with these options say so), not run to fail.
    form = "causal" if causal else "bidirectional"
    caps = {name: adapters.mixer_capabilities(name, causal=causal, **mixer_options.get(name, {})) for name in mixers}
    mixers = [name for name in mixers if getattr(caps[name], form)]
    mem = int(mem_limit_gb * 1024 ** 3) if mem_limit_gb else None
    limits = {"mem_limit_bytes": mem, "timeout_s": timeout_s, "threads": threads}
    specs = scale_specs(mixers, lengths, dim=dim, num_heads=num_heads, batch_size=batch_size, causal=causal,
                        device=device, threads=threads, warmup=warmup, repeats=repeats, plugins=list(plugins or []))
    keys = []
    for spec in specs:
        spec["options"] = dict(mixer_options.get(spec["mixer"], {}))
        key_spec = {k: v for k, v in spec.items() if k not in ("threads", "plugins")}
        keys.append(cell_key({"bench": "scale", **key_spec}, limits))
    done_records = read_results(out)
    done = finished_keys(done_records, retry_failed=retry_failed)
    # Only failures of these very cells (same config, limits and code) skip the longer lengths.
    failed_at: dict[str, str] = {}
    for rec in done_records:
        if rec.get("key") in keys and rec["key"] in done and rec.get("status") in ("oom", "timeout"):
            failed_at[rec["mixer"]] = f"{rec['status']} at length {rec.get('length')}"
    new = []
    bar = tqdm(list(zip(specs, keys)), desc="scale", disable=not progress, dynamic_ncols=True)
    for spec, key in bar:
        bar.set_postfix_str(f"{spec['mixer']} N={spec['length']}")
        if key in done:
            continue
        base = {"bench": "scale", "key": key, "mixer": spec["mixer"], "length": spec["length"], "config": spec,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        max_len = caps[spec["mixer"]].max_len
        if spec["mixer"] in failed_at:
            rec = {**base, "status": "skipped", "reason": f"longer than a failed length ({failed_at[spec['mixer']]})"}
        elif max_len is not None and spec["length"] > max_len:
            rec = {**base, "status": "skipped", "reason": f"longer than the mixer's max_len={max_len}"}
        else:
            # One cell at a time: the OpenMP runtime's default wait policy, as for cost cells.
            res = run_cell("wersa.bench.scale:measure_cell", spec, mem_limit_bytes=mem, timeout_s=timeout_s,
                           threads=threads, omp_wait_policy=None)
            rec = {**base, **res}
            if rec["status"] in ("oom", "timeout"):
                failed_at[spec["mixer"]] = f"{rec['status']} at length {spec['length']}"
        append_result(out, rec)
        new.append(rec)
        tqdm.write(_scale_line(rec)) if progress else None
    return new


def _scale_line(rec: dict[str, Any]) -> str:
    head = f"{rec['mixer']:>12} N={rec['length']:>7}"
    if rec["status"] != "ok":
        return f"{head}  {rec['status'].upper()}  {rec.get('error') or rec.get('reason') or ''}"[:160]
    bwd = (f"fwd+bwd {rec['fwdbwd_time_s'] * 1e3:9.1f} ms {rec['fwdbwd_peak_bytes'] / 2**20:8.1f} MiB"
           if rec.get("fwdbwd_status") == "ok" else f"fwd+bwd {rec.get('fwdbwd_status', '-').upper()}")
    return f"{head}  fwd {rec['fwd_time_s'] * 1e3:9.1f} ms {rec['fwd_peak_bytes'] / 2**20:8.1f} MiB  {bwd}"
