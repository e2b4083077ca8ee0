"""``hypercuboid_search``: Differentiable Hyperparameter Grid Search (DHGS) over the HyperCuboid; each trial
extracts a path at its best search-validation epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal


from ..spec_models import TrainStageBase
from ..trials import UpstreamResult
from .base import StageKind, register_stage_kind
from .common import check_recipe_stage, run_recipe_trial, plan_search_stage


class HyperCuboidSearchStage(TrainStageBase):
    """DHGS over the HyperCuboid; each trial extracts a path."""

    kind: Literal["hypercuboid_search"]


def _upstream(trial_id: str, summary: Mapping[str, Any]) -> UpstreamResult:
    config = summary["config"]
    return UpstreamResult(trial_id, config["seed"], config, best=summary["best_path"], last=summary["last_path"],
                          score=summary.get("best_valid_acc"))  # fmt: skip


HYPERCUBOID_SEARCH = register_stage_kind(StageKind(
    name="hypercuboid_search", spec_model=HyperCuboidSearchStage, plan=plan_search_stage,
    check=check_recipe_stage("hypercuboid_search"), recipe_kind="hypercuboid_search", produces=("path",),
    run_trial=run_recipe_trial, epoch_metric="valid_acc", select_metric="best.valid_acc",
    architecture=lambda summary: {"path": summary["best_path"]}, upstream=_upstream,
    uniformity_metrics=("arch_entropy_normalized",),
))  # fmt: skip
