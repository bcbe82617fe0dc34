"""Shared test configuration: deterministic, single-threaded-friendly defaults."""

import os

import pytest
import torch

# Tests are small; more threads than cores only adds contention on CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
