import pytest
import torch

from wersa.tasks import IGNORE_INDEX, TokenDataset, build_task, list_tasks, pad_collate, task_options


def test_token_dataset_round_trip_and_validation():
    ds = TokenDataset.from_sequences([[1, 2, 3], [4], []], labels=[0, 1, 2])
    assert len(ds) == 3 and ds.lengths().tolist() == [3, 1, 0]
    assert ds[0]["input_ids"].tolist() == [1, 2, 3] and ds[-2]["labels"].item() == 1
    assert ds[0]["input_ids"].dtype == torch.int64
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="offsets"):
        TokenDataset(torch.arange(3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels"):
        TokenDataset(torch.arange(3), torch.tensor([0, 3]), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not both"):
        TokenDataset(torch.arange(3), torch.tensor([0, 3]), torch.tensor([0]), torch.arange(3))


def test_language_modelling_example_is_its_own_target():
    ds = TokenDataset(torch.arange(1, 7), torch.tensor([0, 3, 6]))
    ex = ds[1]
    assert ex["labels"].tolist() == ex["input_ids"].tolist() == [4, 5, 6]


def test_pad_collate_classification_and_token_labels():
    cls = TokenDataset.from_sequences([[5, 6, 7], [8]], labels=[1, 0])
    b = pad_collate([cls[0], cls[1]])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [1, 0]
    b = pad_collate([cls[0], cls[1]], pad_to_multiple_of=4)
    assert b["input_ids"].shape == (2, 4)
    b = pad_collate([cls[1]], pad_to=5)
    assert b["input_ids"].shape == (1, 5)
    with pytest.raises(ValueError, match="pad_to"):
        pad_collate([cls[0]], pad_to=2)
    with pytest.raises(ValueError, match="empty"):
        pad_collate([])
    lm = TokenDataset.from_sequences([[1, 2, 3], [4]])
    b = pad_collate([lm[0], lm[1]])
    assert b["labels"].tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]


def test_registry_lists_and_rejects_unknown_names_and_options():
    names = list_tasks()
    for expected in ("listops", "pathfinder", "digits", "fashion_mnist", "hf_images", "stdlib_families",
                     "hf_text", "arxiv", "imdb", "bytes_lm", "mqar"):
        assert expected in names
    with pytest.raises(ValueError, match="did you mean 'listops'"):
        build_task("listop")
    with pytest.raises(ValueError, match="unknown option.*max_len"):
        build_task("listops", max_len=10)
    assert task_options("listops")["max_length"] == 2000


def test_unknown_split_and_bad_batch_size():
    task = build_task("listops", num_train=2, num_validation=0, num_test=0, min_length=5, max_length=30)
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        task.split("valid")
    with pytest.raises(ValueError, match="batch_size"):
        task.loader("train", batch_size=0)


def test_disk_cache_reuses_identical_config_only(tmp_path):
    opts = dict(num_train=6, num_validation=0, num_test=0, min_length=5, max_length=40, cache_dir=tmp_path)
    first = build_task("listops", **opts)
    ds = first.split("train")
    files = list(tmp_path.glob("listops-train-*.pt"))
    assert len(files) == 1
    again = build_task("listops", **opts)
    assert again.cache_path("train") == files[0]
    cached = again.split("train")
    assert torch.equal(cached.tokens, ds.tokens) and torch.equal(cached.labels, ds.labels)
    other = build_task("listops", **{**opts, "seed": 1})
    assert other.cache_path("train") != files[0]


def test_loader_shuffles_reproducibly_and_pads():
    task = build_task("listops", num_train=12, num_validation=0, num_test=0, min_length=5, max_length=40)
    a = [b["labels"].tolist() for b in task.loader("train", 4, seed=3)]
    b = [b["labels"].tolist() for b in task.loader("train", 4, seed=3)]
    assert a == b
    batch = next(iter(task.loader("train", 4, pad_to=64)))
    assert batch["input_ids"].shape == (4, 64)
    real = batch["attention_mask"].bool()
    assert bool((batch["input_ids"][real] > 0).all()) and bool((batch["input_ids"][~real] == 0).all())
