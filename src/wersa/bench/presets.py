"""Named sweeps: ``quick`` (minutes on 2 CPU cores), ``standard`` (the CPU reproduction, ~2 h on
2 cores, resumable) and ``paper`` (GPU-scale settings).

Every preset uses one recipe for all mixers (same model size, optimiser, schedule,
step and time budget, seeds). Tasks or mixers that are not available here are
recorded as skipped with the reason. Results on generated or substitute data are
labelled by the tasks' ``source`` and are not the official benchmark numbers.
"""

from __future__ import annotations

import difflib

from .sweep import Sweep, TaskEntry

PAPER_MIXERS = ["softmax", "sdpa", "fnet", "linformer", "performer", "waveformer", "wersa"]

_SMALL_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
# Random-feature mixers get the same feature count, sized to the small model's heads
# (d = 16): m = 4d. Their defaults (m = 256) are for heads of 64.
_SMALL_FEATURES = {name: {"num_features": 64} for name in ("performer", "waveformer", "wersa")}


def _quick() -> Sweep:
    recipe = dict(model=dict(_SMALL_MODEL), batch_size=16, lr=2e-3, warmup_steps=10, max_steps=60,
                  max_time_s=40.0, eval_samples=256, device="cpu")
    tasks = [
        TaskEntry("listops", 256, {"num_train": 1024, "num_validation": 64, "num_test": 256,
                                   "min_length": 64, "max_length": 256, "max_depth": 4}, label="ListOps-256"),
        TaskEntry("pathfinder", 256, {"image_size": 16, "num_distractors": 1, "num_train": 1024, "num_validation": 64,
                                       "num_test": 256},
                  label="Pathfinder-16px"),
    ]
    return Sweep(mixers=["softmax", "sdpa", "fnet", "performer", "wersa"], tasks=tasks, seeds=[0], recipe=recipe,
                 mixer_options=dict(_SMALL_FEATURES), mem_limit_gb=4.0, timeout_s=300.0, name="quick")


def _standard() -> Sweep:
    # Sized so one seed of the whole sweep takes ~30 min on 2 CPU cores (3 seeds ~1.5 h):
    # every cell gets the same 40 s training budget, so the table compares what each
    # mechanism learns in equal wall time, and the long-document cells show who runs
    # out of memory or time at 16k tokens.
    recipe = dict(model=dict(_SMALL_MODEL), batch_size=16, lr=2e-3, warmup_steps=10, max_steps=400,
                  max_time_s=40.0, eval_samples=256, device="cpu")
    long_overrides = dict(batch_size=1, max_steps=200, max_time_s=60.0, eval_samples=32, warmup_steps=5)
    tasks = [
        TaskEntry("listops", 512, {"num_train": 2000, "num_validation": 100, "num_test": 256,
                                   "min_length": 128, "max_length": 512, "max_depth": 6}, label="ListOps-512"),
        TaskEntry("fashion_mnist", 784, {}, label="sFashion-MNIST-784", overrides=dict(batch_size=10)),
        TaskEntry("pathfinder", 1024, {"image_size": 32, "num_train": 2000, "num_validation": 100,
                                       "num_test": 256}, label="Pathfinder-32px"),
        TaskEntry("stdlib_families", 4096, {"max_length": 4096}, label="Text-4k (stdlib bytes)",
                  overrides=dict(batch_size=4)),
        TaskEntry("stdlib_families", 16384, {"max_length": 16384}, label="Documents-16k (stdlib bytes)",
                  overrides=long_overrides),
    ]
    # Linformer's projections have a fixed length: build them for the longest task.
    options = {**_SMALL_FEATURES, "linformer": {"max_len": 16384}}
    sweep = Sweep(mixers=list(PAPER_MIXERS), tasks=tasks, seeds=[0, 1, 2], recipe=recipe,
                  mixer_options=options, mem_limit_gb=8.0, timeout_s=600.0, name="standard")
    return sweep


