"""Pieces the built-in stage kinds share: expansions into trials, training runs, upstream results."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
from trainers.summary import RetrainSummary, RunSummary

from ..spec_models import sweep_points, stage_base_config, train_stage_config
from ..trials import (
    StagePlan,
    Trial,
    Upstream,
    UpstreamResult,
    expected_trials,
    finished_upstream,
    make_trial,
    static_architectures,
    upstream_architectures,
)
from .base import STAGE_KINDS

__all__ = ["plan_search_stage", "plan_architecture_stage", "run_recipe_trial", "check_recipe_stage",
           "trained_upstream"]  # fmt: skip


def check_recipe_stage(recipe_kind: str) -> Callable[..., list[Any]]:
    """The ``check`` of a kind with nothing beyond the recipe rules (the recipe, overrides, sweep values)."""

    def check(spec: Any, stage: Any, where: str, upstream_stage: Any) -> list[Any]:
        return train_stage_config(spec, stage, where, recipe_kind)[1]

    return check


def run_recipe_trial(trial: Trial, workdir: Path, hooks: Any) -> RunSummary:
    """The ``run_trial`` of a kind whose trials train a recipe: the training engine's loop of its config."""
    from trainers.run import run_config  # torch: imported where a trial runs, not where a spec is planned

    return run_config(trial.config, workdir=workdir, hooks=hooks)


def plan_search_stage(spec: Any, stage: Any, done: Mapping[str, StagePlan], upstream: Upstream | None) -> StagePlan:
    """One trial per sweep point and seed, each searching from scratch."""
    base = stage_base_config(spec, stage)
    trials = [make_trial(stage, base, None, axes, seed) for axes in sweep_points(stage) for seed in stage.seeds]
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials),
                     epochs=base.epochs)  # fmt: skip


def plan_architecture_stage(spec: Any, stage: Any, done: Mapping[str, StagePlan], upstream: Upstream | None,
                            base: TrainConfig | None = None) -> StagePlan:  # fmt: skip
    """One trial per architecture (named in the stage, or taken ``from:`` an earlier stage), sweep point and
    seed; ``waiting`` while the ``from:`` stage has unfinished trials. Duplicates are trained once."""
    ref = getattr(stage, "from_", None)
    parent_plan = done[ref.stage] if ref is not None else None
    base = base if base is not None else stage_base_config(spec, stage)
    points = sweep_points(stage)
    static = static_architectures(stage)
    per_arch = len(points) * len(stage.seeds)
    common = {"asha": getattr(stage, "asha", None), "epochs": base.epochs}
    archs = list(static)
    notes: list[str] = []
    if ref is not None:
        assert parent_plan is not None  # the spec's rules guarantee an earlier stage
        upstream_count = expected_trials(parent_plan, ref.top)
        results = finished_upstream(parent_plan, upstream)
        if results is None:
            expected = None if upstream_count is None else (upstream_count + len(static)) * per_arch
            return StagePlan(stage.name, stage.kind, "waiting", waiting_on=ref.stage, expected_trials=expected,
                             **common)  # type: ignore[arg-type]
        genotypes = "genotype" in STAGE_KINDS.get(parent_plan.kind).produces
        from_archs, notes = upstream_architectures(stage, ref, parent_plan, results, base, genotypes=genotypes)
        archs = from_archs + archs
    trials: list[Trial] = []
    seen: dict[str, Trial] = {}
    for arch in archs:
        for axes in points:
            for seed in stage.seeds:
                trial = make_trial(stage, base, arch, axes, seed)
                if trial.trial_id in seen:
                    first = seen[trial.trial_id].lineage.source
                    notes.append(f"{arch.source} (seed {seed}) is the same trial as {first}; trained once")
                    continue
                seen[trial.trial_id] = trial
                trials.append(trial)
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials),
                     notes=tuple(notes), **common)  # type: ignore[arg-type]


def trained_upstream(trial_id: str, summary: RetrainSummary) -> UpstreamResult:
    """A retrain or grid trial's result: its fixed architecture, scored by its best validation accuracy."""
    arch = next(iter(summary.architecture().values()))
    score = summary.test_top1_at_best if summary.best_valid_top1 is None else summary.best_valid_top1
    return UpstreamResult(trial_id, summary.config["seed"], summary.config, best=arch, last=arch, score=score)
