"""WERSA's wavelet filter inside the attention core against filtering first, in one process.

Times one WERSA layer's fwd+bwd of ``y.square().mean()`` two ways, alternating pass by pass
so both see the same machine state:

* ``inside``: the layer as it runs (the core filters each block of q and k itself:
  ``favor_attention(taps=...)`` causal, ``favor_attention(haar_gains=...)`` bidirectional);
* ``first``: the same weights, q and k filtered over the whole sequence first
  (``WERSA._filtered_qkv``), then the same core without the filter.

Prints the median wall and CPU seconds per pass and the largest output difference::

    PYTHONPATH=src python benchmarks/filter_in_core.py --n 16384 --passes 5
    PYTHONPATH=src python benchmarks/filter_in_core.py --n 65536 --passes 3 --causal
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import wersa
from wersa.ops.favor_attention import favor_attention
from wersa.ops.heads import compute_dtype


def filter_first(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output with q and k filtered over the whole sequence before the core."""
    q, k, v = layer._filtered_qkv(x, None)
    work = compute_dtype(q.dtype)
    y = favor_attention(q.to(work), k.to(work), v.to(work), layer.omega, layer.bandwidth.to(work),
                        causal=layer.causal, eps=layer.eps, chunk_size=layer.chunk_size,
                        block_size=layer.block_size, key_shift=layer._key_shift(work))
    return layer._merge_heads(y.to(x.dtype))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16384, help="tokens")
    p.add_argument("--passes", type=int, default=5, help="timed passes per way (after one untimed)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = wersa.build_mixer("wersa", dim=512, num_heads=8, causal=args.causal, levels=2,
                              num_features=256).train()
    x = torch.randn(1, args.n, 512, requires_grad=True)
    ways = {"inside": layer, "first": lambda t: filter_first(layer, t)}

    def run(fn):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = fn(x)
        y.square().mean().backward()
        return y.detach()

    outs = {name: run(fn) for name, fn in ways.items()}
    times = {name: [] for name in ways}
    for _ in range(args.passes):
        for name, fn in ways.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run(fn)
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    print(f"{'causal' if args.causal else 'bidirectional'}, {args.n} tokens, {args.threads} threads; "
          f"max |inside - first| = {(outs['inside'] - outs['first']).abs().max().item():.2e}")
    for name, ts in times.items():
        print(f"{name:>6}: wall {statistics.median(t for t, _ in ts):.3f} s, "
              f"CPU {statistics.median(c for _, c in ts):.3f} s  {[round(t, 2) for t, _ in ts]}")


if __name__ == "__main__":
    main()
