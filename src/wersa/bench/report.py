"""``wersa report``: Markdown and CSV tables and PNG plots from a results file.

Training cells (``wersa bench``) give one row per (task, mixer): mean ± std over
seeds of accuracy, macro AUC (or bits per byte), training time, time per step,
FLOPs per forward and per training step, peak memory, parameters, and the status
("OOM" when any seed ran out of memory, "timeout", "error", "skipped").
Scaling records (``wersa scale``) give one row per (mixer, length).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from .results import latest_by_key, read_results

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


def train_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task label, mixer); numeric cells are ``(mean, std)`` over the seeds that finished."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in latest_by_key(records):
        if r.get("bench") != "train":
            continue
        groups[(r.get("task_label") or r["task"], r["mixer"])].append(r)
    rows = []
    for (task, mixer), recs in groups.items():
        ok = [r for r in recs if r["status"] == "ok"]

        def s(field: str, scale: float = 1.0) -> tuple[float, float] | None:
            st = _stats(r.get(field) for r in ok)
            return None if st is None else (st[0] * scale, st[1] * scale)

        rows.append({
            "task": task, "mixer": mixer, "length": recs[0].get("length"),
            "seeds": len(ok), "status": _status(recs),
            "accuracy": s("accuracy"), "auc": s("auc"), "bpb": s("bpb"),
            "train_time_s": s("train_time_s"), "step_time_ms": s("step_time_s", 1e3),
            "tokens_per_s": s("tokens_per_s"),
            "gflops_forward": s("flops_forward", 1e-9), "gflops_train_step": s("flops_train_step", 1e-9),
            "peak_mem_mib": s("peak_mem_bytes", 1 / 2**20), "params": s("params"), "steps": s("steps"),
            "reason": next((r.get("error") or r.get("reason") for r in recs if r["status"] != "ok"), None),
        })
    rows.sort(key=lambda r: (r["length"] or 0, r["task"], r["mixer"]))
    return rows


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


def _plot_lines(rows, x: str, y: str, path: Path, xlabel: str, ylabel: str, title: str, loglog: bool) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        xv, yv = r.get(x), r.get(y)
        xv = xv[0] if isinstance(xv, tuple) else xv
        yv = yv[0] if isinstance(yv, tuple) else yv
        if xv is None or yv is None:
            continue
        series[r["mixer"]].append((float(xv), float(yv)))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    # One distinct colour and marker per mixer (more mixers than the default 10-colour
    # cycle); WERSA drawn on top with a heavier line so the eye finds it first.
    colours = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    markers = "osD^vP*Xhp<>d"
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        main = name == "wersa"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="-" if x != "train_time_s" else "none",
                marker=markers[i % len(markers)], color="black" if main else colours[i % len(colours)],
                linewidth=2.6 if main else 1.3, markersize=6 if main else 4, zorder=3 if main else 2, label=name)
    if loglog:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def make_report(results: str | Path, out_dir: str | Path, title: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``train.csv`` / ``scale.csv`` and PNG plots to ``out_dir``; returns what was written."""
    results = Path(results)
    if not results.exists():
        raise FileNotFoundError(f"results file {results} does not exist; run `wersa bench` or `wersa scale` "
                                f"first, or pass the path written by --out")
    records = read_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"files": []}
    md = [f"# {title or 'wersa benchmark results'}", "", f"From `{results}` ({len(records)} records).", ""]
    trows = train_rows(records)
    if trows:
        md += ["## Training cells", "",
               "Mean ± std over the seeds that finished. Times are wall-clock on the recorded device; "
               "peak memory is what training added (see docs/benchmarks.md). "
               "FLOPs are per forward / per training step of one batch.", "",
               markdown_table(trows, TRAIN_COLUMNS), ""]
        notes = [f"- {r['mixer']} on {r['task']}: {r['status']}: {r['reason']}" for r in trows
                 if r["status"] != "ok" and r.get("reason")]
        if notes:
            md += ["Not ok:", "", *(n[:300] for n in notes), ""]
        write_csv(trows, TRAIN_COLUMNS, out_dir / "train.csv")
        written["files"].append(str(out_dir / "train.csv"))
        lengths: dict[str, set] = defaultdict(set)
        for r in records:
            if r.get("bench") == "train":
                lengths[r["task"]].add(r.get("length"))
        # A line "vs length" only joins lengths of one task; across tasks it would join unrelated points.
        by_length = any(len(v) > 1 for v in lengths.values()) and len(lengths) == 1
        one_task = len(lengths) == 1
        for name, x, y, xl, yl, ll in (
                ("accuracy_vs_length.png", "length", "accuracy", "sequence length", "accuracy", False),
                ("time_vs_length.png", "length", "train_time_s", "sequence length", "training time (s)", True),
                ("memory_vs_length.png", "length", "peak_mem_mib", "sequence length", "peak memory (MiB)", True),
                ("accuracy_vs_time.png", "train_time_s", "accuracy", "training time (s)", "accuracy", False)):
            if not (by_length if x == "length" else one_task):
                continue
            if _plot_lines(trows, x, y, out_dir / name, xl, yl, name[:-4].replace("_", " "), ll):
                written["files"].append(str(out_dir / name))
                md.append(f"![{name[:-4]}]({name})")
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
        study = make_study_report(results, out_dir, title=title)
        written["files"] += study["files"]
        md[2:2] = ["Tables with confidence intervals, baselines and the learning rate chosen per mixer: "
                   "[study.md](study.md).", ""]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    written["files"].insert(0, str(out_dir / "report.md"))
    written["train_rows"], written["scale_rows"] = trows, srows
    written["markdown"] = "\n".join(md)
    return written


