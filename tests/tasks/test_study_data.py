"""The study's data: near-duplicate removal, balanced byte-level text, generated data cached by default."""

import pytest

from wersa.tasks import build_task, describe
from wersa.tasks.listops import ListOpsTask
from wersa.tasks.text import drop_near_duplicates, line_signatures


def _doc(*lines: str) -> bytes:
    return "\n".join(lines).encode()


def _overlap(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a))


def test_near_duplicates_train_first_and_template_families_collapse():
    base = [f"line {i} = compute({i})" for i in range(10)]
    train = _doc(*base)
    family = [_doc(*base[:8], f"name = 'codec{k}'", f"alias = 'c{k}'") for k in range(3)]  # one template
    half = _doc(*base[:5], *[f"other {i}" for i in range(5)])  # shares exactly half its lines
    unrelated = _doc(*[f"unrelated {i}" for i in range(10)])
    docs = [train, *family, half, unrelated]
    sigs = line_signatures(docs, common_fraction=1.0)
    assert drop_near_duplicates(sigs, 0.5) == [0, 5]  # the family and the half-overlap are dropped
    assert drop_near_duplicates(line_signatures([unrelated, half], 1.0), 0.5) == [0, 1]


def test_common_lines_do_not_make_duplicates():
    docs = [_doc("else:", "pass", f"specific {i}", f"more {i}") for i in range(40)]
    sigs = line_signatures(docs, common_fraction=0.05)
    assert all("else:".encode() not in s for s in sigs)
    assert drop_near_duplicates(sigs) == list(range(40))


@pytest.fixture(scope="module")
def stdlib_text():
    return build_task("stdlib_text", max_length=2048, num_classes=4, windows_per_document=4, cache_dir=False)


def test_stdlib_text_held_out_files_do_not_overlap_train(stdlib_text):
    task = stdlib_text
    files = {s: task.split_documents(s) for s in ("train", "validation", "test")}
    assert not set(files["train"]) & (set(files["validation"]) | set(files["test"]))
    # The same signature the task uses (common lines excluded over the documents it started from).
    docs = {rel: (task.root / rel).read_bytes() for s in files for rel in files[s]}
    names = list(docs)
    sigs = dict(zip(names, line_signatures([docs[n] for n in names])))
    for split in ("validation", "test"):
        for rel in files[split]:
            worst = max(_overlap(sigs[rel], sigs[t]) for t in files["train"])
            assert worst < 0.5, (rel, worst)
    d = describe(task)
    assert not d["problems"] and all(v == 0 for v in d["shared_examples"].values())


def test_stdlib_text_classes_are_balanced(stdlib_text):
    for split in ("train", "validation", "test"):
        counts = describe(stdlib_text, splits=(split,))["splits"][split]["class_counts"]
        assert len(set(counts)) == 1 and counts[0] > 0, (split, counts)
        assert describe(stdlib_text, splits=(split,))["splits"][split]["min_length"] == 2048


def test_the_plain_stdlib_task_has_the_overlaps_the_study_task_removes():
    """The check above is not vacuous: without de-duplication held-out files do share half their lines."""
    task = build_task("stdlib_text", max_length=2048, num_classes=4, windows_per_document=1, dedupe=False,
                      cache_dir=False)
    assert not task.dropped
    deduped = build_task("stdlib_text", max_length=2048, num_classes=4, windows_per_document=1, cache_dir=False)
    assert len(deduped.dropped) > 10


def test_generated_data_is_cached_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("WERSA_CACHE_DIR", str(tmp_path))
    opts = dict(num_train=12, num_validation=4, num_test=4, min_length=8, max_length=32, max_depth=3)
    first = build_task("listops", **opts)
    assert first.cache_dir == tmp_path
    before = describe(first)
    assert len(list(tmp_path.glob("listops-*.pt"))) == 3

    def no_generation(self, split):
        raise AssertionError("generated again instead of read from the cache")

    monkeypatch.setattr(ListOpsTask, "_build_split", no_generation)
    assert describe("listops", **opts)["splits"] == before["splits"]  # second describe: from disk
    # Other options, other files; cache_dir=False turns the cache off.
    assert build_task("listops", **{**opts, "num_test": 5}).cache_path("test") != first.cache_path("test")
    assert build_task("listops", cache_dir=False, **opts).cache_path("train") is None
