"""Kernel accuracy of WERSA's random features against the exact kernel they estimate.

Relative error ``|y - y_exact| / |y_exact|`` of the attention core (levels 0, one head of
width 32, N = 512, float64) against ``softmax(cos(q, k) / b^2)`` computed exactly
(:func:`wersa.mixers.wersa.exact_kernel_attention`), for several numbers of features
``m`` and bandwidths ``b``, next to uniform attention (which ignores q and k).
Mean over 3 seeds. Prints a Markdown table::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/wersa_kernel_accuracy.py
"""

from __future__ import annotations

import math

import torch

import wersa

N, D, SEEDS = 512, 32, 3


def errors(m_features: int, b: float, feature_map: str = "softmax", causal: bool = False) -> tuple[float, float]:
    """(random-feature error, uniform-attention error) against the exact kernel."""
    rf, uni = [], []
    for s in range(SEEDS):
        torch.manual_seed(s)
        m = wersa.build_mixer("wersa", dim=D, num_heads=1, causal=causal, levels=0, num_features=m_features,
                              feature_map=feature_map, feature_seed=s).double().eval()
        with torch.no_grad():
            m.beta.fill_(math.log(math.expm1(b - m.min_bandwidth)))
            x = torch.randn(1, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + s))
            exact = m.attend_exact(x)
            approx = m.attend(x)
            v = m._heads(m.qkv(x).chunk(3, dim=-1)[2])
            if causal:
                uniform = v.cumsum(2) / torch.arange(1, N + 1, dtype=v.dtype).view(1, 1, -1, 1)
            else:
                uniform = v.mean(2, keepdim=True).expand_as(v)
        rf.append(((approx - exact).norm() / exact.norm()).item())
        uni.append(((uniform - exact).norm() / exact.norm()).item())
    return sum(rf) / SEEDS, sum(uni) / SEEDS


def main() -> None:
    ms = (64, 256, 1024, 4096)
    for fm in ("softmax", "relu"):
        print(f"\nfeature_map={fm!r} (bidirectional), relative error vs the exact kernel\n")
        print("| b | " + " | ".join(f"m = {m}" for m in ms) + " | uniform attention |")
        print("|---" * (len(ms) + 2) + "|")
        for b in (0.35, 0.5, 1.0, 2.0):
            errs = [errors(m, b, fm) for m in ms]
            print(f"| {b} | " + " | ".join(f"{e:.3f}" for e, _ in errs) + f" | {errs[0][1]:.3f} |")


if __name__ == "__main__":
    main()
