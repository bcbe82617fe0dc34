"""The generic report on a synthetic results file: how to read it, one table per task with its
baselines and verdicts, warnings for cells stopped by time or run under load, one plot panel per task."""

import csv

import pytest

from wersa.bench.report import make_report
from wersa.bench.results import append_result

CONFIG = {"max_steps": 60, "max_time_s": 40.0, "batch_size": 16, "lr": 2e-3, "eval_samples": 256,
          "model": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}}


def _rec(mixer, label, seed, acc, task="listops", length=256, **kw):
    rec = {"bench": "train", "key": f"{mixer}/{label}/{seed}", "mixer": mixer, "task": task, "task_label": label,
           "length": length, "seed": seed, "status": "ok", "accuracy": acc, "auc": 0.7, "eval_samples": 256,
           "steps": 60, "stopped_by": "steps", "step_time_s": 0.05, "train_time_s": 3.0 + seed, "tokens_per_s": 9e4,
           "flops_forward": 1e9, "flops_train_step": 3e9, "peak_mem_bytes": 100 * 2**20, "params": 80_000,
           "cpu_count": 2, "load_start": 0.5, "load_end": 0.8, "threads": 2, "config": dict(CONFIG),
           "task_info": {"kind": "classification", "num_classes": 10}}
    rec.update(kw)
    return rec


def _new(mixer, label, seed, acc, **kw):
    """A record of the current harness: baselines measured on the scored examples."""
    return _rec(mixer, label, seed, acc, majority_accuracy=0.164, chance_accuracy=0.1, **kw)


@pytest.fixture()
def results(tmp_path):
    path = tmp_path / "quick.jsonl"
    recs = [
        _new("wersa", "ListOps-256", 0, 0.40),
        _new("wersa", "ListOps-256", 1, 0.44),
        _new("sdpa", "ListOps-256", 0, 0.164),  # the majority class: noise
        # Stopped by its time budget after 7 of its 60 steps.
        _new("fnet", "ListOps-256", 0, 0.17, steps=7, stopped_by="time"),
        _new("performer", "ListOps-256", 0, 0.35, load_end=5.5),  # ran under load 5.5 on 2 cores
        _new("softmax", "ListOps-256", 0, None, status="oom", error="out of memory"),
        # Records written before baselines were recorded: chance from the task's classes, majority unknown.
        _rec("wersa", "Pathfinder-16px", 0, 0.59, task="pathfinder", task_info={"kind": "classification",
                                                                                "num_classes": 2}),
        _rec("sdpa", "Pathfinder-16px", 0, 0.5, task="pathfinder", task_info={"kind": "classification",
                                                                              "num_classes": 2}),
    ]
    for r in recs:
        append_result(path, r)
    return path


