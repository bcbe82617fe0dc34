"""The ``wersa`` command line: ``bench``, ``scale``, ``report``, ``train``, ``data``, ``generate``.

Run ``wersa COMMAND --help`` for each command's options. ``python -m wersa`` is the same.
Bad input is a one-line ``error:`` naming the flag, exit status 1 or 2, and nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

DEFAULT_SCALE_LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
DESCRIPTION = ("wersa: linear-time attention for very long sequences. Commands: bench, scale, report, train, "
               "data, generate; run `wersa COMMAND --help` for each.")


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``wersa train: error: argument --length: ...``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``[default: X]`` once: not for ``None`` / ``False`` defaults, nor where the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or "%(default)" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        if not action.option_strings:
            return text
        return text + " [default: %(default)s]"


def _number(kind: type, low: float, inclusive: bool, what: str):
    """An argparse ``type=``: ``kind`` parsed and checked against ``low``."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}") from None
        if not (v >= low if inclusive else v > low) or v != v:
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}")
        return v

    parse.__name__ = what  # argparse names the type in its messages
    return parse


_pos_int = _number(int, 0, False, "a positive integer")
_nonneg_int = _number(int, 0, True, "an integer >= 0")
_pos_float = _number(float, 0.0, False, "a positive number")
_nonneg_float = _number(float, 0.0, True, "a number >= 0")


