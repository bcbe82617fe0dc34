"""Forward + backward time of causal Mamba against causal WERSA, measured in one run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mamba_speed.py --dim 512 --length 16384

Prints, per mixer, the median over ``--repeats`` runs of wall time and process CPU time
of one forward and backward pass on a ``(1, length, dim)`` input, and Mamba's ratio to WERSA.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import wersa


def fwd_bwd(m: torch.nn.Module, x: torch.Tensor) -> None:
    m.zero_grad(set_to_none=True)
    m(x).square().mean().backward()


def measure(m: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    fwd_bwd(m, x)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fwd_bwd(m, x)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mixers", default="wersa,mamba")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, args.length, args.dim, requires_grad=True)
    results = {}
    for name in args.mixers.split(","):
        m = wersa.build_mixer(name, dim=args.dim, num_heads=args.heads, causal=True)
        results[name] = measure(m, x, args.repeats)
        wall, cpu = results[name]
        print(f"{name:10s} wall {wall:8.3f} s   cpu {cpu:8.3f} s", flush=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dim {args.dim}, "
          f"heads {args.heads}, length {args.length}, median of {args.repeats}")
    if "wersa" in results:
        for name, (wall, cpu) in results.items():
            if name != "wersa":
                print(f"{name} / wersa: wall {wall / results['wersa'][0]:.2f}x, "
                      f"cpu {cpu / results['wersa'][1]:.2f}x")


if __name__ == "__main__":
    main()
