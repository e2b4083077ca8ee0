"""The ``evaluate`` stage: scores retrained checkpoints on held-out test sets (e.g. CIFAR-10.1).

Scoring one checkpoint takes seconds, so it runs in the driver rather than as Ray trials. The protocol
label of the scored run travels with every number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .results import ResultsStore

__all__ = ["run_evaluate_stage"]


def _checkpoint_of(storage: str, experiment: str, trial_id: str, which: str) -> Path:
    from .ray_runtime import local_workdir

    workdir = local_workdir(storage, experiment, trial_id)
    if which == "best":
        return workdir / "best.pt"
    files = sorted((workdir / "checkpoints").glob("epoch_*.pt"))
    if not files:
        raise FileNotFoundError(f"no epoch checkpoint of trial {trial_id} under {workdir / 'checkpoints'}")
    return files[-1]


def run_evaluate_stage(trials: list[Any], *, store: ResultsStore, storage: str, experiment: str,
                       out: Callable[[str], None]) -> None:  # fmt: skip
    """Scores each evaluate trial's source checkpoint on its data sets; writes one trial row each."""
    from trainers.retrain import score_checkpoint

    done = store.finished_trial_ids()
    for trial in trials:
        if trial.trial_id in done:
            continue
        cfg = trial.config
        start = time.time()
        checkpoint = _checkpoint_of(storage, experiment, cfg["source_trial"], cfg.get("checkpoint", "best"))
        scores: dict[str, float] = {}
        protocol = None
        for dataset in cfg["datasets"]:
            result = score_checkpoint(checkpoint, dataset, root=cfg.get("root"))
            scores[f"{dataset}.top1"] = result["top1"]
            scores[f"{dataset}.top5"] = result["top5"]
            protocol = result["protocol"]
            out(f"[{trial.stage}] {cfg['source_trial']} on {dataset}: top-1 {result['top1']:.4f}")
        store.write_trial(trial.trial_id, 0, {
            "stage": trial.stage, "stage_kind": "evaluate", "seed": trial.seed, "status": "finished",
            "config": cfg, "arm": trial.arm.arm_id, "lineage_trial_id": trial.lineage.parent,
            "lineage_stage": trial.lineage.parent_stage, "best": scores, "last": scores, "protocol": protocol,
            "wall_seconds": time.time() - start, "checkpoint": str(checkpoint),
            "extra": {"arm_label": trial.arm.label, "lineage_source": trial.lineage.source},
        })  # fmt: skip
