"""Comparison tables read only from the results store: per stage and arm, mean and spread over seeds.

An arm is a stage's configuration without the seed. Its cost is its own compute plus, through lineage,
the compute of the search trial that produced its genotype or path.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from .stage_kinds import STAGE_KINDS

__all__ = ["arm_table", "format_report", "status_table"]



def _metrics(kind: str) -> tuple[str | None, str | None]:
    """The selection and headline metrics (trials-table columns) of a stage kind; none for a kind that is
    not registered here (a store written by a newer version)."""
    if kind not in STAGE_KINDS:
        return None, None
    entry = STAGE_KINDS.get(kind)
    return entry.select_metric, entry.headline_metric


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def arm_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, arm): seeds, mean/std of the metrics, best architecture, params, cost."""
    if trials.empty:
        return pd.DataFrame()
    # Cost in trial wall seconds (a trial holds its `resources` for that long); CPU seconds are in `results`.
    cost = dict(zip(trials["trial_id"], pd.to_numeric(trials["wall_seconds"], errors="coerce").fillna(0.0)))
    rows = []
    # Stages in the order they finished (the spec's order), arms in the order their first trial did.
    trials = trials.sort_values("finished_at", kind="stable")
    for (stage, arm), group in trials.groupby(["stage", "arm"], sort=False):
        kind = group["stage_kind"].iloc[0]
        select, headline = _metrics(kind)
        finished = group[group["status"] == "finished"]
        label = group.get("extra.arm_label", pd.Series([""])).iloc[0] or ""
        row: dict[str, Any] = {
            "stage": stage, "kind": kind, "arm": label or arm, "runs": len(finished),
            "seeds": int(finished["seed"].nunique()), "diverged": int((group["status"] == "diverged").sum()),
        }  # fmt: skip
        for name, column in (("select", select), ("test", headline)):
            if column and column in finished:
                mean, std = _mean_std(finished[column])
                row[f"{name} ({column.split('.', 1)[1]})"] = f"{mean:.4f} ± {std:.4f}" if not math.isnan(mean) else "-"
        if kind == "evaluate":
            for column in [c for c in finished.columns if c.startswith("best.") and c.endswith(".top1")]:
                mean, std = _mean_std(finished[column])
                row[column[5:]] = f"{mean:.4f} ± {std:.4f}"
        if "params" in finished and finished["params"].notna().any():
            row["params"] = f"{int(pd.to_numeric(finished['params']).median()):,}"
        own = float(sum(cost.get(t, 0.0) for t in group["trial_id"]))
        parents = {p for p in group.get("lineage_trial_id", pd.Series(dtype=object)).dropna()}
        row["trial s (own + search)"] = f"{own:.0f} + {sum(cost.get(p, 0.0) for p in parents):.0f}"
        if select and select in finished and not finished.empty:
            best_row = finished.loc[pd.to_numeric(finished[select], errors="coerce").idxmax()]
            arch = next((v for v in (best_row.get("genotype_json"), best_row.get("path_json")) if isinstance(v, str)), None)
            row["best architecture"] = _short_arch(arch)
        row["arm id"] = arm
        rows.append(row)
    table = pd.DataFrame(rows)
    # Arms whose readable labels collide (e.g. every Optuna suggestion is "path=optuna") get their id.
    clash = table.duplicated(["stage", "arm"], keep=False)
    table.loc[clash, "arm"] = table.loc[clash, "arm"] + " [" + table.loc[clash, "arm id"].astype(str) + "]"
    return table.drop(columns=["arm id"])


def _short_arch(arch: Any) -> str:
    if not isinstance(arch, str):
        return ""
    data = json.loads(arch)
    if "normal" in data:
        return "normal: " + ", ".join(f"{op}({i})" for op, i in data["normal"])
    return " > ".join(f"{s[0]}:{s[1]}->{s[2]} {s[3]}" for s in data.get("stages", []))


def status_table(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial seen: stage, status (or running/interrupted), epochs recorded, best metric."""
    progress = epochs.groupby("trial_id")["epoch"].max() if not epochs.empty else pd.Series(dtype=float)
    stages = epochs.groupby("trial_id")["stage"].first() if not epochs.empty else pd.Series(dtype=object)
    rows = []
    seen = set()
    for _, t in trials.iterrows():
        seen.add(t["trial_id"])
        rows.append({"stage": t["stage"], "trial": t["trial_id"], "status": t["status"], "seed": t["seed"],
                     "epochs": int(progress.get(t["trial_id"], 0) or 0)})  # fmt: skip
    for trial_id, epoch in progress.items():
        if trial_id not in seen:
            rows.append({"stage": stages[trial_id], "trial": trial_id, "status": "started (not finished)",
                         "seed": None, "epochs": int(epoch)})  # fmt: skip
    return pd.DataFrame(rows)


def format_report(trials: pd.DataFrame) -> str:
    """The report as text: one table per stage."""
    table = arm_table(trials)
    if table.empty:
        return "no finished trials yet"
    parts = []
    for stage, group in table.groupby("stage", sort=False):
        group = group.drop(columns=["stage"]).dropna(axis=1, how="all")
        parts.append(f"== {stage} ({group['kind'].iloc[0]}) ==\n" + group.drop(columns=["kind"]).to_string(index=False))
    return "\n\n".join(parts)
