"""Shared test settings: CPU, one thread per test process (the machine has 2 cores), fixed seeds."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)
