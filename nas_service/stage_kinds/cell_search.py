"""``cell_search``: a differentiable cell search (DARTS / SharpSepConvDARTS / sharpDARTS / SharperDARTS);
each trial chooses a genotype at its best search-validation epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal


from ..spec_models import TrainStageBase
from ..trials import UpstreamResult
from .base import StageKind, register_stage_kind
from .common import check_recipe_stage, run_recipe_trial, plan_search_stage


class CellSearchStage(TrainStageBase):
    """A differentiable cell search; each trial chooses a genotype."""

    kind: Literal["cell_search"]


def _upstream(trial_id: str, summary: Mapping[str, Any]) -> UpstreamResult:
    config = summary["config"]
    history = summary.get("history") or [{}]
    return UpstreamResult(trial_id, config["seed"], config, best=summary["best_genotype"],
                          last=summary["last_genotype"], best_no_hack=summary.get("best_genotype_no_hack"),
                          last_no_hack=history[-1].get("genotype_no_hack"), score=summary.get("best_valid_acc"))  # fmt: skip


CELL_SEARCH = register_stage_kind(StageKind(
    name="cell_search", spec_model=CellSearchStage, plan=plan_search_stage, check=check_recipe_stage("cell_search"),
    recipe_kind="cell_search", produces=("genotype",), parses=("default", "no_hack"),
    run_trial=run_recipe_trial, epoch_metric="valid_acc", select_metric="best.valid_acc",
    architecture=lambda summary: {"genotype": summary["best_genotype"]}, upstream=_upstream,
    uniformity_metrics=("arch_entropy_normal", "arch_entropy_reduce"),
))  # fmt: skip
