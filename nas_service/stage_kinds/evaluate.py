"""``evaluate``: scores the chosen checkpoint of every trial of an earlier retrain or grid stage on held-out
test sets (CIFAR-10 test, CIFAR-10.1, ImageNet val).

Scoring one checkpoint takes seconds, so the stage runs in the driver rather than as Ray trials. The
protocol label of the scored run travels with every number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from trainers.config import config_to_dict
from trainers.dataset_shapes import DATASET_SHAPES

from ..location import ExperimentLocation
from ..spec_models import FromRef, Issue, StageBase, base_config, recipe_issue, resolve_local, show, unique
from ..trials import Lineage, StagePlan, Trial, Upstream, expected_trials, finished_upstream, make_arm, \
    trial_id_for, upstream_arm  # fmt: skip
from .base import STAGE_KINDS, StageKind, register_stage_kind


@dataclass(frozen=True)
class EvaluateConfig:
    """What one evaluate trial scores: a checkpoint (``best`` or ``last``) of ``source_trial`` of
    ``source_stage``, on each of ``datasets`` read from ``root`` (None: each data set's default)."""

    source_stage: str
    source_trial: str
    checkpoint: str
    datasets: tuple[str, ...]
    root: str | None = None
    kind: str = "evaluate"


class EvaluateStage(StageBase):
    """Scores the chosen checkpoint of every trial of an earlier retrain or grid stage on held-out sets."""

    kind: Literal["evaluate"]
    from_: FromRef = Field(alias="from")
    datasets: list[str] = Field(min_length=1, description="test sets, e.g. [cifar10, cifar10.1]")
    checkpoint: Literal["best", "last"] = "best"
    root: str | None = Field(None, description="folder of the test sets; default: each data set's default")

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, v: list[str]) -> list[str]:
        return unique(v)

    @field_validator("root")
    @classmethod
    def _resolve_root(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_local(v, info)


def _check(spec: Any, stage: EvaluateStage, where: str, upstream_stage: Any) -> list[Issue]:
    issues: list[Issue] = []
    trained_on = None
    recipe_kind = STAGE_KINDS.get(upstream_stage.kind).recipe_kind if upstream_stage is not None else None
    if recipe_kind is not None and recipe_issue(upstream_stage, "", recipe_kind) is None:
        config, _ = base_config(spec, upstream_stage, "")
        trained_on = config.data.dataset if config is not None else None
    for j, name in enumerate(stage.datasets):
        at = f"{where}.datasets[{j}]"
        if name not in DATASET_SHAPES:
            known = DATASET_SHAPES.names()
            issues.append(Issue(at, f"must be a registered data set; known: {known}", show(name)))
            continue
        if trained_on in DATASET_SHAPES:
            a, b = DATASET_SHAPES.get(name), DATASET_SHAPES.get(trained_on)
            if (a.in_channels, a.num_classes) != (b.in_channels, b.num_classes):
                rule = (f"must match the images and classes of {trained_on!r}, which stage {upstream_stage.name!r} "
                        f"trains on ({b.in_channels} channels, {b.num_classes} classes; this one has "
                        f"{a.in_channels}, {a.num_classes})")  # fmt: skip
                issues.append(Issue(at, rule, show(name)))
    return issues


def _plan(spec: Any, stage: EvaluateStage, done: Mapping[str, StagePlan], upstream: Upstream | None) -> StagePlan:
    ref = stage.from_
    parent = done[ref.stage]
    results = finished_upstream(parent, upstream)
    if results is None:
        return StagePlan(stage.name, stage.kind, "waiting", waiting_on=ref.stage,
                         expected_trials=expected_trials(parent, ref.top))  # fmt: skip
    notes = [f"{ref.stage}/{r.trial_id} ({r.status}): no checkpoint to score"
             for r in results if r.status != "finished"]  # fmt: skip
    results = [r for r in results if r.status == "finished"]
    if ref.top is not None:
        results = sorted(results, key=lambda r: (r.score is None, -(r.score or 0.0), r.trial_id))[: ref.top]
    trials = []
    for r in results:
        config = EvaluateConfig(ref.stage, r.trial_id, stage.checkpoint, tuple(stage.datasets), stage.root)
        up_arm = upstream_arm(parent, r)
        trials.append(Trial(
            stage=stage.name, kind="evaluate", config=config, seed=r.seed, axes={},
            trial_id=trial_id_for(stage.name, "evaluate", config, r.trial_id),
            arm=make_arm(stage.name, "evaluate", config, [f"of {ref.stage}: {up_arm.label}"], from_arm=up_arm,
                         drop=("source_trial",)),
            lineage=Lineage(r.trial_id, ref.stage, f"{ref.stage}/{r.trial_id}:{stage.checkpoint}"),
        ))  # fmt: skip
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials),
                     notes=tuple(notes))  # fmt: skip


def _checkpoint_of(location: ExperimentLocation, trial_id: str, which: str) -> Path:
    from trainers.checkpoints import latest_checkpoint  # torch: imported when the stage runs, not to plan it

    workdir = location.trial_workdir(trial_id)
    if which == "best":
        return workdir / "best.pt"
    latest = latest_checkpoint(workdir / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"no epoch checkpoint of trial {trial_id} under {workdir / 'checkpoints'}")
    return latest


def run_evaluate_stage(trials: Sequence[Trial], location: ExperimentLocation, out: Callable[[str], None]) -> None:
    """Scores each evaluate trial's source checkpoint on its data sets; writes one trial row each."""
    from trainers.retrain import score_checkpoint  # torch, and results.py's pandas: only when the stage runs

    from ..results import ResultsStore

    store = ResultsStore.of(location)
    done = store.finished_trial_ids()
    for trial in trials:
        if trial.trial_id in done:
            continue
        cfg: EvaluateConfig = trial.config
        start = time.time()
        checkpoint = _checkpoint_of(location, cfg.source_trial, cfg.checkpoint)
        scores: dict[str, float] = {}
        protocol = None
        for dataset in cfg.datasets:
            result = score_checkpoint(checkpoint, dataset, root=cfg.root)
            scores[f"{dataset}.top1"] = result["top1"]
            scores[f"{dataset}.top5"] = result["top5"]
            protocol = result["protocol"]
            out(f"[{trial.stage}] {cfg.source_trial} on {dataset}: top-1 {result['top1']:.4f}")
        store.write_trial(trial.trial_id, 0, {
            "stage": trial.stage, "stage_kind": "evaluate", "seed": trial.seed, "status": "finished",
            "config": config_to_dict(cfg), "arm": trial.arm.arm_id, "lineage_trial_id": trial.lineage.parent,
            "lineage_stage": trial.lineage.parent_stage, "best": scores, "last": scores, "protocol": protocol,
            "wall_seconds": time.time() - start, "checkpoint": str(checkpoint),
            "extra": {"arm_label": trial.arm.label, "lineage_source": trial.lineage.source},
        })  # fmt: skip


EVALUATE = register_stage_kind(StageKind(
    name="evaluate", spec_model=EvaluateStage, plan=_plan, check=_check, consumes=("checkpoint",),
    run_in_driver=run_evaluate_stage,
))  # fmt: skip