# ------------------------------------------------------------------ parsing helpers
def _value(text: str) -> Any:
    """``"3"`` -> 3, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2]; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _kv(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {flag} expects KEY=VALUE, got {item!r} (e.g. {flag} max_length=512)")
        out[key] = _value(val)
    return out


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    """``"256,1k"`` -> ``[256, 1024]``; every value at least ``minimum`` (lengths: 1)."""
    out = []
    for t in _csv(text) or []:
        t = t.lower()
        mult = 1
        if t.endswith("k"):
            t, mult = t[:-1], 1024
        try:
            out.append(int(t) * mult)
        except ValueError:
            raise SystemExit(f"error: {flag} expects comma-separated integers (1k = 1024), got {text!r}") from None
        if out[-1] < minimum:
            raise SystemExit(f"error: {flag} values must be >= {minimum}, got {text!r}")
    if not out:
        raise SystemExit(f"error: {flag} is empty")
    return out


def _check_mixers(names: list[str], plugins: list[str] | None, flag: str = "--mixers") -> None:
    from .bench import adapters

    adapters.load_plugins(plugins)
    for n in names:
        try:
            adapters.check_mixer(n)
        except adapters.Unavailable as exc:
            raise SystemExit(f"error: {flag}: {exc}") from None


def _check_tasks(names: list[str], flag: str = "--tasks") -> None:
    from .bench import adapters

    known = set(adapters.list_tasks())
    for n in names:
        if n not in known:
            try:
                from .tasks.registry import task_class

                task_class(n)  # raises with a "did you mean"
            except (ValueError, KeyError) as exc:
                raise SystemExit(f"error: {flag}: {exc}") from None
            raise SystemExit(f"error: {flag}: unknown task {n!r}; see `wersa data list`")


def _check_checkpoint_every(value: int | None) -> None:
    if value is not None and value < 0:
        raise SystemExit(f"error: --checkpoint-every must be >= 0 (0 = no checkpoints), got {value}")


CHECKPOINT_EVERY_HELP = "optimiser steps between checkpoints; 0 = no checkpoints"


# ------------------------------------------------------------------ commands
def _add_recipe_flags(p: argparse.ArgumentParser, title: str, defaults: str) -> None:
    g = p.add_argument_group(title, defaults)
    g.add_argument("--steps", type=_pos_int, help="optimiser steps (max_steps)")
    g.add_argument("--time-budget", type=_pos_float, metavar="S", help="training wall-time budget, seconds")
    g.add_argument("--batch-size", type=_pos_int, help="global batch size")
    g.add_argument("--lr", type=_pos_float, help="peak learning rate (AdamW, warm-up + cosine)")
    g.add_argument("--warmup", type=_nonneg_int, help="warm-up steps")
    g.add_argument("--hidden-size", type=_pos_int, help="model width")
    g.add_argument("--layers", type=_pos_int, help="number of blocks")
    g.add_argument("--heads", type=_pos_int, help="attention heads")
    g.add_argument("--eval-samples", type=_nonneg_int, help="cap on evaluated examples (0 = all)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="any other WersaConfig field, e.g. pooling=mean (repeatable)")


def _recipe_defaults() -> str:
    """TrainConfig's defaults, in words, for the help text."""
    from .bench.train import TrainConfig

    c, m = TrainConfig(mixer="", task=""), TrainConfig(mixer="", task="").model
    return (f"width {m.get('hidden_size')}, {m.get('num_hidden_layers')} layers, {m.get('num_attention_heads')} heads, "
            f"{c.max_steps} steps, batch {c.batch_size}, lr {c.lr:g}, {c.warmup_steps} warm-up steps, "
            f"{c.eval_samples} evaluated examples")


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {}
    for flag, key in (("steps", "max_steps"), ("time_budget", "max_time_s"), ("batch_size", "batch_size"),
                      ("lr", "lr"), ("warmup", "warmup_steps"), ("device", "device")):
        v = getattr(args, flag, None)
        if v is not None:
            r[key] = v
    if getattr(args, "eval_samples", None) is not None:
        r["eval_samples"] = args.eval_samples or None
    model: dict[str, Any] = {}
    for flag, key in (("hidden_size", "hidden_size"), ("layers", "num_hidden_layers"),
                      ("heads", "num_attention_heads")):
        v = getattr(args, flag, None)
        if v is not None:
            model[key] = v
    if getattr(args, "hidden_size", None) is not None:
        model.setdefault("intermediate_size", 2 * args.hidden_size)
    model.update(_kv(getattr(args, "model_option", None), "--model-option"))
    if model:
        r["model"] = model
    return r


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.presets import get_preset
    from .bench.report import make_report
    from .bench.sweep import Sweep, TaskEntry, run_sweep

    try:
        sweep = get_preset(args.preset) if args.preset else Sweep(mixers=[], tasks=[], name="custom")
    except ValueError as exc:
        raise SystemExit(f"error: --preset: {exc}") from None
    if args.mixers:
        sweep.mixers = _csv(args.mixers)
    if args.tasks:
        lengths = _ints(args.lengths, "--lengths") if args.lengths else [None]
        opts = _kv(args.task_option, "--task-option")
        entries = []
        for spec in _csv(args.tasks):
            name, _, ln = spec.partition(":")
            for n in (_ints(ln, f"--tasks {spec!r}: the length after ':'") if ln else lengths):
                if n is None:
                    raise SystemExit(f"error: --tasks {spec!r} needs a length: write {name}:LENGTH or pass --lengths")
                entries.append(TaskEntry(name, n, dict(opts), label=f"{name}-{n}"))
        sweep.tasks = entries
    if not sweep.mixers or not sweep.tasks:
        raise SystemExit("error: choose --preset (quick, standard, paper) or both --mixers and --tasks")
    if args.seeds:
        sweep.seeds = _ints(args.seeds, "--seeds", minimum=0)
    # Names are checked here, before anything is written or counted as "to run".
    if not args.model_factory:
        _check_mixers(sweep.mixers, args.plugin)
    if not args.task_factory:
        _check_tasks(sorted({e.name for e in sweep.tasks}))
    base = dict(model={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "intermediate_size": 128}) if not args.preset else {}
    over = _recipe_overrides(args)
    if "model" in over:
        over["model"] = {**sweep.recipe.get("model", base.get("model", {})), **over["model"]}
    sweep.recipe = {**base, **sweep.recipe, **over}
    for key in ("task_factory", "model_factory"):
        if getattr(args, key):
            sweep.recipe[key] = getattr(args, key)
    if args.mem_limit_gb is not None:
        sweep.mem_limit_gb = args.mem_limit_gb or None
    if args.timeout is not None:
        sweep.timeout_s = args.timeout
    if args.threads is not None:
        sweep.threads = args.threads
    if args.jobs is not None:
        sweep.jobs = args.jobs
    if args.checkpoint_every is not None:
        _check_checkpoint_every(args.checkpoint_every)
        sweep.checkpoint_every = args.checkpoint_every
    out = Path(args.out or f"results/{sweep.name}.jsonl")
    run_sweep(sweep, out, cache_dir=args.cache_dir, retry_failed=args.retry_failed, progress=not args.quiet,
              max_cells=args.max_cells, plugins=args.plugin, dry_run=args.dry_run)
    if args.dry_run or args.no_report:
        return 0
    report_dir = Path(args.report_dir or out.with_suffix("").as_posix() + "-report")
    make_report(out, report_dir, title=f"wersa bench: {sweep.name}")
    print(bench_summary(sweep, out))
    print(f"\nreport: {report_dir / 'report.md'}  results: {out}")
    return 0


