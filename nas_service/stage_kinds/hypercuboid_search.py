"""``hypercuboid_search``: Differentiable Hyperparameter Grid Search (DHGS) over the HyperCuboid; each trial
extracts a path at its best search-validation epoch."""

from __future__ import annotations

from typing import Literal

from trainers.summary import HyperCuboidSearchSummary

from ..spec_models import TrainStageBase
from ..trials import UpstreamResult
from .base import StageKind, register_stage_kind
from .common import check_recipe_stage, run_recipe_trial, plan_search_stage


class HyperCuboidSearchStage(TrainStageBase):
    """DHGS over the HyperCuboid; each trial extracts a path."""

    kind: Literal["hypercuboid_search"]


def _upstream(trial_id: str, summary: HyperCuboidSearchSummary) -> UpstreamResult:
    return UpstreamResult(trial_id, summary.config["seed"], summary.config, best=summary.best_path,
                          last=summary.last_path, score=summary.best_valid_acc)  # fmt: skip


HYPERCUBOID_SEARCH = register_stage_kind(StageKind(
    name="hypercuboid_search", spec_model=HyperCuboidSearchStage, plan=plan_search_stage,
    check=check_recipe_stage("hypercuboid_search"), recipe_kind="hypercuboid_search", produces=("path",),
    run_trial=run_recipe_trial, summary_type=HyperCuboidSearchSummary, epoch_metric="valid_acc",
    select_metric="best.valid_acc", upstream=_upstream,
    uniformity_metrics=("arch_entropy_normalized",),
))  # fmt: skip
