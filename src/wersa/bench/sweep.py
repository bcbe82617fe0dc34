"""``wersa bench``: a sweep of isolated training cells (mixer x task x length x seed).

A sweep is resumable: every finished cell is one line of the results file (see
:mod:`.results`), keyed by a hash of its full config; a re-run skips those keys.
Task data is generated (and cached on disk) once, before the cells, so the cells
time training, not data generation. Unavailable mixers or tasks (not registered,
data not installed) become ``skipped`` records with the reason, never a crash;
skipped cells are tried again on the next run, in case the thing was installed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import adapters
from .cell import run_cell
from .results import append_result, cell_key, finished_keys, middle_first, read_results
from .train import TrainConfig

# Config fields that say how/where to run, not what is measured: not in the cell key.
_NOT_IN_KEY = ("plugins", "cache_dir", "checkpoint_dir", "checkpoint_every")


@dataclass
class TaskEntry:
    """A task at one length: registry ``name``, ``options``, the padded ``length`` and a table ``label``.

    ``overrides`` change the training recipe for this task only (e.g. a smaller
    batch at 16k tokens); they are part of each cell's config. ``mixers``, ``seeds``
    and ``lr_grid`` replace the sweep's for this task (``None``: the sweep's;
    ``lr_grid=[]``: no tuning, the recipe's ``lr``).
    """

    name: str
    length: int
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    mixers: list[str] | None = None
    seeds: list[int] | None = None
    lr_grid: list[float] | None = None

    @property
    def title(self) -> str:
        return self.label or f"{self.name}-{self.length}"


@dataclass
class Sweep:
    """The grid and the shared recipe of a ``wersa bench`` run."""

    mixers: list[str]
    tasks: list[TaskEntry]
    seeds: list[int] = field(default_factory=lambda: [0])
    recipe: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every cell
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mem_limit_gb: float | None = 8.0
    timeout_s: float = 900.0
    threads: int | None = None
    name: str = "custom"
    checkpoint_every: int = 50  # steps between a cell's checkpoints; 0 = none
    lr_grid: list[float] = field(default_factory=list)  # tuned per (task, mixer) at seeds[0]; [] = recipe lr
    # Cells run at once, each in its own process. Small models use one core poorly
    # (their matrices are too small to split across threads), so on a 2-core machine
    # two single-thread cells finish more cells per hour than one 2-thread cell.
    jobs: int = 1


def _cell(sweep: Sweep, entry: TaskEntry, mixer: str, seed: int, lr: float | None = None) -> TrainConfig:
    """The one training recipe of a cell: sweep recipe < task overrides < (mixer, task, seed, lr)."""
    fields = copy.deepcopy(sweep.recipe)
    fields.update(copy.deepcopy(entry.overrides))
    fields.update(mixer=mixer, task=entry.name, task_options=dict(entry.options), length=entry.length, seed=seed,
                  mixer_options=dict(sweep.mixer_options.get(mixer, {})))
    if lr is not None:
        fields["lr"] = lr
    if sweep.threads:
        fields["threads"] = sweep.threads
    return TrainConfig.from_dict(fields)


def _grid(sweep: Sweep, entry: TaskEntry) -> list[float]:
    """The learning rates tried for ``entry``, middle first (a partial run has every mixer at a middle rate)."""
    return middle_first(sweep.lr_grid if entry.lr_grid is None else entry.lr_grid)


def chosen_lr(sweep: Sweep, entry: TaskEntry, mixer: str, records: list[dict[str, Any]]) -> float | None:
    """The learning rate of ``mixer`` on ``entry``: the grid value with the best validation score at the
    tuning seed, once every grid cell is recorded; ``None`` before that, or when none finished."""
    grid = _grid(sweep, entry)
    if not grid:
        return float(_cell(sweep, entry, mixer, 0).lr)
    seeds = entry.seeds if entry.seeds is not None else sweep.seeds
    by_key = {r["key"]: r for r in records if r.get("status") != "skipped"}
    scores = []
    for lr in grid:
        rec = by_key.get(key_of(_cell(sweep, entry, mixer, seeds[0], lr), sweep))
        if rec is None:
            return None
        if rec.get("status") == "ok" and rec.get("select_score") is not None:
            scores.append((float(rec["select_score"]), -grid.index(lr), lr))
    return max(scores)[2] if scores else None


def cell_configs(sweep: Sweep, records: list[dict[str, Any]] | None = None
                 ) -> list[tuple[TaskEntry, TrainConfig]]:
    """Every cell of the sweep that can be named now, in run order.

    Without a learning-rate grid: seed by seed, task by task, mixer by mixer, so a run cut
    short has every mixer on every task at the first seed before any second seed. With
    a grid (:attr:`Sweep.lr_grid`): first, task by task, every (rate, mixer) at the first
    seed (the rate is chosen on the validation split); then the other seeds at each
    mixer's chosen rate (:func:`chosen_lr`, from ``records``), seed by seed, task by
    task. The first seed's cell at the chosen rate is its tuning cell (the same key).
    """
    records = records or []
    out: list[tuple[TaskEntry, TrainConfig]] = []

    def mixers(e: TaskEntry) -> list[str]:
        return list(sweep.mixers if e.mixers is None else e.mixers)

    def seeds(e: TaskEntry) -> list[int]:
        return list(sweep.seeds if e.seeds is None else e.seeds)

    for entry in sweep.tasks:
        grid = _grid(sweep, entry)
        for lr in grid or [None]:
            out += [(entry, _cell(sweep, entry, m, seeds(entry)[0], lr)) for m in mixers(entry)]
    rounds = max(len(seeds(e)) for e in sweep.tasks) if sweep.tasks else 0
    for i in range(1, rounds):
        for entry in sweep.tasks:
            if i >= len(seeds(entry)):
                continue
            for m in mixers(entry):
                lr = chosen_lr(sweep, entry, m, records)
                if lr is not None:
                    out.append((entry, _cell(sweep, entry, m, seeds(entry)[i], lr)))
    return out


def pending_selection(sweep: Sweep, records: list[dict[str, Any]]) -> int:
    """How many later-seed cells wait for a learning rate to be chosen."""
    n = 0
    for entry in sweep.tasks:
        seeds = sweep.seeds if entry.seeds is None else entry.seeds
        for m in (sweep.mixers if entry.mixers is None else entry.mixers):
            if chosen_lr(sweep, entry, m, records) is None:
                n += len(seeds) - 1
    return n


def key_of(cfg: TrainConfig, sweep: Sweep | None = None) -> str:
    """The results key of a cell: its config, the sweep's memory cap and time limit, the code version."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_KEY}
    limits = None if sweep is None else {"mem_limit_gb": sweep.mem_limit_gb, "timeout_s": sweep.timeout_s}
    return cell_key({"bench": "train", **d}, limits)


