"""The study report on a synthetic results file: chosen rate, intervals, baselines, noise, one panel per task."""

import pytest

from wersa.bench.report import make_report, make_study_report, mean_ci
from wersa.bench.results import append_result


def _rec(mixer, task, label, seed, lr, acc, val=None, **kw):
    rec = {"bench": "train", "key": f"{mixer}/{label}/{seed}/{lr}", "mixer": mixer, "task": task, "task_label": label,
           "length": 512, "seed": seed, "lr": lr, "status": "ok", "accuracy": acc, "eval_samples": 1000, "steps": 100,
           "step_time_s": 0.1, "flops_train_step": 3e9, "peak_mem_bytes": 2**20, "train_time_s": 10.0}
    if acc is not None:
        rec.update(balanced_accuracy=acc - 0.01, auc=0.8, majority_accuracy=0.25, chance_accuracy=0.1)
    if val is not None:
        rec["select_score"] = val
    rec.update(kw)
    return rec


@pytest.fixture()
def results(tmp_path):
    path = tmp_path / "study.jsonl"
    recs = [
        # wersa: lr 1e-3 wins on validation (0.6 > 0.5) though its seed-0 test accuracy is lower: validation decides.
        _rec("wersa", "listops", "ListOps-512", 0, 1e-3, 0.40, val=0.6),
        _rec("wersa", "listops", "ListOps-512", 0, 3e-3, 0.90, val=0.5),
        _rec("wersa", "listops", "ListOps-512", 1, 1e-3, 0.42),
        _rec("wersa", "listops", "ListOps-512", 2, 1e-3, 0.44),
        _rec("sdpa", "listops", "ListOps-512", 0, 3e-3, 0.41, val=0.5),
        _rec("sdpa", "listops", "ListOps-512", 1, 3e-3, 0.43),
        _rec("sdpa", "listops", "ListOps-512", 2, 3e-3, 0.45),
        # fnet never beats the majority class: noise.
        _rec("fnet", "listops", "ListOps-512", 0, 3e-3, 0.25, val=0.2),
        _rec("fnet", "listops", "ListOps-512", 1, 3e-3, 0.26),
        _rec("fnet", "listops", "ListOps-512", 2, 3e-3, 0.24),
        _rec("wersa", "shakespeare_lm", "Shakespeare-1k", 0, 1e-3, None, val=-2.5, bpb=2.5, unigram_bpb=4.8,
             token_accuracy=0.4, majority_token_accuracy=0.15, eval_tokens=50000),
        _rec("sdpa", "mqar", "MQAR-8kv", 0, 1e-3, None, val=0.9, token_accuracy=0.9, majority_token_accuracy=0.01,
             eval_tokens=8000),
        _rec("sdpa", "mqar", "MQAR-32kv", 0, 1e-3, None, val=0.05, token_accuracy=0.011,
             majority_token_accuracy=0.01, eval_tokens=8000),
    ]
    for r in recs:
        append_result(path, r)
    return path


def test_mean_ci():
    v = mean_ci([0.4, 0.42, 0.44])
    assert v["mean"] == pytest.approx(0.42) and v["std"] == pytest.approx(0.02)
    assert v["hi"] - v["mean"] == pytest.approx(4.303 * 0.02 / 3 ** 0.5, rel=1e-3)  # t(0.975, 2 dof)
    one = mean_ci([0.5], binomial_n=100)
    assert one["hi"] - one["mean"] == pytest.approx(1.96 * 0.05)