def _table(md: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after ``heading``."""
    lines = md.split(heading + "\n", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return [rows[0]] + rows[2:]


def test_report_says_how_to_read_it(results, tmp_path):
    md = make_report(results, tmp_path / "rep")["markdown"]
    assert "## How to read this" in md
    head = md.split("## How to read this", 1)[1].split("\n## ", 1)[0]
    for words in ("cell", "majority", "chance", "noise", "seed", "time budget", "ms/step", "GFLOP", "train.csv"):
        assert words in head, words
    # The recipe the cells shared, from their records.
    assert "60 steps" in head and "40 s" in head and "2 cores" in head


def test_one_table_per_task_with_baselines_and_verdicts(results, tmp_path):
    rep = make_report(results, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "tokens_per_s" not in md  # no raw all-columns table; those stay in train.csv
    listops = _table(md, "## ListOps-256")
    head = listops[0]
    for col in ("mixer", "steps", "accuracy %", "AUC", "majority %", "chance %", "verdict", "ms/step", "peak MiB",
                "GFLOP/step"):
        assert col in head, col
    rows = {r[head.index("mixer")].split()[0]: dict(zip(head, r)) for r in listops[1:]}
    assert set(rows) == {"wersa", "sdpa", "fnet", "performer", "softmax"}
    w = rows["wersa"]
    assert w["accuracy %"].startswith("42 ± 2.8") and "n=2" in w["accuracy %"]  # mean ± std, interval, seeds
    assert w["majority %"] == "16.4" and w["chance %"] == "10" and w["verdict"] == "above baseline"
    assert w["ms/step"] == "50" and w["GFLOP/step"] == "3" and w["peak MiB"] == "100" and w["steps"] == "60"
    assert rows["sdpa"]["verdict"] == "**noise**"
    assert rows["softmax"]["verdict"] == "OOM"
    path = _table(md, "## Pathfinder-16px")
    prow = dict(zip(path[0], path[1]))
    assert prow["majority %"] == "—" and prow["chance %"] == "50"  # unknown majority is not guessed
    assert prow["verdict"] == "—"  # no majority baseline: no verdict
    # Every column stays in the CSV.
    with open(tmp_path / "rep" / "train.csv") as fh:
        header = next(csv.reader(fh))
    for col in ("tokens_per_s", "train_time_s", "params", "majority", "chance", "verdict", "warnings"):
        assert col in header, col
    assert len(rep["train_rows"]) == 8 - 1  # one row per (task, mixer)


def test_warnings_are_listed_and_marked(results, tmp_path):
    md = make_report(results, tmp_path / "rep")["markdown"]
    assert "## Warnings" in md
    warn = md.split("## Warnings", 1)[1].split("\n## ", 1)[0]
    assert "- fnet / ListOps-256 / seed 0: stopped by the time budget after 7 of 60 steps" in warn
    assert "- performer / ListOps-256 / seed 0: ran under load 5.5 on 2 cores" in warn
    assert "wersa" not in warn
    listops = _table(md, "## ListOps-256")
    marked = {r[0] for r in listops[1:] if "⚠" in r[0]}
    assert marked == {"fnet ⚠", "performer ⚠"}
    assert md.index("## Warnings") < md.index("## ListOps-256")  # seen before the tables


def test_old_records_load_from_their_environment(tmp_path):
    """Records written before ``load_start`` existed carry the load in ``env``; they warn the same way."""
    path = tmp_path / "old.jsonl"
    rec = _rec("wersa", "ListOps-256", 0, 0.4)
    for k in ("cpu_count", "load_start", "load_end"):
        del rec[k]
    rec["env"] = {"cpu_count": 2, "load_avg": [3.5, 2.0, 1.0]}
    append_result(path, rec)
    md = make_report(path, tmp_path / "rep")["markdown"]
    assert "- wersa / ListOps-256 / seed 0: ran under load 3.5 on 2 cores" in md


def test_no_warnings_says_so(tmp_path):
    path = tmp_path / "r.jsonl"
    append_result(path, _new("wersa", "ListOps-256", 0, 0.4))
    md = make_report(path, tmp_path / "rep")["markdown"]
    assert "No warnings" in md


def test_plots_one_panel_per_task_and_no_length_plot_for_single_lengths(results, tmp_path):
    rep = make_report(results, tmp_path / "rep")
    out = tmp_path / "rep"
    for name in ("accuracy_vs_length.png", "time_vs_length.png", "memory_vs_length.png"):
        assert not (out / name).exists(), name  # every task has a single length
    assert (out / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"
    assert rep["panels"]["accuracy_vs_time.png"] == ["ListOps-256", "Pathfinder-16px"]


def test_length_plots_join_lengths_of_one_task_only(tmp_path):
    path = tmp_path / "r.jsonl"
    for n in (128, 256):
        append_result(path, _new("wersa", f"ListOps-{n}", 0, 0.4, length=n))
    append_result(path, _rec("wersa", "Pathfinder-16px", 0, 0.6, task="pathfinder"))
    rep = make_report(path, tmp_path / "rep")
    assert rep["panels"]["accuracy_vs_length.png"] == ["listops"]  # pathfinder has one length: no panel
    assert (tmp_path / "rep" / "accuracy_vs_length.png").exists()


def test_baselines_recomputed_from_the_task_when_asked(tmp_path):
    """``recompute_baselines``: the majority class of the train split, scored on the same examples as the cell."""
    import numpy as np

    from bench_standins import make_task
    from wersa.bench.evaluation import eval_indices

    opts = {"length": 16, "num_train": 64, "num_test": 40}
    task = make_task(**opts)
    train, test = task.split("train").labels.numpy(), task.split("test").labels.numpy()
    idx = eval_indices(len(test), 30, test)
    expected = float((test[idx] == np.bincount(train).argmax()).mean())
    path = tmp_path / "r.jsonl"
    rec = _rec("bench_mean", "first-16", 0, 0.9, task="bench_first_token", eval_samples=30,
               task_info={"kind": "classification", "num_classes": 3},
               config={**CONFIG, "task": "bench_first_token", "task_options": opts, "eval_samples": 30,
                       "task_factory": "bench_standins:make_task"})
    append_result(path, rec)
    row = make_report(path, tmp_path / "a")["table_rows"][0]
    assert row["majority"] is None and row["chance"] == pytest.approx(1 / 3)
    row = make_report(path, tmp_path / "b", recompute_baselines=True)["table_rows"][0]
    assert row["majority"] == pytest.approx(expected) and row["verdict"] == "above baseline"
    assert "recomputed" in (tmp_path / "b" / "report.md").read_text()
