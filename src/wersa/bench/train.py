"""One training run of a model on a task: the code path of ``wersa train`` and of every benchmark cell.

The recipe is the same for every mixer (that is what makes the comparison fair):
AdamW, linear warm-up then cosine decay to 10 % of the peak learning rate, gradient
clipping, a fixed step budget and optionally a wall-time budget, fixed seeds.

Runs unchanged under ``torchrun --nproc_per_node=N``: each rank takes its slice of
the same global batch, gradients are averaged by DDP (gloo on CPU, NCCL on GPU),
rank 0 evaluates and writes. With equal per-rank slices and a per-example mean
loss, N processes follow the same trajectory as one process on the global batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import adapters
from .checkpoint import CheckpointStore, atomic_torch_save, rng_states, set_rng_states
from .env import environment
from .evaluation import evaluate, selection_score
from .flops import forward_and_step_flops
from .memory import PeakMemory


@dataclass
class TrainConfig:
    """Everything that defines one training run (and so one benchmark cell).

    Attributes:
        mixer, mixer_options: the token mixer and its options (``wersa.build_mixer``).
        task, task_options: the task and its options (``wersa.tasks`` registry).
        length: pad every batch to this many tokens (fixed shapes, fair timing);
            ``None`` pads to the longest example of each batch.
        seed: seeds model initialisation, shuffling and dropout.
        model: model size and shape (fields of ``WersaConfig``).
        batch_size: global batch (split evenly across ranks under torchrun).
        lr, weight_decay, warmup_steps, max_steps, grad_clip: the optimiser recipe.
        max_time_s: training wall-time budget; training stops at whichever of
            ``max_steps`` and ``max_time_s`` comes first (``None`` = steps only).
        eval_split, eval_samples: split scored at the end, and the size of its fixed,
            stratified, shuffled subset (``None``: the whole split; see :mod:`.evaluation`).
        eval_every: validate every this many steps (and at the end) on ``select_samples``
            examples of the validation split and keep the best model (by
            :func:`.evaluation.selection_score`); the test split scores that model.
            ``0``: no validation, the last model is scored.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        threads: torch intra-op threads (``None`` = leave as is); recorded.
        count_flops: count FLOPs per forward and per training step on one batch.
        task_factory, model_factory: import paths of stand-ins (see :mod:`.adapters`).
        plugins: modules imported first (they may register mixers or tasks).
        cache_dir: where tasks cache generated data (not part of a cell's identity).
        checkpoint_dir: save resumable checkpoints here and resume from the newest
            usable one on start (``None`` = no checkpoints; see :mod:`.checkpoint`).
        checkpoint_every: steps between checkpoints (one is also written when
            training ends, before evaluation).
    """

    mixer: str
    task: str
    mixer_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    length: int | None = None
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128})
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_steps: int = 100
    max_time_s: float | None = None
    grad_clip: float | None = 1.0
    eval_split: str = "test"
    eval_samples: int | None = 1000
    eval_every: int = 0
    select_samples: int | None = 1000
    eval_batch_size: int | None = None
    device: str = "cpu"
    threads: int | None = None
    count_flops: bool = True
    task_factory: str | None = None
    model_factory: str | None = None
    plugins: list[str] = field(default_factory=list)
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}")
        return cls(**d)


# Fields that say how or where to run, not what is trained: a checkpoint written
# under other values of these is still resumed.
RUN_ONLY_FIELDS = ("plugins", "cache_dir", "checkpoint_dir", "checkpoint_every", "threads", "device",
                   "count_flops", "eval_batch_size")


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What defines a training trajectory: ``cfg`` without :data:`RUN_ONLY_FIELDS`."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_FIELDS}


# ----------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use --device cpu")
    return dev


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 10 % of ``lr`` at ``max_steps``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def optimiser_step(net: torch.nn.Module, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   batch: dict[str, torch.Tensor], step: int, cfg: TrainConfig) -> torch.Tensor:
    """One optimiser step of the recipe: scheduled learning rate, loss, backward, clipping,
    update. ``net`` runs the batch (``model`` itself, or its DDP wrapper). Returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss = adapters.model_output(net(**batch), "loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss


class _Dist:
    """Rank/world of a torchrun launch (or a single process)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = device
        if self.enabled and not torch.distributed.is_initialized():
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (ranks must stop together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return int(t.item())

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Batches:
    """Endless train batches; epoch ``e`` is shuffled with seed ``seed * 1000 + e``.

    ``consumed`` batches are skipped first (a resumed run continues the same order);
    the skipping happens here, before training starts, not inside the first step.
    """

    def __init__(self, task, cfg: TrainConfig, consumed: int = 0):
        self.task, self.cfg = task, cfg
        self.epoch, skip = 0, 0
        if consumed:
            per_epoch = len(self._loader(0))  # drop_last: whole batches per epoch
            if per_epoch == 0:
                self._empty()
            self.epoch, skip = divmod(int(consumed), per_epoch)
        self._start_epoch()
        for _ in range(skip):
            next(self._it)
            self._n += 1

    def _loader(self, epoch: int):
        cfg = self.cfg
        return self.task.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch,
                                drop_last=True, pad_to=cfg.length)

    def _start_epoch(self) -> None:
        self._it = iter(self._loader(self.epoch))
        self._n = 0

    def _empty(self):
        raise ValueError(
            f"task {self.cfg.task!r}: the train split has fewer examples than batch_size={self.cfg.batch_size}; "
            f"lower --batch-size or enlarge the split"
        )

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                if self._n == 0:
                    self._empty()
                self.epoch += 1
                self._start_epoch()
                continue
            self._n += 1
            return batch


def _batches(task, cfg: TrainConfig, consumed: int = 0) -> _Batches:
    return _Batches(task, cfg, consumed)


# -------------------------------------------------------------------- saving
BYTE_TOKENS_FILE = "byte_tokens.json"


def save_model_folder(model: torch.nn.Module, info, path: str) -> None:
    """``model.save_pretrained(path)``, plus :data:`BYTE_TOKENS_FILE` for byte-level text tasks.

    That file records the byte convention of the tasks (token id = byte + ``offset``,
    ``pad_id`` is padding) so that ``wersa generate`` can encode a prompt and decode
    the output without the task.
    """
    import json

    model.save_pretrained(path)
    if getattr(info, "bytes_per_token", None) == 1.0:
        meta = {"encoding": "utf-8 bytes", "offset": int(info.pad_id) + 1, "pad_id": int(info.pad_id),
                "vocab_size": int(info.vocab_size), "task": info.name, "kind": info.kind}
        with open(os.path.join(path, BYTE_TOKENS_FILE), "w") as f:
            json.dump(meta, f, indent=1)


# -------------------------------------------------------------------- train
def run_training(cfg: TrainConfig, save_params: str | None = None, progress: bool = True,
                 save_dir: str | None = None) -> dict[str, Any]:
    """Train and evaluate one model; returns the metrics record (on every rank; rank 0's is authoritative).

    ``save_params`` writes the final state dict to one file; ``save_dir`` writes a
    ``save_pretrained`` folder (see :func:`save_model_folder`) that
    ``AutoModelForCausalLM.from_pretrained`` and ``wersa generate`` load.

    Record fields: ``accuracy``/``auc`` or ``eval_loss``/``bpb``; ``train_time_s``
    (training loop wall time, data included), ``step_time_s`` (median compute time
    of a step), ``steps``, ``tokens_per_s``, ``peak_mem_bytes`` (what training added
    to memory; see :mod:`.memory`), ``flops_forward`` / ``flops_train_step`` (one
    global batch), ``params``, ``final_train_loss``, ``env``.
    """
    adapters.load_plugins(cfg.plugins)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    dist = _Dist(device)
    device = dist.device
    if cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {dist.world} processes; "
                         f"use a multiple of {dist.world}")
    local_bs = cfg.batch_size // dist.world
    lo = dist.rank * local_bs

    task = adapters.build_task(cfg.task, cfg.task_options, cfg.task_factory, cache_dir=cfg.cache_dir)
    info = task.info
    if not cfg.task_factory:
        adapters.check_mixer(cfg.mixer)
    seed_everything(cfg.seed)  # same initial weights on every rank
    model = adapters.build_model(info, cfg.mixer, cfg.mixer_options, cfg.length, cfg.model, cfg.model_factory)
    model.to(device)
    if save_dir and not hasattr(model, "save_pretrained"):
        raise ValueError(f"--save needs a Hugging Face model; {cfg.model_factory or type(model).__name__} has no "
                         f"save_pretrained (use --save-params FILE)")
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # Resume from the newest usable checkpoint (rank 0 chooses, every rank loads that file).
    store = None
    state: dict[str, Any] | None = None
    if cfg.checkpoint_dir:
        if not isinstance(cfg.checkpoint_every, int) or cfg.checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be a positive integer, got {cfg.checkpoint_every!r}")
        store = CheckpointStore(cfg.checkpoint_dir, identity=run_identity(cfg))
        state = store.latest() if dist.is_main else None
        step0 = dist.broadcast_int(int(state["step"]) if state is not None else -1)
        if not dist.is_main and step0 >= 0:
            state = store.load(step0)
    seed_everything(cfg.seed + 1)  # dropout stream, independent of data order
    steps, tokens, prior_time, resumes = 0, 0, 0.0, 0
    step_times: list[float] = []
    losses: list[float] = []
    stopped_by = "steps"
    done = False
    prior_peak = 0  # peak memory of the training done before a resume
    # Model selection: the best validated weights so far ({"step", "score", "metric", "model"}).
    best: dict[str, Any] | None = None
    val_history: list[list[float]] = []
    if cfg.eval_every and (not isinstance(cfg.eval_every, int) or cfg.eval_every < 0):
        raise ValueError(f"eval_every must be a non-negative integer, got {cfg.eval_every!r}")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"])
        steps, tokens = int(state["step"]), int(state["tokens"])
        losses, step_times = list(state["losses"]), list(state["step_times"])
        prior_time, resumes = float(state["train_time_s"]), int(state["resumes"]) + 1
        stopped_by, done = state["stopped_by"], bool(state["done"])
        prior_peak = int(state.get("peak_mem_bytes", 0))
        best = state.get("best")
        val_history = list(state.get("val_history", []))
    resumed_from = steps if state is not None else None
    del state

    checkpoint_time = 0.0
    validation_time = 0.0
    eval_bs = cfg.eval_batch_size or cfg.batch_size

    def validate() -> None:
        """Score the validation subset; keep a copy of the weights when they are the best so far."""
        nonlocal best, validation_time
        t = time.perf_counter()
        if dist.is_main:
            metrics = evaluate(model, task, "validation", eval_bs, cfg.select_samples, cfg.length, device)
            name, score = selection_score(metrics)
            val_history.append([steps, score])
            if best is None or score > best["score"]:
                best = {"step": steps, "score": score, "metric": name,
                        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
        validation_time += time.perf_counter() - t

    def elapsed() -> float:
        """Training time so far, across resumes, without checkpoint writing and validation."""
        return prior_time + time.perf_counter() - t_start - checkpoint_time - validation_time

    def save_checkpoint(finished: bool, train_s: float | None = None, peak_bytes: int | None = None) -> None:
        nonlocal checkpoint_time
        if store is None:
            return
        t = time.perf_counter()
        train_s = elapsed() if train_s is None else train_s
        if dist.is_main:
            store.save({
                "step": steps, "batches_consumed": steps, "tokens": tokens, "losses": losses,
                "step_times": step_times, "train_time_s": train_s,
                "resumes": resumes, "stopped_by": stopped_by, "done": finished,
                "peak_mem_bytes": max(prior_peak, peak.peak_bytes()) if peak_bytes is None else peak_bytes,
                "best": best, "val_history": val_history,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_states(),
            })
        checkpoint_time += time.perf_counter() - t

    batches = _batches(task, cfg, consumed=steps) if not done else None
    peak = PeakMemory(device)
    peak.start()
    bar = tqdm(total=cfg.max_steps, initial=steps, desc=f"train {cfg.mixer}/{cfg.task}",
               disable=not (progress and dist.is_main), leave=False, dynamic_ncols=True)
    t_start = time.perf_counter()
    net.train()
    while not done and steps < cfg.max_steps:
        batch = next(batches)
        gbs, n_tok = batch["input_ids"].shape
        batch = _to({k: v[lo:lo + local_bs] for k, v in batch.items()}, device)
        t0 = time.perf_counter()
        loss = optimiser_step(net, model, opt, batch, steps, cfg)
        _sync(device)
        step_times.append(time.perf_counter() - t0)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training diverged: loss is {lv} at step {steps}; lower --lr")
        losses.append(lv)
        tokens += gbs * n_tok
        steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{lv:.3f}")
        over = cfg.max_time_s is not None and elapsed() >= cfg.max_time_s
        if cfg.eval_every and steps % cfg.eval_every == 0:
            validate()
        if dist.any_flag(over):
            stopped_by = "time"
            break
        if store is not None and steps % cfg.checkpoint_every == 0 and steps < cfg.max_steps:
            save_checkpoint(finished=False)
    if not done and cfg.eval_every and (not val_history or val_history[-1][0] != steps):
        validate()  # the last model is a candidate too
    train_time = elapsed() if not done else prior_time
    # Read once, before the checkpoint is written: serialising it can raise the high-water
    # mark, and a run resumed after training must report the same peak as this one.
    # A run resumed after training measured nothing new: its peak is the one saved with training.
    peak_bytes = prior_peak if done else max(prior_peak, peak.peak_bytes())
    if not done:
        # Training is over: a kill during evaluation does not repeat it.
        save_checkpoint(finished=True, train_s=train_time, peak_bytes=peak_bytes)
    bar.close()

    record: dict[str, Any] = {
        "steps": steps, "stopped_by": stopped_by, "train_time_s": train_time,
        "step_time_s": statistics.median(step_times) if step_times else None,
        "tokens_per_s": tokens / train_time if train_time > 0 else None,
        "peak_mem_bytes": peak_bytes, "peak_mem_method": peak.info()["method"],
        "params": params, "final_train_loss": float(np.mean(losses[-10:])) if losses else None,
        "regime": adapters.model_regimes(model, cfg.length), "world_size": dist.world, "task_info": info.as_dict() if hasattr(info, "as_dict") else str(info),
    }
    if store is not None:
        record.update(resumed_from_step=resumed_from, resumes=resumes, checkpoint_time_s=checkpoint_time)
    if dist.is_main:
        t0 = time.perf_counter()
        if best is not None:
            model.load_state_dict(best["model"])
            record.update(best_step=best["step"], select_metric=best["metric"], select_score=best["score"],
                          val_history=val_history, validation_time_s=validation_time)
        record.update(evaluate(model, task, cfg.eval_split, eval_bs, cfg.eval_samples, cfg.length, device))
        record["eval_time_s"] = time.perf_counter() - t0
        if cfg.count_flops:
            t0 = time.perf_counter()
            fb = next(_batches(task, cfg))
            fwd, step = forward_and_step_flops(model, _to(fb, device))
            record.update(flops_forward=fwd, flops_train_step=step, flops_time_s=time.perf_counter() - t0)
        if save_params:
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, save_params)
        if save_dir:
            save_model_folder(model, info, save_dir)
    record["env"] = environment(device)
    dist.barrier()
    dist.close()
    return record


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point of an isolated training cell (:func:`wersa.bench.cell.run_cell`): ``spec`` is a ``TrainConfig`` dict."""
    return run_training(TrainConfig.from_dict(spec), progress=False)
