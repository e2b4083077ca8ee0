"""``grid``: plain training of fixed HyperCuboid paths (the human one-shot choices, random paths, listed
ones), or an Optuna search of the grid; ASHA may stop trials early."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from search_spaces.paths import PUBLISHED_PATHS, HyperCuboidPath, PathError
from trainers.config import TrainConfig, with_overrides
from trainers.summary import RetrainSummary

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
    path_refs,
    show,
    stage_base_config,
    train_stage_config,
    unique,
)
from ..trials import OptunaPlan, StagePlan, Upstream
from .base import StageKind, register_stage_kind
from .common import run_recipe_trial, plan_architecture_stage, trained_upstream


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
    off_grid: Literal["refuse", "allow"] = Field(
        "refuse", description="fixed paths off the stage's grid (channels, layers, head_channels): refused "
        "unless `allow`, so a comparison on one grid cannot silently mix in another grid's paths")

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else unique(v)


def off_grid_reasons(path: HyperCuboidPath, channels: list[int], layers: int, head_channels: int) -> list[str]:
    """Why ``path`` is not a path of the grid (empty when it is one)."""
    reasons = []
    widths = sorted({path.stem_channels, *(w for s in path.stages for w in (s.c_in, s.c_out))} - set(channels))
    if widths:
        reasons.append(f"widths {widths} not in channels {channels}")
    if len(path.stages) != 2 * layers:
        reasons.append(f"{len(path.stages)} stages, the grid has {2 * layers} ({layers} layers)")
    if path.head_channels != head_channels:
        reasons.append(f"head {path.head_channels}, the grid's is {head_channels}")
    return reasons


def _check(spec: Any, stage: GridStage, where: str, upstream_stage: Any) -> list[Issue]:
    config, issues, recipe_ok = train_stage_config(spec, stage, where, "retrain")
    if not recipe_ok:
        return issues
    issues += arch_name_issues(stage, where, config) + _grid_issues(stage, where, config)
    return issues + _upstream_grid_issues(spec, stage, where, upstream_stage)


def _upstream_grid_issues(spec: Any, stage: GridStage, where: str, upstream_stage: Any) -> list[Issue]:
    """The paths a DHGS stage extracts are paths of its own grid: it must be this stage's grid."""
    if (upstream_stage is None or upstream_stage.kind != "hypercuboid_search" or stage.off_grid == "allow"
            or stage.channels is None or stage.layers is None):  # fmt: skip
        return []
    try:
        search = stage_base_config(spec, upstream_stage)
    except ValueError:
        return []  # the upstream stage's own check reports its config
    theirs = (list(search.channels), search.layers, search.head_channels)
    mine = (list(stage.channels), stage.layers, stage.head_channels)
    if theirs == mine:
        return []
    rule = (f"takes paths from {upstream_stage.name!r}, whose grid is channels {theirs[0]}, layers {theirs[1]}, "
            f"head {theirs[2]}, but this stage's grid is channels {mine[0]}, layers {mine[1]}, head {mine[2]}; "
            "make them one grid, or set `off_grid: allow`")  # fmt: skip
    return [Issue(f"{where}.from", rule, show(upstream_stage.name))]


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
    if stage.channels is not None and stage.layers is not None and stage.off_grid == "refuse":
        issues += _off_grid_issues(stage, where)
    return issues


def _off_grid_issues(stage: GridStage, where: str) -> list[Issue]:
    """Named and inline paths must be paths of the stage's grid (random and Optuna ones are by construction)."""
    issues = []
    for field_name, ref in [(f, r) for f, r in path_refs(stage) if not isinstance(r, RandomPaths)]:
        try:
            path = PUBLISHED_PATHS.get(ref).path if isinstance(ref, str) else ref.path()
        except (KeyError, PathError):
            continue  # arch_name_issues reports unknown names and malformed paths
        reasons = off_grid_reasons(path, list(stage.channels or []), int(stage.layers or 0), stage.head_channels)
        if reasons:
            rule = (f"is off the stage's grid ({'; '.join(reasons)}); put it on the grid, or set `off_grid: allow` "
                    "to mix grids on purpose")  # fmt: skip
            issues.append(Issue(f"{where}.{field_name}", rule,
                                show(ref if isinstance(ref, str) else ref.model_dump(exclude_none=True))))  # fmt: skip
    return issues


def _plan(spec: Any, stage: GridStage, done: Mapping[str, StagePlan], upstream: Upstream | None) -> StagePlan:
    base = stage_base_config(spec, stage)
    if stage.optuna is None:
        return plan_architecture_stage(spec, stage, done, upstream, base)
    assert stage.channels is not None and stage.layers is not None  # the spec's rules require them
    seeded = with_overrides(base, {"seed": stage.seeds[0]})
    optuna = OptunaPlan(stage.name, stage.optuna.trials, stage.optuna.seed, tuple(stage.channels), stage.layers,
                        stage.head_channels, seeded)  # fmt: skip
    return StagePlan(stage.name, stage.kind, "search", expected_trials=stage.optuna.trials, optuna=optuna,
                     asha=stage.asha, epochs=base.epochs)  # fmt: skip


GRID = register_stage_kind(StageKind(
    name="grid", spec_model=GridStage, plan=_plan, check=_check, recipe_kind="retrain",
    produces=("path", "checkpoint"), consumes=("path",), run_trial=run_recipe_trial,
    epoch_metric="valid_top1", select_metric="best.valid_top1", headline_metric="best.test_top1",
    summary_type=RetrainSummary, upstream=trained_upstream,
))  # fmt: skip
