"""Small stand-ins for the benchmark tests: a synthetic task, a tiny model and two mixers.

Importable by module name (``bench_standins``) in the test process and, through the
PYTHONPATH the harness passes on, in every cell process.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from wersa.mixers import Capabilities, Mixer, register_mixer
from wersa.tasks.base import Task, TaskInfo, TokenDataset


class FirstTokenTask(Task):
    """Label = class of the first token (3 classes); the rest is noise. Learnable in a few steps."""

    name = "bench_first_token"

    def __init__(self, length: int = 32, num_train: int = 64, num_test: int = 32, seed: int = 0, cache_dir=None):
        super().__init__(cache_dir)
        self.length, self.seed = length, seed
        self.sizes = {"train": num_train, "validation": 8, "test": num_test}
        self.info = TaskInfo(name=self.name, kind="classification", vocab_size=8, max_length=length,
                             num_classes=3, source="generated (test stand-in)")

    def config(self):
        return {"length": self.length, "sizes": self.sizes, "seed": self.seed}

    def _build_split(self, split):
        rng = random.Random(f"{self.seed}/{split}")
        seqs, labels = [], []
        for _ in range(self.sizes[split]):
            y = rng.randrange(3)
            n = rng.randint(self.length // 2, self.length)
            seqs.append([y + 1] + [rng.randint(4, 7) for _ in range(n - 1)])
            labels.append(y)
        return TokenDataset.from_sequences(seqs, labels)


def make_task(**options):
    return FirstTokenTask(**options)


@register_mixer
class MeanMixer(Mixer):
    """Linear-time stand-in: each position gets the masked mean of the sequence."""

    capabilities = Capabilities(name="bench_mean", causal=False, bidirectional=True, attention_mask=True,
                                summary="test stand-in: global mean")

    def __init__(self, dim, num_heads, causal=False):
        super().__init__(dim, num_heads, causal)
        self.proj = nn.Linear(dim, dim)

    def _forward(self, x, mask):
        w = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
        mean = (x * w.unsqueeze(-1)).sum(1, keepdim=True) / w.sum(1)[:, None, None].clamp_min(1)
        return self.proj(mean.expand_as(x))


@register_mixer
class QuadMixer(Mixer):
    """Quadratic stand-in: explicit (B, N, N) attention scores, so memory grows as N^2."""

    capabilities = Capabilities(name="bench_quad", causal=False, bidirectional=True, attention_mask=True,
                                linear_time=False, summary="test stand-in: dense attention")

    def __init__(self, dim, num_heads, causal=False):
        super().__init__(dim, num_heads, causal)
        self.qkv = nn.Linear(dim, 3 * dim)

    def _forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, -1)
        s = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        if mask is not None:
            s = s.masked_fill(~mask[:, None, :], float("-inf"))
        return s.softmax(-1) @ v


class TinyClassifier(nn.Module):
    def __init__(self, vocab, classes, mixer, dim, heads):
        super().__init__()
        import wersa

        self.emb = nn.Embedding(vocab, dim)
        self.mix = wersa.build_mixer(mixer, dim=dim, num_heads=heads)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask=None, labels=None):
        x = self.emb(input_ids)
        x = x + self.mix(x, attention_mask=attention_mask)
        w = attention_mask.to(x.dtype).unsqueeze(-1) if attention_mask is not None else torch.ones_like(x[..., :1])
        logits = self.head((x * w).sum(1) / w.sum(1).clamp_min(1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def make_model(info, mixer, mixer_options, length, model_options):
    return TinyClassifier(info.vocab_size, info.num_classes, mixer, model_options.get("hidden_size", 16),
                          model_options.get("num_attention_heads", 2))


@register_mixer
class RegimeMixer(MeanMixer):
    """A mean mixer whose causal form depends on an option, and which says which computation runs at a length."""

    capabilities = Capabilities(name="bench_regime", causal=True, bidirectional=True, attention_mask=True,
                                summary="test stand-in: per-instance claims and a regime")

    def __init__(self, dim, num_heads, causal=False, causal_form: bool = True):
        if causal and not causal_form:
            raise ValueError("bench_regime: causal_form=False has no causal form")
        super().__init__(dim, num_heads, causal)
        self.capabilities = type(self).capabilities_for(causal=causal, causal_form=causal_form)

    @classmethod
    def capabilities_for(cls, causal=False, causal_form=True, **options):
        import dataclasses

        return dataclasses.replace(cls.capabilities, causal=bool(causal_form))

    def _forward(self, x, mask):
        if not self.causal:
            return super()._forward(x, mask)
        w = torch.ones(x.shape[:2], dtype=x.dtype) if mask is None else mask.to(x.dtype)
        mean = (x * w.unsqueeze(-1)).cumsum(1) / w.cumsum(1).clamp_min(1).unsqueeze(-1)  # causal: prefix mean
        return self.proj(mean)

    def regime(self, n):
        return "short" if n <= 16 else "long"


# ------------------------------------------------------------------ cell entry points
MiB = 2**20


def allocate_in_phase(spec):
    """Leave ``spec["mib"]`` MiB of freed heap pages behind, then allocate that much inside a measured phase.

    glibc keeps freed heap pages resident for reuse: without returning them to the OS
    before the phase, the phase's allocations reuse them and the resident size does not grow.
    """
    from wersa.bench.memory import PeakMemory

    n = int(spec["mib"]) * 4  # 256 KiB tensors
    lift = torch.ones(2 * MiB)  # a freed mmapped block lifts glibc's mmap threshold: the blocks below
    del lift                    # come from the heap, not from mmap
    blocks = [torch.ones(MiB // 16) for _ in range(n)]
    keep_top = torch.ones(MiB // 8)  # allocated above the blocks, so freeing them cannot shrink the heap
    del blocks
    peak = PeakMemory("cpu")
    peak.start()
    blocks = [torch.ones(MiB // 16) for _ in range(n)]
    out = {"peak_mem_bytes": peak.peak_bytes(), "method": peak.info()["method"]}
    del blocks, keep_top
    return out


def report_environment(spec):
    import os

    return {"omp_wait_policy_seen": os.environ.get("OMP_WAIT_POLICY"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def report_loaded_modules(spec):
    """Which of ``spec["modules"]`` the cell's process had imported when its entry point started."""
    import sys

    return {"loaded": [m for m in spec["modules"] if m in sys.modules]}


def kill_self(spec):
    import os
    import signal

    os.kill(os.getpid(), getattr(signal, spec.get("signal", "SIGKILL")))
    return {}


def sleep_forever(spec):
    import time

    time.sleep(3600)
    return {}


def train_and_list_modules(spec):
    """A training cell that also reports the ``wersa`` source files its process loaded (paths in the package)."""
    import sys
    from pathlib import Path

    import wersa
    from wersa.bench.train import run_cell

    record = run_cell(spec)
    root = Path(wersa.__file__).parent.resolve()
    files = {Path(f).resolve() for f in (getattr(m, "__file__", None) for m in list(sys.modules.values())) if f}
    record["wersa_files"] = sorted(f.relative_to(root).as_posix() for f in files if f.is_relative_to(root))
    return record
