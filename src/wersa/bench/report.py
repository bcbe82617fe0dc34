"""``wersa report``: Markdown and CSV tables and PNG plots from a results file.

Training cells (``wersa bench``): ``report.md`` opens with how to read it (what a cell
is, what the columns mean, which numbers to trust, where costs come from) and the
warnings (:func:`~wersa.bench.results.format_warnings`: cells stopped by their time
budget, cells run under load above the core count), then one table per task: per
mixer the steps run, accuracy (mean ± std over seeds, 95% interval), AUC, the
majority-class and chance baselines, a verdict (noise / above baseline, from
:func:`study_rows`), time per step, peak memory and FLOPs per training step. Rows
with warnings are marked ⚠. ``train.csv`` keeps every column; ``accuracy_vs_time.png``
has one panel per task with its baselines as horizontal lines; ``*_vs_length.png``
only exist for tasks run at several lengths (one panel each).
Scaling records (``wersa scale``) give one row per (mixer, length).
Accuracy-study records (with validation scores) add ``study.md`` (:func:`make_study_report`).
"""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .results import cell_warnings, format_warnings, latest_by_key, middle_first, read_results

TRAIN_COLUMNS = ["task", "mixer", "length", "seeds", "status", "accuracy", "auc", "bpb", "train_time_s",
                 "step_time_ms", "tokens_per_s", "gflops_forward", "gflops_train_step", "peak_mem_mib",
                 "params", "steps"]
SCALE_COLUMNS = ["mixer", "length", "status", "fwd_ms", "fwd_mem_mib", "fwdbwd_ms", "fwdbwd_mem_mib",
                 "gflops_forward"]


def _stats(values: Iterable[float | None]) -> tuple[float, float] | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _status(recs: list[dict[str, Any]]) -> str:
    sts = [r["status"] for r in recs]
    for st, label in (("oom", "OOM"), ("timeout", "timeout"), ("error", "error")):
        if st in sts:
            n = sts.count(st)
            return label if n == len(sts) else f"{label} ({n}/{len(sts)})"
    if all(s == "skipped" for s in sts):
        return "skipped"
    return "ok"


def _label(r: dict[str, Any]) -> str:
    return r.get("task_label") or r["task"]


def train_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task label, mixer); numeric cells are ``(mean, std)`` over the seeds that finished."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in latest_by_key(records):
        if r.get("bench") != "train":
            continue
        groups[(_label(r), r["mixer"])].append(r)
    rows = []
    for (task, mixer), recs in groups.items():
        ok = [r for r in recs if r["status"] == "ok"]

        def s(field: str, scale: float = 1.0) -> tuple[float, float] | None:
            st = _stats(r.get(field) for r in ok)
            return None if st is None else (st[0] * scale, st[1] * scale)

        steps = [r["steps"] for r in ok if r.get("steps") is not None]
        rows.append({
            "task": task, "mixer": mixer, "length": recs[0].get("length"),
            "seeds": len(ok), "status": _status(recs),
            "accuracy": s("accuracy"), "auc": s("auc"), "bpb": s("bpb"),
            "train_time_s": s("train_time_s"), "step_time_ms": s("step_time_s", 1e3),
            "tokens_per_s": s("tokens_per_s"),
            "gflops_forward": s("flops_forward", 1e-9), "gflops_train_step": s("flops_train_step", 1e-9),
            "peak_mem_mib": s("peak_mem_bytes", 1 / 2**20), "params": s("params"), "steps": s("steps"),
            "reason": next((r.get("error") or r.get("reason") for r in recs if r["status"] != "ok"), None),
            "task_name": recs[0]["task"], "steps_range": (min(steps), max(steps)) if steps else None,
            "kind": (recs[0].get("task_info") or {}).get("kind"),
        })
    rows.sort(key=lambda r: (r["length"] or 0, r["task"], r["mixer"]))
    return rows


# ------------------------------------------------------------------ baselines and warnings
def _config(rec: dict[str, Any]) -> dict[str, Any]:
    return rec.get("config") or {}


def _with_run_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with ``cpu_count`` / ``load_start`` / ``threads`` / ``stopped_by`` taken from older fields
    where it predates them (``env.cpu_count``, ``env.load_avg``, ``env.torch_threads``, a ``timeout``
    status), so :func:`~wersa.bench.results.cell_warnings` reads every record the same way."""
    env = rec.get("env") or {}
    out = dict(rec)
    if out.get("cpu_count") is None and env.get("cpu_count"):
        out["cpu_count"] = env["cpu_count"]
    if out.get("load_start") is None and out.get("load_end") is None and env.get("load_avg"):
        out["load_start"] = env["load_avg"][0]
    if out.get("threads") is None and env.get("torch_threads"):
        out["threads"] = env["torch_threads"]
    if out.get("stopped_by") is None and out.get("status") == "timeout":
        out["stopped_by"] = "time"
    return out


def record_warnings(rec: dict[str, Any]) -> list[str]:
    """The warnings of one record (as :func:`~wersa.bench.results.format_warnings` finds them)."""
    return cell_warnings(rec) or list(rec.get("warnings") or [])


def _recomputed_majority(rec: dict[str, Any], cache: dict[str, float | None]) -> float | None:
    """The accuracy of always answering the train split's most frequent class, on the examples the
    cell scored (:func:`wersa.bench.evaluation.eval_indices`), from the task rebuilt with the
    cell's options; ``None`` where the task cannot be built here."""
    import json

    import numpy as np

    from . import adapters
    from .evaluation import eval_indices

    cfg = _config(rec)
    split = rec.get("eval_split") or cfg.get("eval_split") or "test"
    limit = cfg.get("eval_samples", rec.get("eval_samples"))
    what = json.dumps([rec["task"], cfg.get("task_options") or {}, cfg.get("task_factory"), split, limit],
                      sort_keys=True, default=str)
    if what not in cache:
        try:
            task = adapters.build_task(rec["task"], cfg.get("task_options") or {}, cfg.get("task_factory"),
                                       cache_dir=cfg.get("cache_dir"))
            train = task.split("train").labels.numpy()
            scored = task.split(split).labels.numpy()
            idx = eval_indices(len(scored), limit, scored)
            scored = scored if idx is None else scored[idx]
            cache[what] = float((scored == np.bincount(train).argmax()).mean())
        except Exception:  # noqa: BLE001 - a task not available here has no baseline: shown as unknown
            cache[what] = None
    return cache[what]


