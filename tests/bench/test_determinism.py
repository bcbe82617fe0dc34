"""Same seed, same run: metrics and parameters of ``run_training`` on CPU, random features included."""

from __future__ import annotations

import pytest
import torch

from wersa.bench import adapters
from wersa.bench.train import TrainConfig, run_training

# Timing, memory and environment differ between runs by nature; everything else must not.
NOT_DETERMINISTIC = {"train_time_s", "step_time_s", "tokens_per_s", "peak_mem_bytes", "peak_mem_method", "env",
                     "eval_time_s", "checkpoint_time_s"}

TASK_OPTIONS = {"num_train": 48, "num_validation": 8, "num_test": 24, "min_length": 16, "max_length": 48,
                "max_depth": 3}


def tiny(mixer: str = "wersa", **over) -> TrainConfig:
    fields = dict(mixer=mixer, task="listops", task_options=dict(TASK_OPTIONS), length=48, seed=3,
                  model={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32, "hidden_dropout_prob": 0.1},
                  batch_size=8, max_steps=12, warmup_steps=2, eval_samples=24, threads=1, count_flops=False)
    fields.update(over)
    return TrainConfig(**fields)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _metrics(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in NOT_DETERMINISTIC}


def test_same_seed_same_metrics_and_parameters(tmp_path, one_thread):
    cache = str(tmp_path / "cache")
    runs = []
    for i in range(2):
        params = tmp_path / f"p{i}.pt"
        rec = run_training(tiny(cache_dir=cache), save_params=str(params), progress=False)
        runs.append((rec, torch.load(params, weights_only=True)))
    (a, pa), (b, pb) = runs
    assert _metrics(a) == _metrics(b)
    assert a["steps"] == 12 and a["final_train_loss"] is not None
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    # ... and another seed is another run (the comparison above is not vacuous).
    c = run_training(tiny(cache_dir=cache, seed=4), progress=False)
    assert c["final_train_loss"] != a["final_train_loss"]


@pytest.mark.parametrize("mixer, buffers", [("wersa", ("projection_matrix", "redraws")),
                                             ("performer", ("projection_matrix", "redraws"))])
def test_redrawn_random_features_are_saved_not_redrawn(mixer, buffers, tmp_path, one_thread):
    """After redraws during training the features differ from the initial draw, so only saving them round-trips."""
    from transformers import AutoModelForSequenceClassification

    cfg = tiny(mixer, mixer_options={"redraw_interval": 2}, cache_dir=str(tmp_path / "cache"), max_steps=5)
    params_path = tmp_path / "params.pt"
    run_training(cfg, save_params=str(params_path), progress=False)
    trained = torch.load(params_path, weights_only=True)
    task = adapters.build_task(cfg.task, cfg.task_options, cache_dir=cfg.cache_dir)
    fresh = adapters.build_model(task.info, cfg.mixer, cfg.mixer_options, cfg.length, cfg.model)
    initial = fresh.state_dict()
    for name in buffers:
        keys = [k for k in trained if k.endswith("." + name)]
        assert keys, f"no {name} buffer in the saved parameters"
    feature_key = next(k for k in trained if k.endswith("." + buffers[0]))
    assert not torch.equal(trained[feature_key], initial[feature_key]), "training did not redraw the features"

    fresh.load_state_dict(trained)
    fresh.save_pretrained(tmp_path / "hf")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained[k]), k
    ids = torch.randint(1, task.info.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, fresh.eval()(ids).logits)
