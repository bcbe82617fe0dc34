"""Memory of token-by-token generation: recurrent state versus KV cache.

Decodes ``--tokens`` tokens greedily with ``WersaForCausalLM`` (the same
prefill-then-step path ``generate()`` takes) and records, at checkpoints:

* ``state_bytes``: bytes of every tensor held in the decoding cache;
* ``peak_rss_mb``: the process's peak resident memory (``VmHWM``), which
  includes everything the decoding allocated (activations, temporaries).

Growth between ``--from`` and ``--tokens`` is reported in percent. Run::

    python benchmarks/generation_memory.py --mixers wersa sdpa --tokens 4096
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import wersa
from wersa.models import WersaConfig, WersaForCausalLM


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@torch.no_grad()
def measure(mixer: str, tokens: int, start: int, width: int, layers: int, heads: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg = WersaConfig(mixer=mixer, vocab_size=256, hidden_size=width, num_hidden_layers=layers,
                      num_attention_heads=heads, position_embedding_type="sinusoidal",
                      max_position_embeddings=None)
    lm = WersaForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, 8))
    out = lm(ids, use_cache=True)  # prefill
    cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    checkpoints = sorted({start, tokens // 2, tokens})
    rows, t0 = [], time.perf_counter()
    for t in range(1, tokens + 1):
        out = lm(nxt, cache=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        if t in checkpoints:
            rows.append({"token": t, "state_bytes": tensor_bytes(cache.states), "peak_rss_mb": round(peak_rss_mb(), 1),
                         "seconds": round(time.perf_counter() - t0, 1)})
    first, last = rows[0], rows[-1]
    return {
        "mixer": mixer, "constant_state": wersa.capabilities(mixer).constant_state,
        "config": {"hidden_size": width, "layers": layers, "heads": heads},
        "checkpoints": rows,
        "state_growth_pct": round(100 * (last["state_bytes"] / first["state_bytes"] - 1), 2),
        "peak_rss_growth_pct": round(100 * (last["peak_rss_mb"] / first["peak_rss_mb"] - 1), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixers", nargs="+", default=["wersa", "sdpa"])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--from", dest="start", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.mixers:
        # one mixer per process would isolate peak RSS completely; run them one at a time for exact numbers
        print(json.dumps(measure(name, args.tokens, args.start, args.width, args.layers, args.heads)), flush=True)


if __name__ == "__main__":
    main()
