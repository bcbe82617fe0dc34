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
        for name, x, y, xl, yl, ll in (
                ("accuracy_vs_length.png", "length", "accuracy", "sequence length", "accuracy", False),
                ("time_vs_length.png", "length", "train_time_s", "sequence length", "training time (s)", True),
                ("memory_vs_length.png", "length", "peak_mem_mib", "sequence length", "peak memory (MiB)", True),
                ("accuracy_vs_time.png", "train_time_s", "accuracy", "training time (s)", "accuracy", False)):
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
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    written["files"].insert(0, str(out_dir / "report.md"))
    written["train_rows"], written["scale_rows"] = trows, srows
    written["markdown"] = "\n".join(md)
    return written
