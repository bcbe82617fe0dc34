"""Check the GPU paths of every mixer and measure them (one short run on a CUDA machine).

    PYTHONPATH=src python benchmarks/gpu_check.py --out docs/gpu   # writes gpu.json and gpu.md

1. Every registered mixer, every mode: forward + backward on CUDA in float32 and
   bfloat16 (finite), the CUDA float32 output against the CPU output of the same
   weights, causality by perturbation on the GPU, ``step`` == parallel on the GPU.
2. ``sdpa`` runs under the FlashAttention backend alone (bf16, causal, no mask).
3. Scaling: forward+backward time and peak memory of wersa (bidirectional and
   causal), performer, sdpa and softmax from 4k to 128k tokens (B=1, 8 heads of
   64, m=256, L=2), out-of-memory recorded as OOM.
4. Decoding: per-token ``step`` time of wersa vs the sdpa KV cache at 1k and 64k context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

import wersa


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_mixers(dev):
    rows = []
    D, H = 256, 4
    for name in wersa.list_mixers():
        caps = wersa.capabilities(name)
        for causal in [c for c in (False, True) if (caps.causal if c else caps.bidirectional)]:
            row = {"mixer": name, "mode": "causal" if causal else "bidir"}
            try:
                torch.manual_seed(0)
                cpu = wersa.build_mixer(name, dim=D, num_heads=H, causal=causal).eval()
                gpu = wersa.build_mixer(name, dim=D, num_heads=H, causal=causal).eval()
                gpu.load_state_dict(cpu.state_dict())
                gpu = gpu.to(dev)
                x = torch.randn(2, 1000, D)
                with torch.no_grad():
                    yc, yg = cpu(x), gpu(x.to(dev)).cpu()
                row["cpu_vs_cuda_rel"] = float((yc - yg).norm() / yc.norm().clamp_min(1e-12))
                for dtype in (torch.float32, torch.bfloat16):
                    m = gpu.to(dtype).train()
                    xi = torch.randn(2, 2048, D, device=dev, dtype=dtype, requires_grad=True)
                    m(xi).float().square().mean().backward()
                    row[f"finite_grad_{str(dtype)[6:]}"] = bool(torch.isfinite(xi.grad.float()).all())
                    m.zero_grad(set_to_none=True)
                gpu = gpu.float().eval()
                if causal:
                    xg = torch.randn(1, 300, D, device=dev)
                    x2 = xg.clone()
                    x2[:, 150:] += 3.0
                    with torch.no_grad():
                        row["causal_leak"] = float((gpu(x2)[:, :150] - gpu(xg)[:, :150]).abs().max())
                    if caps.recurrent:
                        with torch.no_grad():
                            y = gpu(xg[:, :64])
                            s = gpu.init_state(1)
                            outs = []
                            for t in range(64):
                                o, s = gpu.step(xg[:, t], s)
                                outs.append(o)
                            row["step_vs_parallel"] = float((torch.stack(outs, 1) - y).abs().max())
            except Exception as exc:  # a failure is a finding, not a crash of the check
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(row, flush=True)
    return rows


def check_flash(dev):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    m = wersa.build_mixer("sdpa", dim=512, num_heads=8, causal=True).to(dev, torch.bfloat16)
    x = torch.randn(1, 4096, 512, device=dev, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            m(x).sum().backward()
        return {"flash_backend": "used (runs with FLASH_ATTENTION as the only allowed backend)"}
    except Exception as exc:
        return {"flash_backend": f"unavailable: {exc}"[:300]}


def scaling(dev, lengths):
    rows = []
    configs = [
        ("wersa", False, {"num_features": 256, "levels": 2}),
        ("wersa", True, {"num_features": 256, "levels": 2}),
        ("performer", False, {"num_features": 256}),
        ("performer", True, {"num_features": 256}),
        ("sdpa", False, {}),
        ("sdpa", True, {}),
        ("softmax", True, {}),
    ]
    for name, causal, opts in configs:
        if name not in wersa.list_mixers():
            continue
        for dtype in (torch.bfloat16, torch.float32):
            oom = False
            for n in lengths:
                row = {"mixer": name, "mode": "causal" if causal else "bidir", "dtype": str(dtype)[6:], "n": n}
                if oom:
                    row["result"] = "OOM (shorter length already OOM)"
                    rows.append(row)
                    continue
                try:
                    torch.manual_seed(0)
                    m = wersa.build_mixer(name, dim=512, num_heads=8, causal=causal, **opts).to(dev, dtype)
                    m.check_finite = False
                    x = torch.randn(1, n, 512, device=dev, dtype=dtype, requires_grad=True)

                    def fwd():
                        with torch.no_grad():
                            m(x)

                    def fwd_bwd():
                        m(x).float().sum().backward()

                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    row["fwd_s"] = timed(fwd)
                    row["fwd_bwd_s"] = timed(fwd_bwd)
                    row["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
                    row["result"] = "ok"
                except torch.cuda.OutOfMemoryError:
                    row["result"] = "OOM"
                    oom = True
                except Exception as exc:
                    row["result"] = f"error: {type(exc).__name__}: {exc}"[:300]
                finally:
                    m = x = None
                    torch.cuda.empty_cache()
                rows.append(row)
                print(row, flush=True)
    return rows


def decoding(dev):
    rows = []
    for name in ("wersa", "sdpa"):
        m = wersa.build_mixer(name, dim=512, num_heads=8, causal=True).to(dev).eval()
        m.check_finite = False
        for ctx in (1024, 65536):
            with torch.no_grad():
                _, state = m.prefill(torch.randn(1, ctx, 512, device=dev))
                x_t = torch.randn(1, 512, device=dev)

                def one():
                    m.step(x_t, state)

                rows.append({"mixer": name, "context": ctx, "step_ms": 1000 * timed(one, reps=20)})
                print(rows[-1], flush=True)
            state = None
            torch.cuda.empty_cache()
    return rows


def to_markdown(result):
    lines = ["# GPU check", "", f"Device: {result['device']}; torch {result['torch']}.", "",
             "## Mixers on CUDA", "", "| mixer | mode | rel. diff CPU vs CUDA (fp32) | finite grads fp32 / bf16 | "
             "causal leak | step vs parallel | error |", "|---|---|---|---|---|---|---|"]
    for r in result["mixers"]:
        lines.append(f"| {r['mixer']} | {r['mode']} | {r.get('cpu_vs_cuda_rel', float('nan')):.2e} | "
                     f"{r.get('finite_grad_float32', '-')} / {r.get('finite_grad_bfloat16', '-')} | "
                     f"{r.get('causal_leak', '-')} | {r.get('step_vs_parallel', '-')} | {r.get('error', '')} |")
    lines += ["", f"SDPA flash backend: {result['flash']['flash_backend']}", "",
              "## Scaling (B=1, 8 heads of 64, forward+backward)", "",
              "| mixer | mode | dtype | N | fwd s | fwd+bwd s | peak GiB | result |", "|---|---|---|---|---|---|---|---|"]
    for r in result["scaling"]:
        def f(key):
            return f"{r[key]:.4f}" if key in r else "-"
        lines.append(f"| {r['mixer']} | {r['mode']} | {r['dtype']} | {r['n']} | {f('fwd_s')} | "
                     f"{f('fwd_bwd_s')} | {f('peak_gib')} | {r['result']} |")
    lines += ["", "## Decoding (one token, fp32)", "", "| mixer | context | ms / token |", "|---|---|---|"]
    for r in result["decoding"]:
        lines.append(f"| {r['mixer']} | {r['context']} | {r['step_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/gpu", help="folder for gpu.json and gpu.md")
    ap.add_argument("--lengths", default="4096,16384,65536,131072")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; this script checks the GPU paths")
    dev = torch.device("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for key, fn in (("mixers", lambda: check_mixers(dev)), ("flash", lambda: check_flash(dev)),
                    ("scaling", lambda: scaling(dev, [int(s) for s in args.lengths.split(",")])),
                    ("decoding", lambda: decoding(dev))):
        try:
            result[key] = fn()
        except Exception:
            result[key] = {"error": traceback.format_exc()[-1000:]} if key == "flash" else []
            traceback.print_exc()
        (out / "gpu.json").write_text(json.dumps(result, indent=1))
    (out / "gpu.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
