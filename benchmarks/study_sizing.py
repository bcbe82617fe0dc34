"""CPU seconds per training step for the study preset's tasks and mixers (sizing in docs/study.md).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/study_sizing.py [threads]

Prints one line per (task, mixer): the smallest CPU time (process time, so load on the
machine matters less than for wall time) of 2 steps after one warm-up step.
"""

import sys
import time

import torch

from wersa.bench import adapters
from wersa.tasks import build_task

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
BIDIR = ["sdpa", "fnet", "linformer", "performer", "waveformer", "wersa"]
CAUSAL = ["sdpa", "performer", "transnormer", "wersa", "mamba"]
CASES = [
    ("mqar", 256, {"num_kv_pairs": 16, "num_train": 64, "num_validation": 8, "num_test": 8, "vocab_size": 1024},
     CAUSAL, 32),
    ("shakespeare_lm", 1024, {}, CAUSAL, 8),
    ("listops", 512, {"num_train": 64, "num_validation": 8, "num_test": 8, "min_length": 64, "max_length": 512,
                      "max_depth": 6, "cache_dir": False}, BIDIR, 16),
    ("fashion_mnist", 784, {}, BIDIR, 10),
    ("stdlib_text", 2048, {"windows_per_document": 16}, BIDIR, 4),
]
OPTIONS = {"performer": {"num_features": 64}, "waveformer": {"num_features": 64}, "wersa": {"num_features": 64},
           "linformer": {"max_len": 2048}}

for name, length, options, mixers, batch_size in CASES:
    task = build_task(name, **options)
    batch = next(iter(task.loader("train", batch_size, pad_to=length)))
    for mixer in mixers:
        torch.manual_seed(0)
        net = adapters.build_model(task.info, mixer, OPTIONS.get(mixer, {}), length, MODEL, None)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        times = []
        for _ in range(3):
            t = time.process_time()
            loss = adapters.model_output(net(**batch), "loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.process_time() - t)
        print(f"{name:15s} {mixer:12s} {batch_size} x {length}: {min(times[1:]):.3f} CPU s/step", flush=True)
