"""Two torchrun processes (gloo, CPU) end with the same parameters as one process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

TRAIN = ["-m", "wersa", "train", "--mixer", "bench_mean", "--task", "bench_first_token", "--length", "32",
         "--task-factory", "bench_standins:make_task", "--model-factory", "bench_standins:make_model",
         "--plugin", "bench_standins", "--steps", "4", "--batch-size", "8", "--hidden-size", "16", "--heads", "2",
         "--eval-samples", "8", "--threads", "1", "--no-flops", "--quiet"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    one = tmp_path / "one.pt"
    two = tmp_path / "two.pt"
    r = subprocess.run([sys.executable, *TRAIN, "--save-params", str(one)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        *TRAIN[1:], "--save-params", str(two)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
