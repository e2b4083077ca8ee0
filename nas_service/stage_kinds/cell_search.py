"""``cell_search``: a differentiable cell search (DARTS / SharpSepConvDARTS / sharpDARTS / SharperDARTS);
each trial chooses a genotype at its best search-validation epoch."""

from __future__ import annotations

from typing import Literal

from trainers.summary import CellSearchSummary

from ..spec_models import TrainStageBase
from ..trials import UpstreamResult
from .base import StageKind, register_stage_kind
from .common import check_recipe_stage, run_recipe_trial, plan_search_stage


class CellSearchStage(TrainStageBase):
    """A differentiable cell search; each trial chooses a genotype."""

    kind: Literal["cell_search"]


def _upstream(trial_id: str, summary: CellSearchSummary) -> UpstreamResult:
    last = summary.history[-1] if summary.history else {}
    return UpstreamResult(trial_id, summary.config["seed"], summary.config, best=summary.best_genotype,
                          last=summary.last_genotype, best_no_hack=summary.best_genotype_no_hack,
                          last_no_hack=last.get("genotype_no_hack"), score=summary.best_valid_acc)  # fmt: skip


CELL_SEARCH = register_stage_kind(StageKind(
    name="cell_search", spec_model=CellSearchStage, plan=plan_search_stage, check=check_recipe_stage("cell_search"),
    recipe_kind="cell_search", produces=("genotype",), parses=("default", "no_hack"),
    run_trial=run_recipe_trial, summary_type=CellSearchSummary, epoch_metric="valid_acc",
    select_metric="best.valid_acc", upstream=_upstream,
    uniformity_metrics=("arch_entropy_normal", "arch_entropy_reduce"),
))  # fmt: skip