# ------------------------------------------------------------------ study report
STUDY_HEADER = """How to read this: every mixer trains the same model for the same number of optimiser steps
with a cosine schedule sized to those steps; its learning rate is the best of a grid on the
validation split at seed 0; the model scored is the one with the best validation score
during training. Cells give the mean over seeds on the test split (the whole split, or a
fixed stratified subset of it, the same examples for every mixer and seed), then
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
            best = max(tuned, key=lambda r: (r["select_score"], -abs(math.log(r.get("lr") or 1.0))))
            lr = best.get("lr", best.get("config", {}).get("lr"))
            out[key] = [r for r in recs if r.get("lr", r.get("config", {}).get("lr")) == lr]
        else:
            out[key] = recs
    return out


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
        if clf:
            row.update(accuracy=mean_ci([r["accuracy"] for r in recs], n_eval),
                       balanced_accuracy=mean_ci([r.get("balanced_accuracy") for r in recs], n_eval),
                       auc=mean_ci([r.get("auc") for r in recs]),
                       majority=recs[0].get("majority_accuracy"), chance=recs[0].get("chance_accuracy"))
            acc = row["accuracy"]
            row["noise"] = bool(acc and row["majority"] is not None and acc["lo"] <= row["majority"])
        else:
            bpb = [r.get("bpb") for r in recs]
            row.update(token_accuracy=mean_ci([r.get("token_accuracy") for r in recs], recs[0].get("eval_tokens")),
                       majority=recs[0].get("majority_token_accuracy"))
            if any(b is not None for b in bpb):
                row.update(bpb=mean_ci(bpb), unigram_bpb=recs[0].get("unigram_bpb"))
                b, u = row["bpb"], row["unigram_bpb"]
                # One seed has no interval for bits per byte: then only the mean is compared.
                upper = b["mean"] if b and math.isnan(b["hi"]) else (b or {}).get("hi")
                row["noise"] = bool(b and u is not None and not upper < u)
            else:
                ta = row["token_accuracy"]
                row["noise"] = bool(ta and row["majority"] is not None and ta["lo"] <= row["majority"])
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        verdict = "**noise**" if r.get("noise") else "above baseline"
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
        lines.append("| " + " | ".join([r["label"], r["mixer"], lr, *cells, *cost, verdict]) + " |")
    return lines


def _wersa_vs_sdpa(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements: where WERSA matches softmax attention (sdpa), where it trails and by how much."""
    out = []
    by = {(r["label"], r["mixer"]): r for r in rows}
    for label in sorted({r["label"] for r in rows}):
        w, s = by.get((label, "wersa")), by.get((label, "sdpa"))
        if not w or not s:
            continue
        metric, better = ("accuracy", 1) if w.get("accuracy") else (("bpb", -1) if w.get("bpb") else
                                                                     ("token_accuracy", 1))
        a, b = w.get(metric), s.get(metric)
        if not a or not b:
            continue
        diff = a["mean"] - b["mean"]
        overlap = not (a["lo"] > b["hi"] or b["lo"] > a["hi"])
        scale, unit = (100, " points") if metric != "bpb" else (1, " bits per byte")
        if overlap:
            verdict = "matches sdpa within the intervals"
        elif diff * better > 0:
            verdict = "is ahead of sdpa"
        else:
            verdict = "trails sdpa"
        out.append(f"- {label}: WERSA {verdict} ({metric} {scale * a['mean']:.3g} vs {scale * b['mean']:.3g}, "
                   f"difference {scale * diff:+.3g}{unit}).")
    return out


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
        ax.set_xticks(list(xs), [r["mixer"] for r in sub], rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(metric.replace("_", " ") + (" (lower is better)" if metric == "bpb" else ""))
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def make_study_report(results: str | Path, out_dir: str | Path, title: str | None = None) -> dict[str, Any]:
    """``study.md``, ``study.csv`` and one ``study-<task>.png`` (a panel per task setting) per task family."""
    results = Path(results)
    records = read_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = study_rows(records)
    md = [f"# {title or 'Accuracy study'}", "", STUDY_HEADER, "", PAPER_CLAIMS, "",
          f"From `{results}` ({len(records)} records, {len(rows)} (task, mixer) rows).", ""]
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