def _paper() -> Sweep:
    recipe = dict(model={"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "intermediate_size": 1024},
                  batch_size=32, lr=5e-4, warmup_steps=500, max_steps=10_000, max_time_s=None,
                  eval_samples=None, device="cuda")
    tasks = [
        TaskEntry("listops", 2048, {"min_length": 500, "max_length": 2000}, label="ListOps-2k"),
        TaskEntry("fashion_mnist", 784, {}, label="sFashion-MNIST-784", overrides=dict(batch_size=10)),
        TaskEntry("pathfinder", 1024, {"image_size": 32}, label="Pathfinder-32px"),
        TaskEntry("pathfinder", 16384, {"image_size": 128}, label="Pathfinder-128px",
                  overrides=dict(batch_size=8)),
        TaskEntry("imdb", 4096, {"max_length": 4096}, label="Text-4k (IMDB bytes)"),
        TaskEntry("arxiv", 16384, {"max_length": 16384}, label="ArXiv-16k", overrides=dict(batch_size=8)),
        TaskEntry("arxiv", 131072, {"max_length": 131072}, label="ArXiv-128k",
                  overrides=dict(batch_size=1, max_steps=2000)),
    ]
    return Sweep(mixers=list(PAPER_MIXERS), tasks=tasks, seeds=[0, 1, 2], recipe=recipe, mem_limit_gb=None,
                 mixer_options={"linformer": {"max_len": 131072}}, timeout_s=6 * 3600.0, name="paper")


BIDIRECTIONAL_MIXERS = ["sdpa", "fnet", "linformer", "performer", "waveformer", "wersa", "wersa_published"]
CAUSAL_MIXERS = ["sdpa", "performer", "transnormer", "mamba", "wersa"]
STUDY_LR_GRID = [3e-4, 1e-3, 3e-3]
STUDY_MQAR_PAIRS = (4, 16, 48)


def _study() -> Sweep:
    """The accuracy study: equal optimiser steps per task, a learning rate per mixer chosen on
    validation, 3 seeds, periodic validation keeping the best model, fixed evaluation subsets.

    Sized for under 3 hours of 2 idle CPU cores (arithmetic in docs/study.md): two
    single-thread cells at once (``jobs=2``), which finishes about 1.3x more cells per hour
    than one 2-thread cell at this model size. Cell order: every task's learning-rate grid at
    seed 0 (middle rate first), then seeds 1 and 2, so a partial run already compares every
    mixer on every task. A mixer that cannot do what a task needs (``wersa_published`` has no
    padding mask; ListOps pads) is recorded as skipped with the reason. Pathfinder and
    16k-token documents do not fit this budget: they are in the ``paper`` (GPU) preset.
    """
    # About 8k tokens per optimiser step in every task, 120 steps per cell (docs/study.md).
    recipe = dict(model=dict(_SMALL_MODEL), batch_size=16, warmup_steps=10, max_steps=120, max_time_s=None,
                  eval_samples=1000, select_samples=250, eval_every=40, device="cpu", threads=1)
    mqar = [TaskEntry("mqar", 256, {"num_kv_pairs": k, "vocab_size": 1024, "num_train": 8000,
                                    "num_validation": 500, "num_test": 500},
                      label=f"MQAR-256 ({k} pairs)", mixers=list(CAUSAL_MIXERS), overrides=dict(batch_size=32))
            for k in STUDY_MQAR_PAIRS]
    tasks = [
        TaskEntry("fashion_mnist", 784, {}, label="sFashion-MNIST-784", overrides=dict(batch_size=10)),
        TaskEntry("listops", 512, {"num_train": 10_000, "num_validation": 1_000, "num_test": 1_000,
                                   "min_length": 64, "max_length": 512, "max_depth": 6}, label="ListOps-512"),
        TaskEntry("stdlib_text", 2048, {"max_length": 2048, "num_classes": 4, "windows_per_document": 16},
                  label="Text-2k (stdlib code, balanced, deduplicated)",
                  overrides=dict(batch_size=4, eval_samples=None, select_samples=None)),
        TaskEntry("shakespeare_lm", 1024, {"seq_len": 1024}, label="Shakespeare-1k (bits per byte)",
                  mixers=list(CAUSAL_MIXERS), overrides=dict(batch_size=8, eval_samples=200, select_samples=50)),
        *mqar,
        # Materialised softmax computes sdpa's function: run once, at sdpa's middle rate, as a check.
        TaskEntry("listops", 512, {"num_train": 10_000, "num_validation": 1_000, "num_test": 1_000,
                                   "min_length": 64, "max_length": 512, "max_depth": 6},
                  label="ListOps-512 (softmax = sdpa check)", mixers=["softmax", "sdpa"], seeds=[0], lr_grid=[],
                  overrides=dict(lr=1e-3)),
    ]
    options = {**_SMALL_FEATURES, "wersa_published": {"num_features": 64}, "linformer": {"max_len": 2048}}
    return Sweep(mixers=list(BIDIRECTIONAL_MIXERS), tasks=tasks, seeds=[0, 1, 2], recipe=recipe,
                 mixer_options=options, mem_limit_gb=6.0, timeout_s=600.0, name="study",
                 lr_grid=list(STUDY_LR_GRID), checkpoint_every=40, jobs=2)


RECALL_MIXERS = ["sdpa", "wersa", "performer", "transnormer"]


def _recall() -> Sweep:
    """Associative recall at a longer budget: MQAR-256 with 4 key-value pairs, 1,000 steps.

    At the study's 120 steps every mixer is still below the in-context guess (answering one
    of the context's values at random: 25%); at 1,000 steps runs either stop there or go on
    to bind values to their keys, so the comparison is over 5 seeds. One rate for every
    mixer, 3e-3: the rate each of them chose on this task in the study's grid. 20,000
    training sequences (32,000 are drawn in 1,000 steps of 32), validation every 100 steps
    keeping the best weights, the whole 500-sequence test split scored. Mamba is left out:
    its CPU path costs about 1.4 s a step here (about 25 minutes a cell on one thread), and
    it did not even copy values at 120 steps.
    """
    recipe = dict(model=dict(_SMALL_MODEL), batch_size=32, lr=3e-3, warmup_steps=50, max_steps=1000,
                  max_time_s=None, eval_samples=None, select_samples=250, eval_every=100, device="cpu", threads=1)
    tasks = [TaskEntry("mqar", 256, {"num_kv_pairs": 4, "vocab_size": 1024, "num_train": 20_000,
                                     "num_validation": 500, "num_test": 500},
                       label="MQAR-256 (4 pairs, 1,000 steps)")]
    return Sweep(mixers=list(RECALL_MIXERS), tasks=tasks, seeds=[0, 1, 2, 3, 4], recipe=recipe,
                 mixer_options=dict(_SMALL_FEATURES), mem_limit_gb=6.0, timeout_s=3600.0, name="recall",
                 checkpoint_every=100, jobs=2)


PRESETS = {"quick": _quick, "standard": _standard, "study": _study, "recall": _recall, "paper": _paper}

PRESET_HELP = {
    "quick": "a few minutes on 2 CPU cores: 5 mixers x ListOps-256 and Pathfinder-16px, 1 seed",
    "standard": "CPU reproduction, ~30 min per seed on 2 cores (3 seeds), resumable: 7 mixers x 5 tasks (up to 16k tokens)",
    "study": "the accuracy study, under 3 h on 2 idle cores (2 cells at once), resumable: equal steps, learning rate tuned per mixer "
             "on validation, 3 seeds; ListOps, sFashion-MNIST, 2k-byte text, Shakespeare bpb, MQAR (docs/study.md)",
    "recall": "associative recall at 1,000 steps (about 65 min on 2 idle cores, resumable): MQAR-256 with 4 pairs, "
              "sdpa, wersa, performer, transnormer, 5 seeds (docs/study.md)",
    "paper": "GPU-scale: wider model, 10k steps, up to 128k tokens",
}


def get_preset(name: str) -> Sweep:
    """The :class:`Sweep` of preset ``name`` (a fresh copy each call)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint} (available: {', '.join(PRESETS)})")
    return PRESETS[name]()