def test_study_report_tables_baselines_noise_and_panels(results, tmp_path):
    rep = make_study_report(results, tmp_path / "out")
    rows = {(r["label"], r["mixer"]): r for r in rep["rows"]}
    w = rows[("ListOps-512", "wersa")]
    assert w["lr"] == 1e-3 and w["seeds"] == 3  # chosen on validation; the 3e-3 test score is not used
    assert w["accuracy"]["mean"] == pytest.approx(0.42) and not w["noise"]
    assert rows[("ListOps-512", "fnet")]["noise"]  # not above the majority class
    assert not rows[("Shakespeare-1k", "wersa")]["noise"]  # 2.5 bpb < 4.8 unigram
    assert rows[("MQAR-32kv", "sdpa")]["noise"] and not rows[("MQAR-8kv", "sdpa")]["noise"]
    md = (tmp_path / "out" / "study.md").read_text()
    assert "How to read this" in md and "Paper (arXiv 2507.08637" in md
    assert "## listops" in md and "## shakespeare_lm" in md and "## mqar" in md
    assert "majority %" in md and "chance %" in md and "unigram bpb" in md and "**noise**" in md
    assert "ListOps-512: WERSA cannot be told apart from sdpa (accuracy 42 vs 43, difference -1 points, " \
           "95% interval [" in md
    for task in ("listops", "shakespeare_lm", "mqar"):
        assert (tmp_path / "out" / f"study-{task}.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "study.csv").read_text().count("\n") == len(rep["rows"]) + 1


def test_general_report_links_the_study_and_draws_no_length_plot_for_single_lengths(results, tmp_path):
    rep = make_report(results, tmp_path / "rep")
    out = tmp_path / "rep"
    assert "study.md" in (out / "report.md").read_text() and (out / "study.md").exists()
    assert not (out / "accuracy_vs_length.png").exists()  # every task has one length
    # Several tasks: one panel each, never one plot mixing them.
    assert rep["panels"]["accuracy_vs_time.png"] == ["ListOps-512", "MQAR-32kv", "MQAR-8kv", "Shakespeare-1k"]


def test_tied_rates_choose_the_middle_one_as_the_sweep_does():
    """Validation ties go to the rate the sweep tried first (the middle of the grid), in the
    report as in the sweep, so the seeds the sweep ran are the ones the report shows."""
    from wersa.bench.report import study_rows
    from wersa.bench.results import middle_first

    assert middle_first([3e-4, 1e-3, 3e-3]) == [1e-3, 3e-4, 3e-3]
    base = {"bench": "train", "status": "ok", "task": "t", "mixer": "m", "accuracy": 0.5,
            "majority_accuracy": 0.2, "chance_accuracy": 0.1, "eval_samples": 100}
    recs = [dict(base, key=f"k{lr}", lr=lr, seed=0, select_score=0.3) for lr in (3e-4, 1e-3, 3e-3)]
    recs += [dict(base, key=f"s{s}", lr=1e-3, seed=s, select_score=0.4) for s in (1, 2)]
    (row,) = study_rows(recs)
    assert row["lr"] == 1e-3 and row["accuracy"]["n"] == 3


def test_summary_table_one_row_per_task_one_column_per_mixer(results, tmp_path):
    from wersa.bench.report import study_rows, summary_table
    from wersa.bench.results import read_results

    append_result(results, {"bench": "train", "key": "pub", "mixer": "wersa_published", "task": "listops",
                            "task_label": "ListOps-512", "seed": 0, "status": "skipped",
                            "reason": "wersa_published cannot apply a padding mask"})
    recs = read_results(results)
    lines = summary_table(study_rows(recs), recs)
    assert lines[0] == "| task (metric, baseline) | sdpa | wersa | wersa_published | fnet |"
    listops = next(line for line in lines if line.startswith("| ListOps-512"))
    # sdpa 43.0 [38.0, 48.0] over 3 seeds; fnet never above the majority class; the refusal is a footnote.
    assert "ListOps-512, accuracy % (majority 25), n = 3 | 43.0 [38.0, 48.0] | 42.0 [37.0, 47.0] | skipped (1) | 25.0 " \
           "[22.5, 27.5] **noise** |" in listops
    assert "(1) wersa_published cannot apply a padding mask" in lines
    lm = next(line for line in lines if line.startswith("| Shakespeare-1k"))
    assert "bits per byte (unigram 4.8), n = 1 | - | 2.50 |" in lm
    assert "## Summary" in make_study_report(results, tmp_path / "out")["markdown"]


def test_cost_table_steps_to_exact_attentions_score_times_isolated_cost(tmp_path):
    """Training time as the paper means it: steps to reach sdpa's validation score x isolated seconds per step."""
    from wersa.bench.report import cost_rows, cost_table, steps_to_target, study_rows

    hist = {"sdpa": [[40, 0.3], [80, 0.5], [120, 0.6]], "wersa": [[40, 0.55], [80, 0.62], [120, 0.61]],
            "fnet": [[40, 0.2], [80, 0.3], [120, 0.4]]}
    recs = [_rec(m, "listops", "L", 0, 1e-3, 0.5, val=max(s for _, s in h), val_history=h) for m, h in hist.items()]
    reach = steps_to_target(recs)
    assert reach[("L", "sdpa")] == (120, 1, 1) and reach[("L", "wersa")] == (80, 1, 1)
    assert reach[("L", "fnet")] == (None, 0, 1)
    costs = cost_rows([{"bench": "cost", "key": m, "status": "ok", "mixer": m, "task": "listops", "task_label": "L",
                        "step_cpu_s": c, "step_wall_s": c, "flops_train_step": 1e9, "peak_mem_bytes": 2**20}
                       for m, c in (("sdpa", 0.5), ("wersa", 0.25))])
    lines = cost_table(study_rows(recs), recs, costs)
    assert "| L | sdpa | 500 | 500 | 1 | 1 | 120 | 60 |" in lines
    assert "| L | wersa | 250 | 250 | 1 | 1 | 80 | 20 |" in lines
    assert "| L | fnet | - | - | - | - | not reached | - |" in lines


def test_wersa_against_sdpa_tests_the_difference_not_the_overlap():
    """Two 95% intervals may overlap while the difference's interval excludes 0 (the text task of the
    study: 39.7 [30.8, 48.6] against 56.9 [47.9, 65.9]); one seed of bits per byte has no interval."""
    from wersa.bench.report import _wersa_vs_sdpa, difference_ci

    w, s = mean_ci([0.397], binomial_n=116), mean_ci([0.569], binomial_n=116)
    assert w["hi"] > s["lo"]  # the intervals overlap
    diff, lo, hi = difference_ci(w, s)
    assert diff == pytest.approx(-0.172) and hi < 0
    rows = [{"label": "T", "mixer": "wersa", "accuracy": w}, {"label": "T", "mixer": "sdpa", "accuracy": s},
            {"label": "LM", "mixer": "wersa", "bpb": mean_ci([4.67])}, {"label": "LM", "mixer": "sdpa",
                                                                           "bpb": mean_ci([4.71])}]
    text = "\n".join(_wersa_vs_sdpa(rows))
    assert "T: WERSA trails sdpa (accuracy 39.7 vs 56.9, difference -17.2 points, 95% interval [-" in text
    assert "LM: WERSA cannot be compared with sdpa yet (one seed: no interval)" in text


def test_header_says_how_the_rate_was_set_and_how_often_validation_ran(results, tmp_path):
    """A grid is described as a grid; one rate for every mixer (no grid) is named as such, with its value."""
    md = make_study_report(results, tmp_path / "grid")["markdown"]
    assert "best of a grid" in md and "one learning rate" not in md
    one_rate = tmp_path / "recall.jsonl"
    for mixer in ("sdpa", "wersa"):
        for seed in (0, 1):
            append_result(one_rate, _rec(mixer, "mqar", "MQAR", seed, 3e-3, None, val=0.3, token_accuracy=0.3,
                                         majority_token_accuracy=0.01, eval_tokens=2000,
                                         config={"lr": 3e-3, "eval_every": 100}))
    md = make_study_report(one_rate, tmp_path / "one")["markdown"]
    assert "one learning rate for every mixer, 0.003" in md and "best of a grid" not in md
    assert "validating every 100 steps" in " ".join(md.split())  # the header is wrapped


def test_recall_is_judged_against_guessing_a_value_of_the_context():
    """MQAR with K pairs: answering one of the context's K values at random recalls 1/K of them. A
    recall score not above that is noise, however far it is above the majority token."""
    from wersa.bench.report import _family_table, study_rows, summary_table

    def rec(mixer, seed, acc):
        return _rec(mixer, "mqar", "MQAR-4", seed, 1e-3, None, val=acc, token_accuracy=acc,
                    majority_token_accuracy=0.001, eval_tokens=2000, config={"task_options": {"num_kv_pairs": 4}})

    recs = [rec("sdpa", s, a) for s, a in enumerate((0.23, 0.24, 0.25))]
    recs += [rec("wersa", s, a) for s, a in enumerate((0.60, 0.62, 0.61))]
    rows = {r["mixer"]: r for r in study_rows(recs)}
    assert rows["sdpa"]["guess"] == pytest.approx(0.25, abs=1e-3) and rows["sdpa"]["noise"]  # + value collisions
    assert not rows["wersa"]["noise"]
    head = summary_table(list(rows.values()), recs)[2]
    assert "(majority 0.1, in-context guess 25)" in head and head.count("**noise**") == 1
    assert "in-context guess %" in _family_table(list(rows.values()))[0]


def test_family_tables_show_every_seed():
    """A mean over seeds hides a split outcome (one seed learns, two do not): the per-seed scores
    stand beside it, in seed order."""
    from wersa.bench.report import _family_table, study_rows

    recs = [_rec("sdpa", "mqar", "MQAR-4", s, 1e-3, None, val=a, token_accuracy=a, majority_token_accuracy=0.001,
                 eval_tokens=2000) for s, a in ((2, 0.242), (0, 0.237), (1, 0.4005))]
    table = _family_table(study_rows(recs))
    assert "per seed" in table[0]
    assert "| 23.7, 40.1, 24.2 |" in table[2]
