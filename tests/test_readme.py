"""README.md's mixer table says what the registry says: it lists every built-in mixer, and
its causal / bidirectional / padding / recurrent / linear-time columns are the capabilities
of the default instance (``wersa.capabilities(name)``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import wersa
from wersa.mixers.registry import mixer_class

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| mixer | causal | bidirectional |"


def mixer_table() -> dict[str, list[str]]:
    """``{name: [causal, bidirectional, padding, recurrent, linear time, form]}`` from README.md."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 7, f"README mixer table: a row needs 7 cells: {line!r}"
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def builtin_mixers() -> list[str]:
    """Registered mixers defined in this package (a plug-in may add others)."""
    return [n for n in wersa.list_mixers() if mixer_class(n).__module__.startswith("wersa.mixers.")]


def yes(cell: str) -> bool:
    if cell.startswith("yes"):
        return True
    assert cell == "—", f"expected 'yes...' or '—', got {cell!r}"
    return False


def test_table_lists_every_builtin_mixer_once():
    rows = mixer_table()
    assert sorted(rows) == sorted(builtin_mixers())
    assert list(rows) == sorted(rows), "README mixer table: keep the rows in alphabetical order"


@pytest.mark.parametrize("name", builtin_mixers())
def test_columns_match_the_registry(name):
    causal, bidirectional, padding, recurrent, linear, form = mixer_table()[name]
    caps = wersa.capabilities(name)
    assert yes(causal) == caps.causal
    assert yes(bidirectional) == caps.bidirectional
    expected_padding = ("—" if not caps.attention_mask
                        else "right + left" if caps.left_padding else "right only")
    assert padding == expected_padding
    if not caps.recurrent:
        assert recurrent == "—"
    else:
        assert recurrent == ("yes (constant state)" if caps.constant_state else "yes (KV cache)")
    assert yes(linear) == caps.linear_time
    if caps.quadratic_below is not None:  # linear only from a length on: the cell says from where
        assert linear.startswith("yes, from") and f"{caps.quadratic_below:,}" in linear
    else:
        assert linear in ("yes", "—")
    assert form, f"README mixer table: say which form {name!r} builds"



def _block(name: str) -> str:
    """The README text between ``<!-- name -->`` and ``<!-- /name -->``."""
    text = README.read_text(encoding="utf-8")
    assert f"<!-- {name} -->" in text, f"README.md has no <!-- {name} --> block"
    return text.split(f"<!-- {name} -->")[1].split(f"<!-- /{name} -->")[0].strip()


# The task settings whose step costs the README quotes (the report has every one).
README_COST_TASKS = ("sFashion-MNIST-784", "Shakespeare-1k (bits per byte)")


def readme_tables() -> dict[str, str]:
    """What `wersa report` makes of the committed results files, for the README's blocks."""
    from wersa.bench.report import cost_rows, cost_table, study_rows, summary_table, with_baselines
    from wersa.bench.results import read_results

    results = README.parent / "docs" / "results"
    records = with_baselines(read_results(results / "study.jsonl"))[0]
    rows = study_rows(records)
    costs = cost_rows(read_results(results / "study-cost.jsonl"))
    recall = with_baselines(read_results(results / "recall.jsonl"))[0]
    return {"study-summary": "\n".join(summary_table(rows, records)).strip(),
            "study-cost": "\n".join(cost_table(rows, records, costs, README_COST_TASKS)).strip(),
            "recall-summary": "\n".join(summary_table(study_rows(recall), recall)).strip()}


def test_results_tables_are_the_study_reports():
    """The README's accuracy and cost tables are what `wersa report` makes of the committed results
    files (docs/results/study.jsonl, study-cost.jsonl, recall.jsonl): no hand-copied number."""
    for name, table in readme_tables().items():
        assert _block(name) == table, f"README block {name} differs from the report; regenerate it"
