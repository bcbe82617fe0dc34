"""Shared test configuration: deterministic, single-threaded-friendly defaults."""

import os

import pytest
import torch

# Generated task data is cached on disk by default; tests keep theirs out of the user's cache.
if "WERSA_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["WERSA_CACHE_DIR"] = tempfile.mkdtemp(prefix="wersa-test-cache-")
    atexit.register(shutil.rmtree, os.environ["WERSA_CACHE_DIR"], True)

# Tests are small; more threads than cores only adds contention on CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
