"""Did a search choose anything? Warnings for searches whose architecture weights ended near uniform.

A differentiable search always returns an architecture: the argmax of its weights. When the weights are
still close to uniform (normalised entropy near 1.0) that argmax is decided by noise, and a genotype or path
read from it is not a finding. Each search stage kind names its uniformity metrics
(:attr:`nas_service.stage_kinds.StageKind.uniformity_metrics`); the report warns per arm, ``run`` per trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .stage_kinds import STAGE_KINDS

__all__ = ["NEAR_UNIFORM", "least_decided", "trial_warning", "health_warnings"]

# At or above this share of the maximum entropy the weights are "near uniform". 0.95 of ln(8) ops is still
# a weight of at most about 0.3 on the strongest op of 8, against 0.125 for uniform.
NEAR_UNIFORM = 0.95


def least_decided(kind: str, metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The uniformity metric of ``kind`` closest to uniform in ``metrics`` (one epoch's), or None."""
    if kind not in STAGE_KINDS:
        return None
    values = [(name, metrics.get(name)) for name in STAGE_KINDS.get(kind).uniformity_metrics]
    found = [(name, float(v)) for name, v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(found, key=lambda item: item[1]) if found else None


def trial_warning(kind: str, metrics: Mapping[str, Any]) -> str | None:
    """A one-line warning when a search's (last) epoch left its architecture weights near uniform."""
    worst = least_decided(kind, metrics)
    if worst is None or worst[1] < NEAR_UNIFORM:
        return None
    return (f"architecture weights did not move: {worst[0]} {worst[1]:.3f} of max (1.0 = uniform); "
            "the architecture it returns is close to a coin toss")  # fmt: skip


def health_warnings(trials: pd.DataFrame) -> list[str]:
    """One line per search arm whose trials ended near uniform at their selected epoch (``best.*``)."""
    if trials.empty or "stage_kind" not in trials:
        return []
    out = []
    finished = trials[trials["status"] == "finished"] if "status" in trials else trials
    for (stage, arm), group in finished.groupby(["stage", "arm"], sort=False):
        kind = group["stage_kind"].iloc[0]
        names = STAGE_KINDS.get(kind).uniformity_metrics if kind in STAGE_KINDS else ()
        columns = [f"best.{name}" for name in names if f"best.{name}" in group]
        if not columns:
            continue
        worst = group[columns].max(axis=1)
        near = worst[worst >= NEAR_UNIFORM]
        if near.empty:
            continue
        label = group["extra.arm_label"].iloc[0] if "extra.arm_label" in group else arm
        metric = group.loc[near.index, columns].max().idxmax().removeprefix("best.")
        out.append(f"{stage} ({label}): architecture weights did not move in {len(near)} of {len(group)} trials "
                   f"(normalised entropy {near.min():.3f}-{near.max():.3f} of max at the selected epoch, worst: "
                   f"{metric}); its architectures are close to a coin toss, not a finding")  # fmt: skip
    return out