def bench_summary(sweep, out: str | Path) -> str:
    """One line per cell of ``sweep`` from its records in ``out`` (the data, not the report's text)."""
    from .bench.results import latest_by_key, read_results
    from .bench.sweep import cell_configs, key_of, summary_line

    records = latest_by_key(read_results(out, warn=False))
    # The keys the sweep writes (its limits included); with a learning-rate grid, the later
    # seeds' cells are named once their rate is chosen from these records.
    keys = [key_of(cfg, sweep) for _, cfg in cell_configs(sweep, records)]
    latest = {r.get("key"): r for r in records}
    recs = [latest[k] for k in keys if k in latest]
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    head = f"{sweep.name}: {len(keys)} cells; " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    if len(recs) < len(keys):
        head += f", {len(keys) - len(recs)} not run yet"
    lines = [head]
    for r in recs:
        line = summary_line(r)
        if r.get("status") == "ok" and r.get("stopped_by") == "max_time_s":
            line += "  [stopped by the time budget]"
        lines.append(line)
    return "\n".join(lines)


def cmd_scale(args: argparse.Namespace) -> int:
    from .bench import adapters
    from .bench.report import make_report
    from .bench.scale import run_scale

    adapters.load_plugins(args.plugin)
    mixers = _csv(args.mixers) or adapters.list_mixers()
    if not mixers:
        raise SystemExit("error: no mixers are registered; pass --mixers or --plugin")
    _check_mixers(mixers, args.plugin)
    lengths = _ints(args.lengths, "--lengths") if args.lengths else DEFAULT_SCALE_LENGTHS
    options = _kv(args.mixer_option, "--mixer-option")
    _check_scale_shapes(mixers, args, options)
    out = Path(args.out)
    run_scale(mixers, lengths, str(out), dim=args.dim, num_heads=args.heads, batch_size=args.batch_size,
              causal=args.causal, device=args.device, threads=args.threads, warmup=args.warmup,
              repeats=args.repeats, mem_limit_gb=args.mem_limit_gb or None, timeout_s=args.timeout,
              mixer_options={m: dict(options) for m in mixers} if options else None, plugins=args.plugin,
              retry_failed=args.retry_failed, progress=not args.quiet)
    if not args.no_report:
        report_dir = Path(args.report_dir or out.with_suffix("").as_posix() + "-report")
        make_report(out, report_dir, title="wersa scale")
        print(f"report: {report_dir / 'report.md'}  plot: {report_dir / 'scale_time.png'}")
    return 0


def _check_scale_shapes(mixers: list[str], args: argparse.Namespace, options: dict[str, Any]) -> None:
    """Build each mixer once at ``--dim`` / ``--heads`` (cheap, no sequence) so a bad shape or option
    is an error now, not a failed record per length."""
    from .bench import adapters

    if args.dim % args.heads:
        raise SystemExit(f"error: --dim {args.dim} is not divisible by --heads {args.heads}")
    form = "causal" if args.causal else "bidirectional"
    for name in mixers:
        if not getattr(adapters.mixer_capabilities(name), form, True):
            continue  # left out by run_scale, which says so
        try:
            adapters.build_mixer(name, args.dim, args.heads, causal=args.causal, **options)
        except (ValueError, TypeError) as exc:
            opts = "".join(f" --mixer-option {k}={v}" for k, v in options.items())
            raise SystemExit(f"error: --mixers {name} with --dim {args.dim} --heads {args.heads}{opts}: "
                             f"{exc}") from None


