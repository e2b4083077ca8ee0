"""Runs one trial's training-engine job and turns its summary into a results row (no Ray here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig, config_to_dict
from trainers.engine import Hooks

__all__ = ["run_training", "summary_row", "METRIC_FOR_KIND"]

# The metric each kind selects its best epoch by (higher is better).
METRIC_FOR_KIND = {"cell_search": "valid_acc", "hypercuboid_search": "valid_acc", "retrain": "valid_top1"}


def run_training(config: TrainConfig, *, workdir: str | Path, hooks: Hooks, device: str = "auto") -> dict[str, Any]:
    """Runs (or resumes) the training-engine job of ``config``'s kind and returns its summary."""
    from trainers.retrain import run_retrain
    from trainers.search import run_cell_search, run_hypercuboid_search

    runner = {"cell_search": run_cell_search, "hypercuboid_search": run_hypercuboid_search,
              "retrain": run_retrain}[config.kind]  # fmt: skip
    return runner(config, workdir=workdir, device=device, hooks=hooks)  # type: ignore[arg-type]


def summary_row(trial: Any, summary: dict[str, Any] | None, *, status: str, wall: float, cpu: float,
                error: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The results-store trial row of a finished (or diverged) trial."""
    row: dict[str, Any] = {
        "stage": trial.stage,
        "stage_kind": trial.kind,
        "seed": trial.seed,
        "status": status,
        "config": trial.config,
        "arm": trial.arm,
        "lineage_trial_id": trial.lineage_trial_id,
        "lineage_stage": trial.lineage_stage,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "error": error,
        "extra": {"arm_label": trial.arm_label, "lineage_source": trial.lineage_source,
                  "workers": int((getattr(trial, "ddp", None) or {}).get("workers", 1))},
    }
    if summary is None:
        return row
    history = summary.get("history") or []
    metric = "test_top1" if summary.get("protocol", "").startswith("paper") else METRIC_FOR_KIND[summary["kind"]]
    best = history[summary["best_epoch"] - 1] if history else {}
    brief = {k: v for k, v in summary.items() if k not in ("history",)}
    row.update(
        epochs_completed=summary.get("epochs_run"),
        best_epoch=summary.get("best_epoch"),
        best_metric=metric,
        best={k: v for k, v in best.items() if isinstance(v, (int, float))},
        last={k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))},
        params=summary.get("params"),
        protocol=summary.get("protocol"),
    )
    if summary["kind"] == "cell_search":
        row["genotype"] = summary["best_genotype"]
    elif summary["kind"] == "hypercuboid_search":
        row["path"] = summary["best_path"]
    else:
        spec = summary.get("spec") or {}
        row["path" if spec.get("model") == "path" else "genotype"] = spec.get("path") or spec.get("genotype")
    row["extra"]["summary_json"] = json.dumps(
        {**brief, "config": config_to_dict(brief["config"]) if not isinstance(brief["config"], dict) else brief["config"],
         "history_tail": history[-1:] if history else []}
    )  # fmt: skip
    return row


def record_stopped_early(store: Any, trial: Any) -> bool:
    """Writes the trial row of a trial ASHA stopped early, from its recorded epochs; False if none."""
    import math

    from search_spaces.networks import count_parameters
    from trainers.config import config_from_dict
    from trainers.data import get_dataset_info
    from trainers.retrain import build_model, model_spec, summarize_retrain

    if not store.trials(trial_ids=[trial.trial_id]).empty:
        return False
    frame = store.epochs(trial_ids=[trial.trial_id]).sort_values("epoch")
    if frame.empty:
        return False
    # Metrics only: the store's own columns (timestamps, ids) are not part of a training history.
    own = {"schema_version", "experiment", "stage", "trial_id", "attempt", "seed", "written_at"}
    history = [{k: v for k, v in row.items() if k not in own and isinstance(v, (int, float))
                and not (isinstance(v, float) and math.isnan(v))} for row in frame.to_dict("records")]  # fmt: skip
    for entry in history:
        entry["epoch"] = int(entry["epoch"])
    config = config_from_dict(trial.config)
    spec = model_spec(config, get_dataset_info(config.data.dataset))
    summary = summarize_retrain(history, config, spec, count_parameters(build_model(spec)))
    wall = float(sum(entry.get("epoch_seconds", 0.0) for entry in history))
    row = summary_row(trial, summary, status="finished", wall=wall, cpu=0.0)
    row["extra"]["stopped_early"] = True
    store.write_trial(trial.trial_id, int(frame["attempt"].max()), row)
    return True