def checkpoint_root(out: str | Path) -> Path:
    """The folder of the per-cell checkpoint folders of results file ``out``: ``<out without suffix>.ckpt``."""
    out = Path(out)
    return out.with_name(out.stem + ".ckpt")


def _remove_checkpoints(root: Path, key: str | None = None) -> None:
    """Remove one cell's checkpoint folder (or, with ``key=None``, nothing), then ``root`` if empty."""
    if key is not None:
        shutil.rmtree(root / key, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # only succeeds when empty


def prepare_task(entry: TaskEntry, recipe: dict[str, Any], cache_dir: str | None
                 ) -> tuple[str | None, dict[str, bool] | None]:
    """Generate and cache ``entry``'s splits in this process.

    Returns why the task is unavailable (``None`` when it is) and, when it is, what it asks of a
    mixer (:func:`task_needs`)."""
    factory = entry.overrides.get("task_factory", recipe.get("task_factory"))
    split = recipe.get("eval_split", "test")
    try:
        task = adapters.build_task(entry.name, entry.options, factory, cache_dir=cache_dir)
        for name in ("train", split):
            task.split(name)
        info = task.info
        if entry.length and info.max_length and info.max_length > entry.length:
            return (f"task yields up to {info.max_length} tokens, more than the cell length {entry.length}; "
                    f"set the task's length option or the cell length"), None
    except adapters.Unavailable as exc:
        return str(exc), None
    except (FileNotFoundError, ModuleNotFoundError, ImportError) as exc:
        return f"{type(exc).__name__}: {exc}", None
    except Exception as exc:  # noqa: BLE001 - a task that cannot build must not end the sweep
        return f"data preparation failed: {type(exc).__name__}: {exc}", None
    return None, task_needs(task, entry.length, split)


def task_needs(task, length: int | None, eval_split: str = "test") -> dict[str, bool]:
    """What a built ``task`` asks of a mixer: a ``causal`` form (language modelling) and a ``padding``
    mask (some training or evaluation sequence is shorter than the cell ``length``, so batches are padded)."""
    length = length or task.info.max_length
    padding = any(bool((task.split(split).lengths() < length).any()) for split in ("train", eval_split))
    return {"causal": task.info.kind == "language_modeling", "padding": padding}


def capability_refusal(mixer: str, options: dict[str, Any], length: int, needs: dict[str, bool]) -> str | None:
    """Why ``mixer`` built with ``options`` cannot run a task with ``needs`` (from :func:`task_needs`), or ``None``.

    Asks the instance's capabilities (:func:`wersa.capabilities`), so a refusal is recorded as
    ``skipped`` with the reason before any process starts, not as an ``error`` from inside a cell.
    """
    try:
        caps = adapters.mixer_capabilities(mixer, causal=needs["causal"], **options)
    except ValueError:
        return None  # options the cell itself will reject, with its own message
    if needs["causal"] and not caps.causal:
        return f"{mixer} has no causal form; this task is language modelling"
    if not needs["causal"] and not caps.bidirectional:
        return f"{mixer} has no bidirectional form; this task is classification"
    if needs["padding"] and not caps.attention_mask:
        return f"{mixer} cannot apply a padding mask and this task's sequences are padded to {length} tokens"
    if caps.max_len is not None and length > caps.max_len:
        return f"{mixer} accepts at most {caps.max_len} tokens; this cell has {length}"
    return None


def run_sweep(sweep: Sweep, out: str | Path, cache_dir: str | None = None, retry_failed: bool = False,
              progress: bool = True, max_cells: int | None = None, plugins: list[str] | None = None,
              dry_run: bool = False) -> list[dict[str, Any]]:
    """Run every unfinished cell of ``sweep``, appending each record to ``out`` as it finishes.

    Up to :attr:`Sweep.jobs` cells run at once, each in its own process; records are
    appended in the order cells finish (a record is one atomic line, so order is free).

    Args:
        out: results file (JSON lines); created if missing, resumed if present.
        cache_dir: task data cache (default: ``<out's folder>/data-cache``).
        retry_failed: run again cells recorded as ``oom``/``timeout``/``error``.
        max_cells: stop after running this many cells (the rest run next time).
        dry_run: list the cells to run (as records with ``status="pending"``) without running them.

    Returns the records written by this call.
    """
    out = Path(out)
    adapters.load_plugins(plugins)
    cache_dir = cache_dir or str(out.parent / "data-cache")
    written: list[dict[str, Any]] = []
    attempted: set[str] = set()
    # Later seeds are named once their learning rate is chosen, so run in rounds until
    # nothing new can be named (at most: tuning, then the other seeds).
    for _ in range(3):
        new = _run_round(sweep, out, cache_dir, retry_failed, progress, max_cells, plugins, dry_run, attempted)
        written += new
        if dry_run or not new or (max_cells is not None and sum(r["status"] != "skipped" for r in written)
                                  >= max_cells):
            break
        if max_cells is not None:
            max_cells -= sum(r["status"] != "skipped" for r in new)
    return written


def _run_round(sweep: Sweep, out: Path, cache_dir: str, retry_failed: bool, progress: bool,
               max_cells: int | None, plugins: list[str] | None, dry_run: bool,
               attempted: set[str]) -> list[dict[str, Any]]:
    records = read_results(out)
    done = finished_keys([r for r in records if r.get("status") != "skipped"], retry_failed=retry_failed)
    cells = cell_configs(sweep, records)
    todo = [(e, c) for e, c in cells if key_of(c, sweep) not in done and key_of(c, sweep) not in attempted]
    attempted.update(key_of(c, sweep) for _, c in todo)
    ckpt_root = checkpoint_root(out)
    if not dry_run and ckpt_root.is_dir():
        # A kill between writing a cell's record and removing its checkpoints leaves them behind.
        for e, c in cells:
            if key_of(c, sweep) in done:
                _remove_checkpoints(ckpt_root, key_of(c, sweep))
    if progress or dry_run:
        wait = pending_selection(sweep, records)
        print(f"{sweep.name}: {len(cells)} cells, {len(cells) - len(todo)} already in {out}, {len(todo)} to run"
              + (f", {wait} more once their learning rate is chosen" if wait else ""))
    if not todo:
        return []
    if dry_run:
        return [{"status": "pending", "key": key_of(c, sweep), "mixer": c.mixer, "task": e.title, "seed": c.seed}
                for e, c in todo]
    # Which mixers and tasks are available (checked once, in this process).
    mixer_missing: dict[str, str] = {}
    for m in sorted({c.mixer for _, c in todo}):
        if sweep.recipe.get("model_factory") is None:
            try:
                adapters.check_mixer(m)
            except adapters.Unavailable as exc:
                mixer_missing[m] = str(exc)
    task_missing: dict[str, str | None] = {}
    needs: dict[str, dict[str, bool]] = {}
    # Only the data of the cells that run now (a capped run does not generate every task first).
    needed = {e.title: e for e, _ in (todo if max_cells is None else todo[:max_cells])}
    for title, entry in tqdm(needed.items(), desc="prepare data", disable=not progress, dynamic_ncols=True):
        task_missing[title], task_asks = prepare_task(entry, sweep.recipe, cache_dir)
        # A custom model (model_factory) decides for itself what it can run.
        if task_asks is not None and sweep.recipe.get("model_factory") is None:
            needs[title] = task_asks
    mem = int(sweep.mem_limit_gb * 1024 ** 3) if sweep.mem_limit_gb else None
    written = []
    for m, why in mixer_missing.items():
        if progress:
            tqdm.write(f"note: mixer {m!r} is not available here; its cells are recorded as skipped ({why})")
    runnable = []
    for entry, cfg in todo:
        key = key_of(cfg, sweep)
        cfg = dataclasses.replace(cfg, cache_dir=cache_dir, plugins=list(plugins or []))
        if sweep.checkpoint_every:
            # An interrupted cell resumes from its last checkpoint on the next run.
            cfg = dataclasses.replace(cfg, checkpoint_dir=str(ckpt_root / key),
                                      checkpoint_every=int(sweep.checkpoint_every))
        base = {"bench": "train", "key": key, "preset": sweep.name, "mixer": cfg.mixer,
                "task": entry.name, "task_label": entry.title, "length": cfg.length, "seed": cfg.seed, "lr": cfg.lr,
                "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_KEY}}
        reason = mixer_missing.get(cfg.mixer) or task_missing.get(entry.title)
        if not reason and entry.title in needs:
            reason = capability_refusal(cfg.mixer, cfg.mixer_options, cfg.length, needs[entry.title])
        if reason:
            rec = {**base, "status": "skipped", "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_result(out, rec)
            written.append(rec)
            if progress:
                tqdm.write(summary_line(rec))
        else:
            runnable.append((cfg, key, base))
    if max_cells is not None:
        runnable = runnable[:max_cells]

    # Cells running side by side wait passively (spinning threads would fight over the cores);
    # one at a time, the OpenMP runtime's own policy (PASSIVE's wake-ups slow chunked causal
    # loops several-fold: docs/performance.md, run E). Each record says which ran.
    wait_policy = "PASSIVE" if int(sweep.jobs) > 1 else None

    def run(item):
        cfg, key, base = item
        base = {**base, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return key, {**base, **run_cell("wersa.bench.train:run_cell", cfg.to_dict(), mem_limit_bytes=mem,
                                        timeout_s=sweep.timeout_s, threads=cfg.threads,
                                        omp_wait_policy=wait_policy)}

    bar = tqdm(total=len(runnable), desc=f"bench {sweep.name}", disable=not progress, dynamic_ncols=True)
    # Cells are processes: threads here only wait on them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(sweep.jobs))) as pool:
        futures = [pool.submit(run, item) for item in runnable]
        for fut in concurrent.futures.as_completed(futures):
            key, rec = fut.result()
            append_result(out, rec)
            if sweep.checkpoint_every:
                _remove_checkpoints(ckpt_root, key)
            written.append(rec)
            bar.update(1)
            if progress:
                tqdm.write(summary_line(rec))
    bar.close()
    return written


def summary_line(rec: dict[str, Any]) -> str:
    head = f"{rec['mixer']:>12} {rec.get('task_label', rec['task']):>18} seed {rec['seed']}"
    st = rec["status"]
    if st == "ok":
        if rec.get("accuracy") is not None:
            auc = rec.get("auc")
            metric = f"acc {rec['accuracy']:.3f} auc {'-' if auc is None else format(auc, '.3f')}"
        elif rec.get("bpb") is not None:
            metric = f"bpb {rec['bpb']:.3f}"
        else:  # per-token labels that are not text (MQAR's recalled values)
            metric = f"token acc {rec.get('token_accuracy', float('nan')):.3f}"
        return (f"{head}  {metric}  train {rec['train_time_s']:.1f}s ({rec['steps']} steps)  "
                f"peak {rec['peak_mem_bytes'] / 2**20:.0f} MiB")
    return f"{head}  {st.upper()}: {(rec.get('error') or rec.get('reason') or '')[:120]}"
