"""Fixtures of the model tests: the toy mixers are registered for this package only."""

from __future__ import annotations

import pytest
import torch

from wersa.mixers import registry

from .toy_mixers import TOY_MIXERS


@pytest.fixture(scope="package", autouse=True)
def toy_mixers():
    """Register the toy mixers while tests/models runs, then remove them again."""
    with pytest.MonkeyPatch.context() as mp:
        for cls in TOY_MIXERS:
            mp.setitem(registry.MIXERS._classes, cls.capabilities.name, cls)
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