def _check_results_file(path: Path) -> None:
    """A results file is JSON lines of records (written by bench, scale or train --json-out)."""
    if not path.is_file():
        return  # make_report says it does not exist and what to run
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    first = None
                if not isinstance(first, dict) or "status" not in first:
                    raise SystemExit(f"error: results: {path} is not a results file (JSON lines written by "
                                     f"`wersa bench`, `wersa scale` or `wersa train --json-out`)")
                return


def cmd_report(args: argparse.Namespace) -> int:
    from .bench.report import make_report

    results = Path(args.results)
    _check_results_file(results)
    try:
        rep = make_report(results, Path(args.out_dir or results.with_suffix("").as_posix() + "-report"),
                          title=args.title, recompute_baselines=args.recompute_baselines, costs=args.costs)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.print:
        print(rep["markdown"])
    print("wrote: " + ", ".join(rep["files"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .bench.train import TrainConfig, run_training

    import os

    cfg_fields: dict[str, Any] = dict(mixer=args.mixer, task=args.task, length=args.length, seed=args.seed,
                                      task_options=_kv(args.task_option, "--task-option"),
                                      mixer_options=_kv(args.mixer_option, "--mixer-option"),
                                      cache_dir=args.cache_dir, plugins=args.plugin or [],
                                      task_factory=args.task_factory, model_factory=args.model_factory,
                                      threads=args.threads, count_flops=not args.no_flops,
                                      checkpoint_dir=args.checkpoint_dir)
    _check_checkpoint_every(args.checkpoint_every)
    if args.checkpoint_every == 0:  # as in bench: 0 = no checkpoints
        cfg_fields["checkpoint_dir"] = None
    elif args.checkpoint_every is not None:
        if not args.checkpoint_dir:
            raise SystemExit("error: --checkpoint-every needs --checkpoint-dir DIR")
        cfg_fields["checkpoint_every"] = args.checkpoint_every
    over = _recipe_overrides(args)
    if "model" in over:
        over["model"] = {**TrainConfig(mixer="", task="").model, **over["model"]}
    cfg_fields.update(over)
    if not (args.model_factory or args.task_factory):
        _check_mixers([args.mixer], args.plugin, flag="--mixer")
    if not args.task_factory:
        _check_tasks([args.task], flag="--task")
    cfg = TrainConfig.from_dict(cfg_fields)
    if args.quiet and args.save:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    rec = run_training(cfg, save_params=args.save_params, progress=not args.quiet, save_dir=args.save)
    if int(os.environ.get("RANK", "0")) == 0:
        rec = {"status": "ok", "config": cfg.to_dict(), **rec}
        if args.json_out:
            from .bench.results import append_result

            append_result(args.json_out, rec)
        if args.save:
            (Path(args.save) / "training.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
            print(f"saved: {args.save} (wersa generate --model {args.save} --prompt ...)", file=sys.stderr)
        keys = ("accuracy", "auc", "eval_loss", "bpb", "steps", "train_time_s", "step_time_s", "peak_mem_bytes",
                "flops_forward", "flops_train_step", "params")
        print(json.dumps({k: rec[k] for k in keys if k in rec}, indent=1))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .bench import adapters

    if args.data_cmd == "list" or args.data_cmd is None:
        names = adapters.list_tasks()
        print("\n".join(names) if names else "no tasks are registered")
        return 0
    try:
        print(adapters.describe_task(args.task, _kv(args.task_option, "--task-option")))
    except (ValueError, adapters.Unavailable) as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


class _ByteStreamer:
    """Prints generated byte tokens as they come (a ``transformers`` streamer: ``put`` / ``end``).

    Token ids are ``byte + offset``; an incremental UTF-8 decoder holds back a
    multi-byte character until it is complete.
    """

    def __init__(self, offset: int, prompt_len: int, out=None):
        import codecs

        self.offset, self.skip, self.out = offset, prompt_len, out or sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def put(self, value) -> None:
        ids = [int(t) for t in value.reshape(-1).tolist()]
        if self.skip:  # generate() passes the prompt first
            self.skip, ids = max(0, self.skip - len(ids)), ids[self.skip:]
        data = bytes(t - self.offset for t in ids if self.offset <= t < self.offset + 256)
        self.out.write(self.decoder.decode(data))
        self.out.flush()

    def end(self) -> None:
        self.out.write(self.decoder.decode(b"", final=True) + "\n")
        self.out.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise SystemExit(f"error: --model {path} does not exist or holds no config.json; pass a folder written by "
                         f"`wersa train ... --save DIR` or WersaForCausalLM.save_pretrained")
    if args.max_new_tokens < 1:
        raise SystemExit(f"error: --max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise SystemExit(f"error: --temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise SystemExit(f"error: --top-k must be >= 0 (0 = no cut), got {args.top_k}")
    import torch

    from .bench.train import BYTE_TOKENS_FILE
    from .models import WersaConfig, WersaForCausalLM

    config = WersaConfig.from_pretrained(str(path))
    archs = getattr(config, "architectures", None) or ["WersaForCausalLM"]
    if getattr(config, "vocab_size", None) is None or "WersaForCausalLM" not in archs:
        raise SystemExit(f"error: --model {path} is not a causal language model (train it on a language "
                         f"modelling task such as shakespeare_lm)")
    meta_file = path / BYTE_TOKENS_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"offset": 1, "pad_id": 0}
    if not meta_file.is_file() and config.vocab_size != 257:
        raise SystemExit(f"error: --model {path} has no {BYTE_TOKENS_FILE} and a vocabulary of {config.vocab_size} "
                         f"tokens; generate decodes byte-level models only (257 tokens: byte + 1, 0 = padding)")
    offset, pad_id = int(meta["offset"]), int(meta["pad_id"])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the generated text is the output
    model = WersaForCausalLM.from_pretrained(str(path), compile_step=args.compile_step).eval()
    # There is no begin-of-text token: an empty prompt starts after a newline (not printed).
    context = args.prompt.encode("utf-8") or b"\n"
    ids = torch.tensor([[b + offset for b in context]], dtype=torch.long)
    torch.manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    streamer = _ByteStreamer(offset, ids.shape[1])
    sample = args.temperature > 0
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                       do_sample=sample, temperature=args.temperature if sample else None,
                       top_k=(args.top_k or None) if sample else None, top_p=None,
                       suppress_tokens=[pad_id], pad_token_id=pad_id, streamer=streamer)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .bench.presets import PRESET_HELP

    fmt = _HelpFormatter
    p = _Parser(prog="wersa", description=DESCRIPTION, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # bench
    b = sub.add_parser("bench", formatter_class=fmt, help="train and evaluate mixers on tasks (resumable sweep)",
                       description="Train and evaluate a model per (mixer, task, length, seed) cell with one fair "
                                   "recipe, each cell in its own memory-capped process; append results to --out "
                                   "(re-running resumes) and write a report. Presets: "
                                   + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
    b.add_argument("--preset", choices=None, metavar="NAME", help="quick, standard or paper")
    b.add_argument("--mixers", help="comma-separated mixers (overrides the preset's)")
    b.add_argument("--tasks", help="comma-separated tasks, each NAME or NAME:LENGTH (overrides the preset's)")
    b.add_argument("--lengths", help="lengths for tasks given without one, e.g. 256,512,1k")
    b.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="option for --tasks (repeatable)")
    b.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    b.add_argument("--out", help="results file (JSON lines) [default: results/<preset>.jsonl]")
    b.add_argument("--report-dir", help="report folder [default: <out>-report]")
    b.add_argument("--cache-dir", help="task data cache [default: <out folder>/data-cache]")
    b.add_argument("--mem-limit-gb", type=_nonneg_float,
                   help="memory a cell may add before it is recorded as OOM (0 = none) [default: the preset's, 8]")
    b.add_argument("--timeout", type=_pos_float, metavar="S",
                   help="hard time limit per cell, seconds (recorded as timeout) [default: the preset's, 900]")
    b.add_argument("--threads", type=_pos_int, help="torch threads per cell (recorded)")
    b.add_argument("--jobs", type=_pos_int, metavar="N",
                   help="cells run at once, each in its own process (small models: one single-thread cell per "
                        "core finishes more cells per hour than one cell on every core) [default: the preset's, 1]")
    b.add_argument("--retry-failed", action="store_true", help="re-run cells recorded as oom/timeout/error")
    b.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"{CHECKPOINT_EVERY_HELP} (kept in <out>.ckpt/ until the cell is recorded) [default: 50]")
    b.add_argument("--max-cells", type=_pos_int, help="run at most this many cells now (the rest on the next run)")
    b.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    b.add_argument("--no-report", action="store_true", help="do not write the report after the sweep")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE first (registers mixers/tasks)")
    b.add_argument("--task-factory", help=argparse.SUPPRESS)
    b.add_argument("--model-factory", help=argparse.SUPPRESS)
    _add_recipe_flags(b, "training recipe", f"Each flag overrides the preset's value; without a preset: "
                                           f"{_recipe_defaults()}.")
    b.set_defaults(func=cmd_bench)

    # scale
    s = sub.add_parser("scale", formatter_class=fmt, help="forward / forward+backward time and memory vs length",
                       description="Time and peak memory of each mixer alone on x: (B, N, D) across lengths, each "
                                   "(mixer, length) in its own memory-capped process; OOM and time-outs recorded. "
                                   "Writes a log-log plot of time vs length.")
    s.add_argument("--mixers", help="comma-separated mixers [default: all registered]")
    s.add_argument("--lengths", help="comma-separated lengths, 1k = 1024 [default: 1k,2k,4k,...,128k]")
    s.add_argument("--dim", type=_pos_int, default=256, help="model width D (divisible by --heads)")
    s.add_argument("--heads", type=_pos_int, default=4, help="heads")
    s.add_argument("--batch-size", type=_pos_int, default=1, help="batch B")
    s.add_argument("--causal", action="store_true", help="causal form of each mixer")
    s.add_argument("--mixer-option", action="append", metavar="KEY=VALUE", help="option for every mixer")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--threads", type=_pos_int, help="torch threads (recorded)")
    s.add_argument("--warmup", type=_nonneg_int, default=1, help="untimed passes first")
    s.add_argument("--repeats", type=_pos_int, default=3, help="timed passes (median reported)")
    s.add_argument("--mem-limit-gb", type=_nonneg_float, default=8.0, help="memory cap per measurement (0 = none)")
    s.add_argument("--timeout", type=_pos_float, default=300.0, metavar="S", help="time limit per measurement")
    s.add_argument("--out", default="results/scale.jsonl", help="results file (JSON lines, resumable)")
    s.add_argument("--report-dir", help="report folder [default: <out>-report]")
    s.add_argument("--retry-failed", action="store_true", help="re-run measurements recorded as failed")
    s.add_argument("--no-report", action="store_true", help="do not write the report")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE first (registers mixers)")
    s.set_defaults(func=cmd_scale)

    # report
    r = sub.add_parser("report", formatter_class=fmt, help="Markdown/CSV tables and PNG plots from a results file")
    r.add_argument("results", help="results file written by bench or scale (JSON lines)")
    r.add_argument("--out-dir", help="output folder [default: <results>-report]")
    r.add_argument("--title", help="report title")
    r.add_argument("--recompute-baselines", action="store_true",
                   help="rebuild each task's data to fill in majority-class baselines that older records lack")
    r.add_argument("--print", action="store_true", help="also print report.md to the terminal")
    r.add_argument("--costs", metavar="COSTS",
                   help="isolated step costs (JSON lines from `python -m wersa.bench.cost`) for the study report: "
                        "cost per step beside the steps to reach exact attention's validation score")
    r.set_defaults(func=cmd_report)

    # train
    t = sub.add_parser("train", formatter_class=fmt, help="one training run (works under torchrun)",
                       description="Train and evaluate one model on one task; the code path of every bench cell. "
                                   "Runs unchanged under `torchrun --nproc_per_node=N -m wersa train ...` "
                                   "(DDP; gloo on CPU, NCCL on GPU); rank 0 evaluates and writes. With --save DIR "
                                   "the model can then be loaded by `wersa generate --model DIR`.")
    t.add_argument("--mixer", required=True, help="mixer name (see wersa.list_mixers())")
    t.add_argument("--task", required=True, help="task name (see `wersa data list`)")
    t.add_argument("--length", type=_pos_int, help="pad every batch to this length [default: longest in batch]")
    t.add_argument("--seed", type=int, default=0, help="seed (init, shuffling, dropout)")
    t.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task option (repeatable)")
    t.add_argument("--mixer-option", action="append", metavar="KEY=VALUE", help="mixer option (repeatable)")
    t.add_argument("--threads", type=_pos_int, help="torch threads")
    t.add_argument("--cache-dir", help="task data cache folder")
    t.add_argument("--json-out", help="append the result record to this JSON-lines file")
    t.add_argument("--save", metavar="DIR", help="write a save_pretrained folder (model, config, byte "
                   "convention, training record) that `wersa generate --model DIR` and "
                   "AutoModelForCausalLM.from_pretrained load")
    t.add_argument("--save-params", metavar="FILE", help="save the final parameters (state dict) to this file")
    t.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    t.add_argument("--checkpoint-dir", metavar="DIR",
                   help="save resumable checkpoints here; re-running the same command resumes from the newest")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help=f"{CHECKPOINT_EVERY_HELP}, as in bench (with --checkpoint-dir) [default: 50]")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--plugin", action="append", metavar="MODULE", help="import MODULE first")
    t.add_argument("--task-factory", help=argparse.SUPPRESS)
    t.add_argument("--model-factory", help=argparse.SUPPRESS)
    _add_recipe_flags(t, "training recipe", f"Defaults: {_recipe_defaults()}.")
    t.set_defaults(func=cmd_train)

    # data
    d = sub.add_parser("data", formatter_class=fmt, help="list and describe tasks")
    dsub = d.add_subparsers(dest="data_cmd", metavar="ACTION")
    dsub.add_parser("list", help="registered tasks")
    dd = dsub.add_parser("describe", help="what a task yields (sizes, lengths, vocabulary, source)")
    dd.add_argument("task", help="task name")
    dd.add_argument("--task-option", action="append", metavar="KEY=VALUE", help="task option (repeatable)")
    d.set_defaults(func=cmd_data)

    # generate
    g = sub.add_parser("generate", formatter_class=fmt, help="generate bytes from a saved causal LM")
    g.add_argument("--model", required=True, metavar="DIR",
                   help="folder written by `wersa train ... --save DIR` (or WersaForCausalLM.save_pretrained)")
    g.add_argument("--prompt", default="", help="prompt text (UTF-8 bytes) [default: empty, start after a newline]")
    g.add_argument("--max-new-tokens", type=_pos_int, default=100, help="bytes to generate")
    g.add_argument("--temperature", type=_nonneg_float, default=0.0, help="sampling temperature; 0 = greedy")
    g.add_argument("--top-k", type=_nonneg_int, default=0, help="sample from the k likeliest bytes only (0 = all)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--compile-step", action="store_true",
                   help="decode through torch.compile of the mixers' token step (faster per token after a "
                        "compilation of a few seconds; needs a C++ compiler)")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .bench.adapters import Unavailable

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, Unavailable) as exc:  # bad arguments found deep down: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