def with_baselines(records: list[dict[str, Any]], recompute: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Records with the classification baselines filled in where they predate them.

    ``chance_accuracy`` (1 / classes) comes from the record's ``task_info``. With ``recompute``,
    a missing ``majority_accuracy`` is recomputed from the task (it builds the task's data:
    seconds for small generated tasks, longer for others); without it, it stays unknown.
    Returns the records and how many got a recomputed majority baseline.
    """
    out, cache, n = [], {}, 0
    for rec in records:
        clf = rec.get("bench") == "train" and rec.get("status") == "ok" and rec.get("accuracy") is not None
        if clf and (rec.get("chance_accuracy") is None or rec.get("majority_accuracy") is None):
            rec = dict(rec)
            classes = (rec.get("task_info") or {}).get("num_classes")
            if rec.get("chance_accuracy") is None and classes:
                rec["chance_accuracy"] = 1.0 / classes
            if rec.get("majority_accuracy") is None and recompute:
                rec["majority_accuracy"] = _recomputed_majority(rec, cache)
                n += rec["majority_accuracy"] is not None
        out.append(rec)
    return out, n


def _annotate(trows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Add to each training row its accuracy interval, baselines, verdict and warnings (in place)."""
    study = {(r["label"], r["mixer"]): r for r in study_rows(records)}
    warned: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in latest_by_key(records):
        if r.get("bench") == "train":
            warned[(_label(r), r["mixer"])] += record_warnings(_with_run_fields(r))
    for row in trows:
        st = study.get((row["task"], row["mixer"])) or {}
        row["accuracy_ci"], row["bpb_ci"], row["token_accuracy_ci"] = (st.get("accuracy"), st.get("bpb"),
                                                                       st.get("token_accuracy"))
        row["kind"] = st.get("kind") or row.get("kind")
        row["majority"], row["chance"], row["unigram_bpb"] = st.get("majority"), st.get("chance"), st.get("unigram_bpb")
        if not st:
            row["verdict"] = row["status"]
        elif st.get("noise") is None:
            row["verdict"] = None
        else:
            row["verdict"] = "noise" if st["noise"] else "above baseline"
        ws = warned.get((row["task"], row["mixer"])) or []
        row["warnings"] = "; ".join(dict.fromkeys(ws)) or None


def _span(values: Iterable[Any], fmt=str) -> str | None:
    """``"a"`` when every value is the same, ``"a–b"`` for a numeric range, else ``"a, b"``."""
    vals = sorted({v for v in values if v is not None}, key=lambda v: (isinstance(v, str), v))
    if not vals:
        return None
    if len(vals) == 1:
        return fmt(vals[0])
    if all(isinstance(v, (int, float)) for v in vals):
        return f"{fmt(vals[0])}–{fmt(vals[-1])}"
    return ", ".join(fmt(v) for v in vals)


def _setup_line(records: list[dict[str, Any]]) -> str:
    """The recipe and machine the training cells shared, from their records."""
    recs = [_with_run_fields(r) for r in latest_by_key(records) if r.get("bench") == "train"
            and r.get("status") != "skipped"]
    cfgs = [_config(r) for r in recs]
    models = [c.get("model") or {} for c in cfgs]
    parts = []
    layers, hidden = _span(m.get("num_hidden_layers") for m in models), _span(m.get("hidden_size") for m in models)
    if layers and hidden:
        heads = _span(m.get("num_attention_heads") for m in models)
        parts.append(f"a {layers}-layer model of width {hidden}" + (f" with {heads} heads" if heads else ""))
    batch = _span(c.get("batch_size") for c in cfgs)
    if batch:
        parts.append(f"batch {batch}")
    steps = _span(c.get("max_steps") for c in cfgs)
    secs = _span((c.get("max_time_s") for c in cfgs), lambda v: f"{v:g}")
    if steps and secs:
        parts.append(f"at most {steps} steps or {secs} s of training, whichever comes first")
    elif steps:
        parts.append(f"{steps} steps")
    scored = _span(r.get("eval_samples") for r in recs)
    if scored:
        parts.append(f"{scored} test examples scored")
    seeds = _span(len({r.get("seed") for r in recs if _label(r) == lab and r["mixer"] == m})
                  for lab, m in {(_label(r), r["mixer"]) for r in recs})
    if seeds:
        parts.append(f"{seeds} seed{'' if seeds == '1' else 's'} per row")
    machine = []
    cores = _span(r.get("cpu_count") for r in recs)
    if cores:
        machine.append(f"{cores} cores")
    threads = _span(r.get("threads") for r in recs)
    if threads:
        machine.append(f"{threads} thread{'' if threads == '1' else 's'} per cell")
    loads = [x for r in recs for x in (r.get("load_start"), r.get("load_end")) if x is not None]
    if loads:
        machine.append(f"load average {min(loads):.1f}–{max(loads):.1f}")
    line = ("Here: " + "; ".join(parts) + ".") if parts else ""
    if machine:
        line += f" Machine: {', '.join(machine)}."
    return line.strip()


HOW_TO_READ = """**A cell** is one training run: the same small model, with one *mixer* (the layer
that mixes information along the sequence: softmax attention, or a linear-time replacement
such as WERSA) swapped in, trained with one recipe on one task at one length and one seed,
then scored on the test split (the same examples for every mixer). One table per task
below, one row per mixer. {setup}

**Columns.** `accuracy %`: mean over seeds (± the spread across seeds when there are
several), then the 95% interval [low, high] and n = seeds; with one seed the interval is
only the test set's sampling error, not the seed-to-seed spread. `AUC`: macro
one-vs-rest ROC AUC (0.5 = chance; an AUC well above 0.5 beside an accuracy at the
majority means the model ranks examples but still answers one class). `majority %`: the accuracy of always answering the
training split's most frequent class; `chance %`: 1 / classes ("—": not recorded). For
language modelling `bits per byte` (lower is better) stands beside `unigram bpb`, the
bits per byte of the training text's byte frequencies. `steps`: optimiser steps actually
run.

**Which numbers to trust.** `verdict` **noise**: the interval reaches down to the majority
baseline (or, in bits per byte, up to the unigram one): the mixer learned nothing
measurable here, so neither rank nor compare noise rows. `above baseline`: it learned
something; two such rows differ only where their intervals do not overlap. "—": no
baseline recorded, so no verdict. Every cell has the same step budget and the same
wall-time budget: a cell that ran out of time first (⚠, listed under Warnings) trained
fewer steps, and its accuracy measures the machine's speed, not the mechanism.

**Where costs come from.** `ms/step`: median wall time of one training step (forward,
backward, optimiser) inside the cell's own process on this machine, so other work on
the machine (⚠ load above the core count) inflates it; `peak MiB`: the memory training
added; `GFLOP/step`: floating-point operations of one training step, counted (not timed)
and the same on any machine. Method: docs/benchmarks.md; isolated cost measurements:
docs/performance.md. Every column (training time, tokens/s, parameters, spreads) is in
`train.csv`."""


def _pct(v: float | None) -> str:
    return "—" if v is None else _fmt(100 * v)


def _metric_cell(ci: dict[str, Any] | None, pct: bool) -> str:
    """``mean ± std [lo, hi] (n=seeds)`` (the spread only with several seeds), ``—`` when missing."""
    if not ci:
        return "—"
    k = 100.0 if pct else 1.0
    text = f"{k * ci['mean']:.3g}"
    if ci["n"] > 1:
        text += f" ± {k * ci['std']:.2g}"
    if not math.isnan(ci["lo"]):
        text += f" [{k * ci['lo']:.3g}, {k * ci['hi']:.3g}]"
    return text + f" (n={ci['n']})"


def _mean_cell(v: tuple[float, float] | None) -> str:
    return "—" if v is None else _fmt(v[0])


def task_table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of one task's rows (annotated training rows, one per mixer)."""
    kinds = {r.get("kind") for r in rows if r.get("accuracy_ci") or r.get("bpb_ci") or r.get("token_accuracy_ci")}
    if any(r.get("bpb_ci") for r in rows):
        head = ["mixer", "steps", "bits per byte", "unigram bpb", "next-byte acc %"]
    elif "language_modeling" in kinds:
        head = ["mixer", "steps", "recall acc %", "majority %"]
    else:
        head = ["mixer", "steps", "accuracy %", "AUC", "majority %", "chance %"]
    head += ["verdict", "ms/step", "peak MiB", "GFLOP/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo_hi = r.get("steps_range")
        steps = "—" if not lo_hi else (str(lo_hi[0]) if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}–{lo_hi[1]}")
        verdict = {"noise": "**noise**", None: "—"}.get(r.get("verdict"), r.get("verdict"))
        cells = [r["mixer"] + (" ⚠" if r.get("warnings") else ""), steps]
        if head[2] == "bits per byte":
            cells += [_metric_cell(r.get("bpb_ci"), False),
                      "—" if r.get("unigram_bpb") is None else _fmt(r["unigram_bpb"]),
                      _metric_cell(r.get("token_accuracy_ci"), True)]
        elif head[2] == "recall acc %":
            cells += [_metric_cell(r.get("token_accuracy_ci"), True), _pct(r.get("majority"))]
        else:
            auc = r.get("auc")
            cells += [_metric_cell(r.get("accuracy_ci"), True),
                      "—" if auc is None else (_fmt(auc[0]) + (f" ± {auc[1]:.2g}" if auc[1] else "")),
                      _pct(r.get("majority")), _pct(r.get("chance"))]
        cells += [verdict, _mean_cell(r.get("step_time_ms")), _mean_cell(r.get("peak_mem_mib")),
                  _mean_cell(r.get("gflops_train_step"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def scale_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in latest_by_key(records):
        if r.get("bench") != "scale":
            continue
        ok = r["status"] == "ok"
        bwd_ok = ok and r.get("fwdbwd_status") == "ok"
        status = r["status"].upper() if r["status"] in ("oom",) else r["status"]
        if ok and not bwd_ok:
            status = f"fwd+bwd {r.get('fwdbwd_status', '?').upper()}"
        rows.append({
            "mixer": r["mixer"], "length": r["length"], "status": status,
            "fwd_ms": r["fwd_time_s"] * 1e3 if ok else None,
            "fwd_mem_mib": r["fwd_peak_bytes"] / 2**20 if ok else None,
            "fwdbwd_ms": r["fwdbwd_time_s"] * 1e3 if bwd_ok else None,
            "fwdbwd_mem_mib": r["fwdbwd_peak_bytes"] / 2**20 if bwd_ok else None,
            "gflops_forward": r["flops_forward"] * 1e-9 if ok and r.get("flops_forward") is not None else None,
            "reason": r.get("error") or r.get("reason"),
        })
    rows.sort(key=lambda r: (r["mixer"], r["length"]))
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        mean, std = v
        if abs(mean) >= 1000:
            return f"{mean:,.0f} ± {std:,.0f}" if std else f"{mean:,.0f}"
        return f"{mean:.{digits}g} ± {std:.2g}" if std else f"{mean:.{digits}g}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    used = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in used) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    """CSV with ``<col>`` (mean) and ``<col>_std`` columns for the numeric fields."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        header = []
        for c in columns:
            header.append(c)
            if any(isinstance(r.get(c), tuple) for r in rows):
                header.append(f"{c}_std")
        w.writerow(header)
        for r in rows:
            line = []
            for c in columns:
                v = r.get(c)
                has_std = any(isinstance(x.get(c), tuple) for x in rows)
                if isinstance(v, tuple):
                    line += [v[0], v[1]]
                else:
                    line.append("" if v is None else v)
                    if has_std:
                        line.append("")
            w.writerow(line)


Series = dict[str, list[tuple[float, float]]]


def _plot_panels(panels: list[dict[str, Any]], path: Path, xlabel: str, loglog: bool, connect: bool) -> bool:
    """One figure, one panel per entry of ``panels`` (``title``, ``ylabel``, ``series``: mixer ->
    [(x, y)], ``hlines``: [(y, label, style)]), each with its own legend; ``False`` if nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in panels if any(p["series"].values())]
    if not panels:
        return False
    # One colour and marker per mixer, the same in every panel (more mixers than the default
    # 10-colour cycle); WERSA drawn on top with a heavier line so the eye finds it first.
    colours = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    markers = "osD^vP*Xhp<>d"
    mixers = sorted({m for p in panels for m, pts in p["series"].items() if pts})
    style = {m: (markers[i % len(markers)], "black" if m == "wersa" else colours[i % len(colours)])
             for i, m in enumerate(mixers)}
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for name, pts in sorted(panel["series"].items()):
            if not pts:
                continue
            pts = sorted(pts)
            main = name == "wersa"
            marker, colour = style[name]
            # Points may carry their interval, (x, y, low, high): drawn as an error bar.
            err = None
            if all(len(p) == 4 and not math.isnan(p[2]) for p in pts):
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=err, linestyle="-" if connect else "none",
                        marker=marker, color=colour, linewidth=2.6 if main else 1.3, markersize=7 if main else 5,
                        elinewidth=1, capsize=3, zorder=3 if main else 2, label=name)
        for y, label, line in panel.get("hlines", []):  # baselines: greys, never a mixer's colour
            ax.axhline(y, color="#333333" if line == "--" else "#999999", linestyle=line, linewidth=1.2, label=label)
        if loglog:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel["title"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_lines(rows, x: str, y: str, path: Path, xlabel: str, ylabel: str, title: str, loglog: bool) -> bool:
    """One panel: ``y`` against ``x`` per mixer, joined by lines."""
    series: Series = defaultdict(list)
    for r in rows:
        xv, yv = r.get(x), r.get(y)
        xv = xv[0] if isinstance(xv, tuple) else xv
        yv = yv[0] if isinstance(yv, tuple) else yv
        if xv is not None and yv is not None:
            series[r["mixer"]].append((float(xv), float(yv)))
    return _plot_panels([{"title": title, "ylabel": ylabel, "series": series}], path, xlabel, loglog, True)


def _score(row: dict[str, Any]) -> tuple[str, dict[str, Any] | None, list[tuple[float, str, str]]]:
    """What a row's panel plots: (axis label, :func:`mean_ci` value, baselines as (y, label, line style))."""
    if row.get("bpb_ci"):
        base = [(row["unigram_bpb"], "unigram", "--")] if row.get("unigram_bpb") is not None else []
        return "bits per byte (lower is better)", row["bpb_ci"], base
    base = []
    if row.get("majority") is not None:
        base.append((row["majority"], "majority", "--"))
    if row.get("chance") is not None:
        base.append((row["chance"], "chance", ":"))
    if row.get("token_accuracy_ci") and not row.get("accuracy_ci"):
        return "recall / next-token accuracy", row["token_accuracy_ci"], base
    return "accuracy", row.get("accuracy_ci"), base


def _training_plots(trows: list[dict[str, Any]], out_dir: Path) -> dict[str, list[str]]:
    """``accuracy_vs_time.png``: a panel per task label (a point per mixer, baselines as horizontal lines).
    ``*_vs_length.png``: a panel per task run at several lengths (a line per mixer joins that task's
    lengths only); none when every task has a single length. Returns file -> panel titles."""
    drawn: dict[str, list[str]] = {}
    panels = []
    for label in sorted({r["task"] for r in trows}):
        sub = [r for r in trows if r["task"] == label]
        series: Series = defaultdict(list)
        hlines: dict[str, tuple[float, str, str]] = {}
        ylabel = "accuracy"
        for r in sub:
            ylabel, y, base = _score(r)
            for h in base:
                hlines.setdefault(h[1], h)
            if y is not None and r.get("train_time_s"):
                series[r["mixer"]].append((r["train_time_s"][0], y["mean"], y["lo"], y["hi"]))
        panels.append({"title": label, "ylabel": ylabel, "series": series, "hlines": list(hlines.values())})
    if _plot_panels(panels, out_dir / "accuracy_vs_time.png", "training time (s)", False, False):
        drawn["accuracy_vs_time.png"] = [p["title"] for p in panels if any(p["series"].values())]
    lengths: dict[str, set] = defaultdict(set)
    for r in trows:
        lengths[r["task_name"]].add(r.get("length"))
    several = sorted(t for t, ls in lengths.items() if len(ls) > 1)
    for name, field, ylabel, loglog in (("accuracy_vs_length.png", None, None, False),
                                        ("time_vs_length.png", "train_time_s", "training time (s)", True),
                                        ("memory_vs_length.png", "peak_mem_mib", "peak memory (MiB)", True)):
        panels = []
        for task in several:
            series = defaultdict(list)
            label = ylabel
            for r in trows:
                if r["task_name"] != task or r.get("length") is None:
                    continue
                if field is None:
                    label, ci, _ = _score(r)
                    y = ci["mean"] if ci else None
                else:
                    y = r[field][0] if r.get(field) else None
                if y is not None:
                    series[r["mixer"]].append((float(r["length"]), float(y)))
            panels.append({"title": task, "ylabel": label, "series": series})
        if _plot_panels(panels, out_dir / name, "sequence length", loglog, True):
            drawn[name] = [p["title"] for p in panels if any(p["series"].values())]
    return drawn


EXTRA_COLUMNS = ["majority", "chance", "unigram_bpb", "verdict", "warnings"]


def make_report(results: str | Path, out_dir: str | Path, title: str | None = None,
                recompute_baselines: bool = False, costs: str | Path | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``train.csv`` / ``scale.csv`` and PNG plots to ``out_dir``; returns what was written.

    ``report.md`` opens with how to read it and the warnings (cells stopped by their time budget,
    cells run under load above the core count), then one table per task with its baselines and a
    verdict per row. ``recompute_baselines``: rebuild the task of records that predate the
    majority-class baseline to compute it (:func:`with_baselines`); else it shows as unknown.
    ``costs``: isolated step costs (``python -m wersa.bench.cost``) for the study report.
    """
    results = Path(results)
    if not results.exists():
        raise FileNotFoundError(f"results file {results} does not exist; run `wersa bench` or `wersa scale` "
                                f"first, or pass the path written by --out")
    records = read_results(results)
    records, recomputed = with_baselines(records, recompute_baselines)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"files": [], "panels": {}}
    md = [f"# {title or 'wersa benchmark results'}", "", f"From `{results}` ({len(records)} records).", ""]
    trows = train_rows(records)
    _annotate(trows, records)
    if trows:
        md += ["## How to read this", "", HOW_TO_READ.format(setup=_setup_line(records)), ""]
        if recomputed:
            md += [f"The majority-class baselines of {recomputed} record(s) were recomputed from their tasks, on "
                   f"the examples each cell scored (the records predate recorded baselines; "
                   f"`wersa.bench.report.make_report(..., recompute_baselines=True)`).", ""]
    warnings = format_warnings(_with_run_fields(r) for r in latest_by_key(records))
    md += ["## Warnings", ""]
    if warnings:
        md += ["These cells' numbers measure the machine as much as the mechanism (their rows are marked ⚠):", "",
               *(f"- {w}" for w in warnings), ""]
    else:
        md += ["No warnings: every cell ran its planned steps, with no more load than cores.", ""]
    if trows:
        for label in list(dict.fromkeys(r["task"] for r in trows)):
            sub = [r for r in trows if r["task"] == label]
            md += [f"## {label}", ""]
            ok = [r for r in sub if r.get("seeds")]
            if ok:
                bits = [f"task `{sub[0]['task_name']}`", f"length {sub[0]['length']}"]
                base = _score(ok[0])[2]
                bits += [f"{name} {100 * y:.3g}%" if name != "unigram" else f"unigram {y:.3g} bits per byte"
                         for y, name, _ in base]
                md += ["; ".join(bits) + ".", ""]
            md += [*task_table(sub), ""]
            notes = [f"- {r['mixer']}: {r['status']}: {r['reason']}" for r in sub
                     if r["status"] != "ok" and r.get("reason")]
            if notes:
                md += ["Not ok:", "", *(n[:300] for n in notes), ""]
        write_csv(trows, TRAIN_COLUMNS + EXTRA_COLUMNS, out_dir / "train.csv")
        written["files"].append(str(out_dir / "train.csv"))
        written["panels"] = _training_plots(trows, out_dir)
        if written["panels"]:
            md += ["## Plots", ""]
        for name, titles in written["panels"].items():
            written["files"].append(str(out_dir / name))
            what = name[:-4].replace("_", " ")
            if name == "accuracy_vs_time.png":
                what += " (bars: 95% intervals; dashed: majority class; dotted: chance)"
            md.append(f"![{what}, one panel per task: {', '.join(titles)}]({name})")
        md.append("")
    srows = scale_rows(records)
    if srows:
        md += ["## Scaling (single mixer, forward and forward+backward)", "", markdown_table(srows, SCALE_COLUMNS), ""]
        write_csv(srows, SCALE_COLUMNS, out_dir / "scale.csv")
        written["files"].append(str(out_dir / "scale.csv"))
        for name, y, yl in (("scale_time.png", "fwdbwd_ms", "forward+backward time (ms)"),
                            ("scale_fwd_time.png", "fwd_ms", "forward time (ms)"),
                            ("scale_memory.png", "fwdbwd_mem_mib", "forward+backward peak memory (MiB)")):
            if _plot_lines(srows, "length", y, out_dir / name, "sequence length", yl,
                           f"{yl} vs length (log-log)", True):
                written["files"].append(str(out_dir / name))
                md.append(f"![{name[:-4]}]({name})")
        md.append("")
    if not trows and not srows:
        md.append("No finished cells yet.")
    if any(r.get("select_score") is not None for r in records if r.get("bench") == "train"):
        study = make_study_report(results, out_dir, title=title, records=records, costs=costs)
        written["files"] += study["files"]
        md[2:2] = ["Tables with confidence intervals, baselines and the learning rate chosen per mixer: "
                   "[study.md](study.md).", ""]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    written["files"].insert(0, str(out_dir / "report.md"))
    written["train_rows"] = written["table_rows"] = trows
    written["scale_rows"] = srows
    written["warnings"] = warnings
    written["markdown"] = "\n".join(md)
    return written


# ------------------------------------------------------------------ study report
# One paragraph; make_study_report fills {rate} and {validation} (_recipe_words) and wraps it.
STUDY_HEADER = """How to read this: every mixer trains the same model for the same number of optimiser steps
with a cosine schedule sized to those steps; {rate}; the model scored is the one with the
best validation score during training{validation}. Cells give the mean over seeds on the
test split (the whole split, or a fixed stratified subset of it, the same examples for every mixer and seed), then
[95% confidence interval] and the number of seeds. With one seed the interval is the test
set's binomial interval only, not the seed-to-seed spread. `majority` is the accuracy of
always answering the train split's most frequent class, `chance` is 1 / classes (also the
balanced accuracy of any constant answer); for language modelling `unigram` is the bits per
byte of the train split's byte frequencies. A row marked **noise** is not better than its
baseline within its interval: read nothing into it. Costs (time per step, FLOPs, memory) are
measured inside the cells on a shared machine; isolated cost measurements are in
docs/performance.md."""

PAPER_CLAIMS = ("Paper (arXiv 2507.08637, abstract): WERSA best in accuracy on every test (vision, NLP, "
                "hierarchical reasoning) against MHA, FlashAttention-2, FNet, Linformer, Performer, Waveformer; "
                "ArXiv 86.2% vs MHA 85.0%; ArXiv-128k 79.1% (AUC 0.979). Per-task numbers for these tasks "
                "are not public.")


def _recipe_words(records: list[dict[str, Any]]) -> dict[str, str]:
    """How the records' learning rates were set and how often they validated, for :data:`STUDY_HEADER`."""
    train = [r for r in records if r.get("bench") == "train" and r.get("status") == "ok"]
    rates: dict[tuple, set] = defaultdict(set)
    for r in train:
        rates[(r.get("task_label") or r.get("task"), r.get("mixer"), r.get("seed"))].add(_lr_of(r))
    every = sorted({e for r in train if (e := _config(r).get("eval_every"))})
    lrs = sorted({lr for v in rates.values() for lr in v if lr is not None})
    if any(len(v) > 1 for v in rates.values()):
        rate = "its learning rate is the best of a grid on the validation split at the first seed"
    elif len(lrs) == 1:
        rate = f"one learning rate for every mixer, {lrs[0]:g}"
    else:
        rate = "learning rates as set per run (" + ", ".join(f"{lr:g}" for lr in lrs) + ")"
    validation = f" (validating every {', '.join(map(str, every))} steps)" if every else ""
    return {"rate": rate, "validation": validation}


def _t975(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def mean_ci(values: list[float], binomial_n: int | None = None) -> dict[str, Any] | None:
    """Mean, std and 95% interval over seeds (Student t); one seed: the binomial interval of a
    proportion scored on ``binomial_n`` items (normal approximation), else none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    n = len(vals)
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if n > 1 else 0.0
    if n > 1:
        half = _t975(n) * std / math.sqrt(n)
    elif binomial_n:
        half = 1.96 * math.sqrt(max(mean * (1 - mean), 0.0) / binomial_n)
    else:
        half = float("nan")
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": n}


def _lr_of(record: dict[str, Any]) -> float | None:
    return record.get("lr", record.get("config", {}).get("lr"))


def _chosen_records(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(task, label, mixer) -> the finished records at that mixer's chosen learning rate.

    The rate is the one whose first-seed cell has the best validation score (``select_score``);
    records without one (no selection) count at whatever rate they ran."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in latest_by_key(records):
        if r.get("bench") == "train" and r.get("status") == "ok":
            groups[(r["task"], r.get("task_label") or r["task"], r["mixer"])].append(r)
    out = {}
    for key, recs in groups.items():
        first = min(r["seed"] for r in recs)
        tuned = [r for r in recs if r["seed"] == first and r.get("select_score") is not None]
        if tuned:
            # Ties go to the rate the sweep tried first (the middle of the grid), as the sweep does.
            order = middle_first(sorted({_lr_of(r) for r in tuned}))
            best = max(tuned, key=lambda r: (r["select_score"], -order.index(_lr_of(r))))
            lr = _lr_of(best)
            out[key] = [r for r in recs if _lr_of(r) == lr]
        else:
            out[key] = recs
    return out


def guess_baseline(record: dict[str, Any]) -> tuple[str, float] | None:
    """The task's guess baseline for ``record`` (``Task.guess_baseline`` of its task and options), or ``None``."""
    from ..tasks import task_class, task_options

    try:
        cls = task_class(record["task"])
    except (KeyError, ValueError):
        return None
    return cls.guess_baseline(**{**task_options(record["task"]), **(_config(record).get("task_options") or {})})


def _baseline(majority: float | None, guess: float | None) -> float | None:
    """The larger of the majority-class and guess baselines: a score must beat both."""
    values = [b for b in (majority, guess) if b is not None]
    return max(values) if values else None


def study_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, label, mixer) at the chosen rate: metrics as :func:`mean_ci` dicts, baselines, verdict."""
    rows = []
    for (task, label, mixer), recs in _chosen_records(records).items():
        n_eval = recs[0].get("eval_samples")
        clf = recs[0].get("accuracy") is not None
        row: dict[str, Any] = {"task": task, "label": label, "mixer": mixer, "seeds": len(recs),
                               "lr": recs[0].get("lr"), "kind": "classification" if clf else "language_modeling",
                               "eval_samples": n_eval, "steps": recs[0].get("steps"),
                               "step_time_ms": mean_ci([r.get("step_time_s", 0) * 1e3 for r in recs]),
                               "gflops_train_step": mean_ci([(r.get("flops_train_step") or 0) * 1e-9 for r in recs]),
                               "peak_mem_mib": mean_ci([(r.get("peak_mem_bytes") or 0) / 2**20 for r in recs])}
        row["guess_name"], row["guess"] = guess_baseline(recs[0]) or (None, None)
        if clf:
            row.update(accuracy=mean_ci([r["accuracy"] for r in recs], n_eval),
                       balanced_accuracy=mean_ci([r.get("balanced_accuracy") for r in recs], n_eval),
                       auc=mean_ci([r.get("auc") for r in recs]),
                       majority=recs[0].get("majority_accuracy"), chance=recs[0].get("chance_accuracy"))
            acc, base = row["accuracy"], _baseline(row["majority"], row["guess"])
            row["noise"] = None if base is None or not acc else bool(acc["lo"] <= base)
        else:
            bpb = [r.get("bpb") for r in recs]
            row.update(token_accuracy=mean_ci([r.get("token_accuracy") for r in recs], recs[0].get("eval_tokens")),
                       majority=recs[0].get("majority_token_accuracy"))
            if any(b is not None for b in bpb):
                row.update(bpb=mean_ci(bpb), unigram_bpb=recs[0].get("unigram_bpb"))
                b, u = row["bpb"], row["unigram_bpb"]
                # One seed has no interval for bits per byte: then only the mean is compared.
                upper = b["mean"] if b and math.isnan(b["hi"]) else (b or {}).get("hi")
                row["noise"] = None if u is None or not b else bool(not upper < u)
            else:
                ta, base = row["token_accuracy"], _baseline(row["majority"], row["guess"])
                row["noise"] = None if base is None or not ta else bool(ta["lo"] <= base)
        row["per_seed"] = [r.get(_metric_of(row)) for r in sorted(recs, key=lambda r: r["seed"])]
        rows.append(row)
    rows.sort(key=lambda r: (r["task"], r["label"], r["mixer"]))
    return rows


def _ci(v: dict[str, Any] | None, digits: int = 3, pct: bool = False) -> str:
    if not v:
        return "-"
    k = 100.0 if pct else 1.0
    if math.isnan(v["lo"]):
        return f"{k * v['mean']:.{digits}g} (n={v['n']})"
    return f"{k * v['mean']:.{digits}g} [{k * v['lo']:.{digits}g}, {k * v['hi']:.{digits}g}] (n={v['n']})"


def _family_table(rows: list[dict[str, Any]]) -> list[str]:
    clf = rows[0]["kind"] == "classification"
    has_bpb = any(r.get("bpb") for r in rows)
    if clf:
        head = ["task", "mixer", "lr", "accuracy %", "balanced acc %", "macro AUC", "majority %", "chance %",
                "ms/step", "GFLOP/step", "verdict"]
    elif has_bpb:
        head = ["task", "mixer", "lr", "bits per byte", "unigram bpb", "next-byte acc %", "ms/step", "GFLOP/step",
                "verdict"]
    else:
        head = ["task", "mixer", "lr", "recall acc %", "majority %", "ms/step", "GFLOP/step", "verdict"]
    guesses = sorted({r["guess_name"] for r in rows if r.get("guess") is not None})
    if guesses:  # e.g. MQAR's in-context guess, beside the majority class
        head.insert(head.index("ms/step"), f"{' / '.join(guesses)} %")
    # A mean over seeds hides a split outcome (one seed learns, the others do not).
    head.insert(head.index("ms/step"), "per seed" if has_bpb else "per seed %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        verdict = {True: "**noise**", False: "above baseline"}.get(r.get("noise"), "-")
        cost = [_ci(r["step_time_ms"], 3).split(" [")[0].split(" (")[0],
                _ci(r["gflops_train_step"], 3).split(" [")[0].split(" (")[0]]
        lr = f"{r['lr']:.0e}" if r.get("lr") else "-"
        if clf:
            cells = [_ci(r["accuracy"], 3, True), _ci(r["balanced_accuracy"], 3, True), _ci(r["auc"], 3),
                     _fmt(100 * r["majority"]) if r["majority"] is not None else "-",
                     _fmt(100 * r["chance"]) if r["chance"] is not None else "-"]
        elif has_bpb:
            cells = [_ci(r.get("bpb"), 3), _fmt(r.get("unigram_bpb")), _ci(r["token_accuracy"], 3, True)]
        else:
            cells = [_ci(r["token_accuracy"], 3, True),
                     _fmt(100 * r["majority"]) if r["majority"] is not None else "-"]
        if guesses:
            cells.append(_fmt(100 * r["guess"]) if r.get("guess") is not None else "-")
        cells.append(", ".join("-" if v is None else (f"{v:.3g}" if has_bpb else f"{100 * v:.3g}")
                               for v in r.get("per_seed", [])))
        lines.append("| " + " | ".join([r["label"], r["mixer"], lr, *cells, *cost, verdict]) + " |")
    return lines


def difference_ci(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, float] | None:
    """``a - b`` of two :func:`mean_ci` results and its 95% interval, or ``None`` without intervals.

    The half-widths combine in quadrature (``sqrt(ha^2 + hb^2)``): exact for independent normal
    (binomial, one seed each) estimates, close for Student-t intervals over seeds. Two intervals
    may overlap while their difference's interval excludes 0; overlap is not the test."""
    if math.isnan(a["lo"]) or math.isnan(b["lo"]):
        return None
    diff = a["mean"] - b["mean"]
    half = math.hypot(a["hi"] - a["mean"], b["hi"] - b["mean"])
    return diff, diff - half, diff + half


def _wersa_vs_sdpa(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements: where WERSA matches softmax attention (sdpa), where it trails and by how much."""
    out = []
    by = {(r["label"], r["mixer"]): r for r in rows}
    for label in _order([r["label"] for r in rows]):
        w, s = by.get((label, "wersa")), by.get((label, "sdpa"))
        if not w or not s:
            continue
        metric, better = ("accuracy", 1) if w.get("accuracy") else (("bpb", -1) if w.get("bpb") else
                                                                     ("token_accuracy", 1))
        a, b = w.get(metric), s.get(metric)
        if not a or not b:
            continue
        scale, unit = (100, " points") if metric != "bpb" else (1, " bits per byte")
        d = difference_ci(a, b)
        diff = a["mean"] - b["mean"]
        if d is None:
            verdict, interval = "cannot be compared with sdpa yet (one seed: no interval)", ""
        else:
            interval = f", 95% interval [{scale * d[1]:+.3g}, {scale * d[2]:+.3g}]"
            if d[1] <= 0 <= d[2]:
                verdict = "cannot be told apart from sdpa"
            elif diff * better > 0:
                verdict = "is ahead of sdpa"
            else:
                verdict = "trails sdpa"
        out.append(f"- {label}: WERSA {verdict} ({metric} {scale * a['mean']:.3g} vs {scale * b['mean']:.3g}, "
                   f"difference {scale * diff:+.3g}{unit}{interval}).")
    return out


def _metric_of(row: dict[str, Any]) -> str:
    return "accuracy" if row.get("accuracy") else ("bpb" if row.get("bpb") else "token_accuracy")


def _order(values: Iterable[str], first: tuple[str, ...] = ()) -> list[str]:
    """Distinct ``values`` in order of first appearance, ``first`` (where present) leading."""
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


SUMMARY_FIRST = ("sdpa", "wersa", "wersa_published")


def summary_table(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    """One row per task setting, one column per mixer: the headline metric's mean and 95% interval.

    Tasks and mixers appear in the order the results file first names them (exact attention
    and the two WERSA forms first). A cell not above its baseline within its interval is
    marked **noise**; a mixer that cannot run a task says why in a footnote; ``-``: not in
    that task's grid.
    """
    if not rows:
        return []
    train = [r for r in records if r.get("bench") == "train" and r.get("task_label")]
    # Skipped cells are written before a round's cells run: order by the cells that ran.
    ran = [r for r in train if r.get("status") != "skipped"]
    labels = _order([r["task_label"] for r in ran if r["task_label"] in {x["label"] for x in rows}])
    mixers = _order([r["mixer"] for r in train], SUMMARY_FIRST)
    by = {(r["label"], r["mixer"]): r for r in rows}
    failed: dict[tuple[str, str], str] = {}
    for r in latest_by_key(train):
        if r.get("status") in ("skipped", "error", "timeout", "oom") and (r["task_label"], r["mixer"]) not in by:
            failed.setdefault((r["task_label"], r["mixer"]), r["status"] if r["status"] != "skipped"
                              else (r.get("reason") or "skipped"))
    mixers = [m for m in mixers if any((label, m) in by or (label, m) in failed for label in labels)]
    notes: list[str] = []
    lines = ["| task (metric, baseline) | " + " | ".join(mixers) + " |", "|---|" + "---|" * len(mixers)]
    for label in labels:
        cells = [by[(label, m)] for m in mixers if (label, m) in by]
        if not cells:
            continue
        metric = _metric_of(cells[0])
        seeds = {c["seeds"] for c in cells}
        pct = metric != "bpb"
        if metric == "bpb":
            head = f"{label}, bits per byte (unigram {_fmt(cells[0].get('unigram_bpb'))})"
        else:
            base = cells[0].get("majority")
            name = "accuracy %" if metric == "accuracy" else "recall accuracy %"
            head = f"{label}, {name} (majority {_fmt(100 * base) if base is not None else '-'}"
            if cells[0].get("guess") is not None:
                head += f", {cells[0]['guess_name']} {_fmt(100 * cells[0]['guess'])}"
            head += ")"
        if len(seeds) == 1:
            head += f", n = {seeds.pop()}"
        row = [head]
        for m in mixers:
            r = by.get((label, m))
            if r is None:
                why = failed.get((label, m))
                if why in ("error", "timeout", "oom"):
                    row.append(why)
                elif why:
                    if why not in notes:
                        notes.append(why)
                    row.append(f"skipped ({notes.index(why) + 1})")
                else:
                    row.append("-")
                continue
            v = r[metric]
            k = 100.0 if pct else 1.0
            fmt = ".1f" if pct else ".2f"
            cell = f"{k * v['mean']:{fmt}}"
            if not math.isnan(v["lo"]):
                cell += f" [{k * v['lo']:{fmt}}, {k * v['hi']:{fmt}}]"
            if len({c["seeds"] for c in cells}) > 1:
                cell += f" (n={r['seeds']})"
            if r.get("noise"):
                cell += " **noise**"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"({i}) {why}" for i, why in enumerate(notes, 1)] if notes else []
    return lines


def cost_rows(cost_records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """(task label, mixer) -> isolated step cost (``python -m wersa.bench.cost`` records): CPU and wall ms
    per step (medians), GFLOP per step, peak MiB."""
    out = {}
    for r in latest_by_key(cost_records):
        if r.get("bench") == "cost" and r.get("status") == "ok":
            out[(r.get("task_label") or r["task"], r["mixer"])] = {
                "cpu_ms": 1e3 * r["step_cpu_s"], "wall_ms": 1e3 * r["step_wall_s"],
                "gflops": (r.get("flops_train_step") or 0) * 1e-9, "peak_mib": (r.get("peak_mem_bytes") or 0) / 2**20,
                "threads": r.get("threads")}
    return out


def steps_to_target(records: list[dict[str, Any]], reference: str = "sdpa"
                    ) -> dict[tuple[str, str], tuple[float | None, int, int]]:
    """(task label, mixer) -> (median steps to reach ``reference``'s validation score, seeds that reached it, seeds).

    The target of a task is ``reference``'s best validation score (``select_score``) at its chosen
    rate, the lowest over its seeds (so every seed of ``reference`` reaches it); a seed reaches it at the first validation whose score is at least
    the target (validations every ``eval_every`` steps, so steps are multiples of it)."""
    chosen = _chosen_records(records)
    targets = {label: min(r["select_score"] for r in recs)
               for (_, label, mixer), recs in chosen.items()
               if mixer == reference and all(r.get("select_score") is not None for r in recs)}
    out = {}
    for (_, label, mixer), recs in chosen.items():
        if label not in targets:
            continue
        hits = []
        for r in recs:
            hist = r.get("val_history") or []
            hits.append(next((step for step, score in hist if score is not None and score >= targets[label]), None))
        reached = [h for h in hits if h is not None]
        out[(label, mixer)] = (statistics.median(reached) if reached else None, len(reached), len(hits))
    return out


def cost_table(rows: list[dict[str, Any]], records: list[dict[str, Any]],
               costs: dict[tuple[str, str], dict[str, float]], labels: Iterable[str] | None = None) -> list[str]:
    """Per task setting and mixer: isolated cost per step beside the steps (and CPU seconds) to reach
    exact attention's validation score (the paper's "training time", measured as steps x cost).
    ``labels``: only these task settings (default: all)."""
    reach = steps_to_target(records)
    head = ["task", "mixer", "CPU ms/step", "wall ms/step", "GFLOP/step", "peak MiB", "steps to sdpa's val. score",
            "CPU s to it"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    wanted = None if labels is None else set(labels)
    for label in _order([r["label"] for r in rows]):
        if wanted is not None and label not in wanted:
            continue
        for m in _order([r["mixer"] for r in rows if r["label"] == label], SUMMARY_FIRST):
            c = costs.get((label, m))
            steps, hit, n = reach.get((label, m), (None, 0, 0))
            if c is None and not n:
                continue
            reached = "-" if not n else (f"{steps:g}" if hit == n else
                                         (f"{steps:g} ({hit} of {n} seeds)" if hit else
                                          "not reached" + (f" (0 of {n} seeds)" if n > 1 else "")))
            cpu_s = f"{steps * c['cpu_ms'] / 1e3:.3g}" if c and steps is not None and hit == n else "-"
            vals = [_fmt(c["cpu_ms"]), _fmt(c["wall_ms"]), _fmt(c["gflops"]), _fmt(c["peak_mib"])] if c else \
                ["-"] * 4
            lines.append("| " + " | ".join([label, m, *vals, reached, cpu_s]) + " |")
    return lines


def _plot_family(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in rows})
    metric = "accuracy" if rows[0]["kind"] == "classification" else ("bpb" if any(r.get("bpb") for r in rows)
                                                                       else "token_accuracy")
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.8), squeeze=False)
    for ax, label in zip(axes[0], labels):
        sub = [r for r in rows if r["label"] == label and r.get(metric)]
        if not sub:
            ax.set_visible(False)
            continue
        xs = range(len(sub))
        means = [r[metric]["mean"] for r in sub]
        err = [[0 if math.isnan(r[metric]["lo"]) else r[metric]["mean"] - r[metric]["lo"] for r in sub],
               [0 if math.isnan(r[metric]["hi"]) else r[metric]["hi"] - r[metric]["mean"] for r in sub]]
        colours = ["black" if r["mixer"] == "wersa" else "tab:blue" for r in sub]
        ax.bar(xs, means, yerr=err, color=colours, capsize=3, alpha=0.8)
        base = sub[0].get("unigram_bpb") if metric == "bpb" else sub[0].get("majority")
        if base is not None:
            ax.axhline(base, color="tab:red", linestyle="--", linewidth=1,
                       label="unigram" if metric == "bpb" else "majority")
        if sub[0].get("chance") is not None:
            ax.axhline(sub[0]["chance"], color="grey", linestyle=":", linewidth=1, label="chance")
        if sub[0].get("guess") is not None:
            ax.axhline(sub[0]["guess"], color="tab:orange", linestyle="-.", linewidth=1, label=sub[0]["guess_name"])
        ax.set_xticks(list(xs), [r["mixer"] for r in sub], rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(metric.replace("_", " ") + (" (lower is better)" if metric == "bpb" else ""))
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def make_study_report(results: str | Path, out_dir: str | Path, title: str | None = None,
                      records: list[dict[str, Any]] | None = None, costs: str | Path | None = None) -> dict[str, Any]:
    """``study.md``, ``study.csv`` and one ``study-<task>.png`` (a panel per task setting) per task family.

    ``study.md`` opens with a summary (:func:`summary_table`, what the README quotes), then,
    given ``costs`` (records of ``python -m wersa.bench.cost``), the isolated cost per step
    beside the steps to reach exact attention's validation score (:func:`cost_table`), then
    one section per task family. ``records``: those of ``results`` already read (with
    :func:`with_baselines` applied)."""
    results = Path(results)
    if records is None:
        records = with_baselines(read_results(results))[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = study_rows(records)
    header = textwrap.fill(STUDY_HEADER.format(**_recipe_words(records)), width=92)
    md = [f"# {title or 'Accuracy study'}", "", header, "", PAPER_CLAIMS, "",
          f"From `{results}` ({len(records)} records, {len(rows)} (task, mixer) rows).", ""]
    if rows:
        md += ["## Summary", "", "Mean over seeds [95% interval] of each task's headline metric, at each mixer's "
               "chosen learning rate.", "", *summary_table(rows, records), ""]
        statements = _wersa_vs_sdpa(rows)
        if statements:
            md += ["Where WERSA stands against exact attention (sdpa):", "", *statements, ""]
    if costs is not None:
        cost_recs = read_results(costs)
        md += ["## Cost per training step, measured apart from training", "",
               f"From `{costs}` (`python -m wersa.bench.cost`: each configuration in its own process, median "
               "of at least 5 steps after 2 warm-up steps; CPU time is robust to other load, wall time is what a "
               "user waits). The paper's \"training time\" is measured as steps to reach exact attention's "
               "validation score (the lowest of its seeds' best scores, so every sdpa seed reaches it) x "
               "isolated CPU seconds per step; steps are counted in validations, so they are multiples of the "
               "validation interval.", "", *cost_table(rows, records, cost_rows(cost_recs)), ""]
    files = [str(out_dir / "study.md")]
    for task in sorted({r["task"] for r in rows}):
        fam = [r for r in rows if r["task"] == task]
        md += [f"## {task}", "", *_family_table(fam), ""]
        statements = _wersa_vs_sdpa(fam)
        if statements:
            md += ["Where WERSA stands against exact attention (sdpa):", "", *statements, ""]
        png = out_dir / f"study-{task}.png"
        if _plot_family(fam, png, task):
            files.append(str(png))
            md += [f"![{task}]({png.name})", ""]
    if not rows:
        md.append("No finished cells yet.")
    with open(out_dir / "study.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        cols = ["task", "label", "mixer", "lr", "seeds", "metric", "mean", "std", "ci_lo", "ci_hi", "baseline",
                "noise"]
        w.writerow(cols)
        for r in rows:
            metric = "accuracy" if r.get("accuracy") else ("bpb" if r.get("bpb") else "token_accuracy")
            v = r[metric] or {}
            base = r.get("unigram_bpb") if metric == "bpb" else r.get("majority")
            w.writerow([r["task"], r["label"], r["mixer"], r.get("lr"), r["seeds"], metric, v.get("mean"),
                        v.get("std"), v.get("lo"), v.get("hi"), base, r.get("noise")])
    files.append(str(out_dir / "study.csv"))
    (out_dir / "study.md").write_text("\n".join(md) + "\n")
    return {"files": files, "rows": rows, "markdown": "\n".join(md)}
