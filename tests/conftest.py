"""Shared test settings: CPU, one thread per test process (the machine has 2 cores), fixed seeds; shared
fixtures. Plain helper functions shared by the test modules are in ``helpers.py``."""

from __future__ import annotations

import os
import random
from pathlib import Path

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


def _token_file_fingerprint(home: Path) -> tuple | None:
    path = home / ".ray" / "auth_token"
    return (path.stat().st_mtime_ns, path.read_bytes()) if path.exists() else None


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """An empty HOME for the module, without RAY_ADDRESS and RAY_AUTH_*: the Ray clusters it starts must not
    read or write a token file there, nor in the real HOME (checked when the module is done)."""
    real = _token_file_fingerprint(Path.home())
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(path))
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            mp.delenv(name, raising=False)
        yield path
    assert _token_file_fingerprint(Path.home()) == real, "the real ~/.ray/auth_token changed"
