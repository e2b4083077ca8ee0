"""Runs a training config of any kind in this process: the one dispatch from a config's kind to its loop."""

from __future__ import annotations

from pathlib import Path
from .config import CellSearchConfig, HyperCuboidSearchConfig, RetrainConfig, TrainConfig
from .engine import Hooks
from .retrain import run_retrain
from .search import run_cell_search, run_hypercuboid_search
from .summary import RunSummary

__all__ = ["run_config"]

_LOOPS = {CellSearchConfig: run_cell_search, HyperCuboidSearchConfig: run_hypercuboid_search, RetrainConfig: run_retrain}


def run_config(config: TrainConfig, *, workdir: str | Path, hooks: Hooks | None = None, device: str = "auto") -> RunSummary:
    """Runs (or resumes) ``config`` in ``workdir`` and returns the loop's summary."""
    return _LOOPS[type(config)](config, workdir=workdir, device=device, hooks=hooks or Hooks())  # type: ignore[operator]
