"""``retrain``: trains genotypes or paths from scratch (those an earlier stage chose, published or inline
ones); with ``workers`` >= 2 each trial is a DDP run on Ray Train."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool

from trainers.config import ConfigError, TrainConfig, with_overrides
from trainers.summary import RetrainSummary

from ..spec_models import (
    FromRef,
    GenotypeRef,
    Issue,
    PathRef,
    PositiveInt,
    Resources,
    StrictInt,
    TrainStageBase,
    arch_name_issues,
    nest_dotted,
    show,
    sweep_points,
    train_stage_config,
)
from .base import StageKind, register_stage_kind
from .common import run_recipe_trial, plan_architecture_stage, trained_upstream

class RetrainStage(TrainStageBase):
    """Trains genotypes or paths from scratch: those an earlier stage chose, published or inline ones.

    With ``workers`` >= 2 each trial is a DDP run on Ray Train: its Tune trial drives ``workers`` workers
    holding ``resources_per_worker`` each, and ``data.batch_size`` is the global batch they split.
    """

    kind: Literal["retrain"]
    from_: FromRef | None = Field(None, alias="from")
    genotypes: list[GenotypeRef] = Field(default_factory=list, description="published names or inline")
    paths: list[PathRef] = Field(default_factory=list, description="published path names or inline paths")
    workers: PositiveInt = Field(
        1, description="DDP workers per trial (Ray Train); 1 trains in the trial's own process"
    )  # fmt: skip
    resources_per_worker: Resources = Field(
        default_factory=Resources, description="what each DDP worker holds (with workers >= 2)"
    )  # fmt: skip
    worker_retries: StrictInt = Field(
        2, ge=0, description="restarts of a DDP worker group from its last checkpoint after a lost worker or node"
    )  # fmt: skip
    sync_batchnorm: StrictBool = Field(
        True,
        description="DDP batch norm uses the global batch's statistics (as one process would; then the worker "
        "count does not change results); false: each worker's own, faster on CPU, and part of the trial's identity",
    )  # fmt: skip


def _check(spec: Any, stage: RetrainStage, where: str, upstream_stage: Any) -> list[Issue]:
    config, issues, recipe_ok = train_stage_config(spec, stage, where, "retrain")
    if not recipe_ok:
        return issues
    issues.extend(arch_name_issues(stage, where, config))
    if not (stage.from_ or stage.genotypes or stage.paths):
        default = getattr(config, "genotype", None) or getattr(config, "path", None) if config else None
        issues.append(Issue(where, "a retrain stage names what it trains: from:, genotypes: or paths: "
                                   f"(the recipe's default is {default!r})", show(stage.name)))  # fmt: skip
    if stage.workers > 1 and config is not None:
        issues.extend(_check_workers(stage, where, config))
    return issues


def _check_workers(stage: RetrainStage, where: str, config: TrainConfig) -> list[Issue]:
    """The global batch of every sweep point must split evenly over the stage's DDP workers."""
    issues: list[Issue] = []
    for point in sweep_points(stage):
        try:
            batch = with_overrides(config, nest_dotted(point)).data.batch_size
        except ConfigError:
            continue  # reported with the sweep's rules
        if batch % stage.workers:
            swept = "data.batch_size" in point
            rule = (f"data.batch_size is the global batch and must split evenly over the {stage.workers} workers "
                    f"(a multiple of {stage.workers})")  # fmt: skip
            issues.append(Issue(f"{where}.sweep.data.batch_size" if swept else f"{where}.workers", rule,
                                f"data.batch_size {batch} over workers {stage.workers}"))  # fmt: skip
    return list(dict.fromkeys(issues))


RETRAIN = register_stage_kind(StageKind(
    name="retrain", spec_model=RetrainStage, plan=plan_architecture_stage, check=_check, recipe_kind="retrain",
    produces=("checkpoint",), consumes=("genotype", "path"), run_trial=run_recipe_trial,
    epoch_metric="valid_top1", select_metric="best.valid_top1", headline_metric="best.test_top1",
    summary_type=RetrainSummary, upstream=trained_upstream,
))  # fmt: skip
