"""``grid``: plain training of fixed HyperCuboid paths (the human one-shot choices, random paths, listed
ones), or an Optuna search of the grid; ASHA may stop trials early."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from trainers.config import TrainConfig, config_to_dict

from ..spec_models import (
    AshaSpec,
    Candidate,
    FromRef,
    Issue,
    OptunaSpec,
    PathRef,
    PositiveInt,
    RandomPaths,
    TrainStageBase,
    arch_name_issues,
    show,
    stage_base_config,
    train_stage_config,
    unique,
)
from ..trials import OptunaPlan, StagePlan, Upstream, with_overrides_dict
from .base import StageKind, register_stage_kind
from .common import run_recipe_trial, plan_architecture_stage, trained_architecture, trained_upstream


class GridStage(TrainStageBase):
    """Plain training of fixed HyperCuboid paths (human, random, listed), or an Optuna search of the grid."""

    kind: Literal["grid"]
    from_: FromRef | None = Field(None, alias="from")
    candidates: list[Candidate] = Field(default_factory=list)
    paths: list[PathRef] = Field(default_factory=list)
    channels: list[PositiveInt] | None = Field(None, min_length=1, description="the grid's widths")
    layers: PositiveInt | None = Field(None, description="the grid's HyperCuboid layers (2 stages each)")
    head_channels: PositiveInt = Field(768, description="width of the final SharpSepConv of grid paths")
    optuna: OptunaSpec | None = None
    asha: AshaSpec | None = None

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else unique(v)


def _check(spec: Any, stage: GridStage, where: str, upstream_stage: Any) -> list[Issue]:
    config, issues, recipe_ok = train_stage_config(spec, stage, where, "retrain")
    if not recipe_ok:
        return issues
    return issues + arch_name_issues(stage, where, config) + _grid_issues(stage, where, config)


def _grid_issues(stage: GridStage, where: str, config: TrainConfig | None) -> list[Issue]:
    issues: list[Issue] = []
    needs_grid = stage.optuna is not None or any(isinstance(c, RandomPaths) for c in stage.candidates)
    if needs_grid and (stage.channels is None or stage.layers is None):
        missing = [f for f in ("channels", "layers") if getattr(stage, f) is None]
        rule = "random candidates and optuna draw from the stage's grid, so channels and layers are required"
        issues.append(Issue(f"{where}.{missing[0]}", rule, "nothing"))
    if stage.optuna is not None:
        fixed = [f for f in ("candidates", "paths") if getattr(stage, f)] + (["from"] if stage.from_ else [])
        if fixed:
            rule = f"searches the grid instead of fixed candidates; remove {fixed} or use a second grid stage"
            issues.append(Issue(f"{where}.optuna", rule, show(stage.optuna.model_dump())))
        if stage.sweep:
            issues.append(Issue(f"{where}.sweep", "is not combined with optuna (one search per stage)",
                                show(stage.sweep)))  # fmt: skip
        if len(stage.seeds) != 1:
            rule = ("an optuna stage trains each suggested path once (one seed); retrain the best over seeds "
                    "with a retrain stage `from: {stage: <this>, top: K}`")  # fmt: skip
            issues.append(Issue(f"{where}.seeds", rule, show(stage.seeds)))
    elif not (stage.candidates or stage.paths or stage.from_):
        rule = "a grid stage needs candidates:, paths:, from: or optuna:"
        issues.append(Issue(where, rule, show(stage.name)))
    if stage.asha is not None and config is not None and stage.asha.grace_period > config.epochs:
        issues.append(Issue(f"{where}.asha.grace_period", f"must be <= the stage's epochs ({config.epochs})",
                            show(stage.asha.grace_period)))  # fmt: skip
    return issues


def _plan(spec: Any, stage: GridStage, done: Mapping[str, StagePlan], upstream: Upstream | None) -> StagePlan:
    base = config_to_dict(stage_base_config(spec, stage))
    if stage.optuna is None:
        return plan_architecture_stage(spec, stage, done, upstream, base)
    assert stage.channels is not None and stage.layers is not None  # the spec's rules require them
    seeded = with_overrides_dict(base, {"seed": stage.seeds[0]})
    optuna = OptunaPlan(stage.name, stage.optuna.trials, stage.optuna.seed, tuple(stage.channels), stage.layers,
                        stage.head_channels, seeded)  # fmt: skip
    return StagePlan(stage.name, stage.kind, "search", expected_trials=stage.optuna.trials, optuna=optuna,
                     asha=stage.asha, epochs=base["epochs"])  # fmt: skip


GRID = register_stage_kind(StageKind(
    name="grid", spec_model=GridStage, plan=_plan, check=_check, recipe_kind="retrain",
    produces=("path", "checkpoint"), consumes=("path",), run_trial=run_recipe_trial,
    epoch_metric="valid_top1", select_metric="best.valid_top1", headline_metric="best.test_top1",
    architecture=trained_architecture, upstream=trained_upstream,
))  # fmt: skip
