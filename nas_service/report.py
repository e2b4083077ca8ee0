"""Comparison tables read only from the results store: per stage and arm, the metrics over replicates with
confidence intervals, and each arm against the stage's baseline arm (:mod:`nas_service.statistics`).

An arm is a stage's configuration without the seed. A replicate is one independent run of an arm: its own
seed, or for a trial whose architecture came through lineage, the seed of the search that produced it, so
the retrains of the genotypes that ``weighting=max_w`` searches with seeds 0, 1, 2 chose are three
replicates of one arm however many retrain seeds each genotype got (their values are averaged).
An arm's cost is its own compute plus, through lineage, the compute of the searches that produced it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .search_health import health_warnings
from .stage_kinds import STAGE_KINDS
from .statistics import MIN_REPLICATES, compare, holm, main_effects, summarize

__all__ = ["arm_table", "comparison_table", "main_effect_table", "ReportTables", "report_tables", "report_sections",
           "render_report", "format_report", "status_table", "stage_counts", "REPORT_FORMATS"]

# html is the page of nas_service.report_page; the others are text this module writes.
REPORT_FORMATS = ("text", "markdown", "json", "csv", "latex", "html")


def _metrics(kind: str) -> tuple[str | None, str | None]:
    """The selection and headline metrics (trials-table columns) of a stage kind; none for a kind that is
    not registered here (a store written by a newer version)."""
    if kind not in STAGE_KINDS:
        return None, None
    entry = STAGE_KINDS.get(kind)
    return entry.select_metric, entry.headline_metric


def _summary(group: pd.DataFrame, column: str) -> str:
    """The column over the group's replicates (each the mean of its trials)."""
    return summarize(list(replicate_means(group, column).values())).text()


def replicate_keys(trials: pd.DataFrame) -> pd.Series:
    """Each trial's replicate, the unit that is independent of the arm's other replicates.

    A trial without lineage is its own replicate: ``(experiment, None, its seed)``. A trial whose
    architecture came from another trial (a retrain of a search's genotype, an evaluation of a retrain)
    belongs to the replicate of its lineage's first trial, ``(experiment, that trial's seed, None)``: five
    retrains of one searched genotype are one replicate of the search method, not five, and their values
    are averaged into it (:func:`replicate_means`). The experiment keeps two experiments' seed-0 runs apart
    when several are compared at once.
    """
    seed_of = dict(zip(trials["trial_id"], trials["seed"]))
    parent_of = ({t: p for t, p in zip(trials["trial_id"], trials["lineage_trial_id"]) if isinstance(p, str)}
                 if "lineage_trial_id" in trials else {})  # fmt: skip
    experiments = trials["experiment"] if "experiment" in trials else pd.Series("", index=trials.index)

    def root(trial: str) -> str:
        seen = {trial}
        while parent_of.get(trial) in seed_of and parent_of[trial] not in seen:
            trial = parent_of[trial]
            seen.add(trial)
        return trial

    keys = []
    for experiment, trial, seed in zip(experiments, trials["trial_id"], trials["seed"]):
        if isinstance(parent_of.get(trial), str):
            keys.append((experiment, seed_of.get(root(trial)), None))
        else:
            keys.append((experiment, None, seed))
    return pd.Series(keys, index=trials.index, dtype=object)


def replicate_means(group: pd.DataFrame, column: str) -> dict[Any, float]:
    """``{replicate: mean of the column over its trials}`` (``group`` has a ``replicate`` column); trials
    whose value is missing or not a number are left out."""
    values = pd.to_numeric(group[column], errors="coerce")
    sums: dict[Any, list[float]] = {}
    for key, value in zip(group["replicate"], values):
        if not math.isnan(value):
            sums.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in sums.items()}


def _label(group: pd.DataFrame, arm: str) -> str:
    return group.get("extra.arm_label", pd.Series([""])).iloc[0] or arm


def arm_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, arm): replicates, each metric as mean ± std [95% t interval] (or flagged when
    there are fewer than 3 replicates), best architecture, params, cost."""
    if trials.empty:
        return pd.DataFrame()
    trials = trials.assign(replicate=replicate_keys(trials))
    # Cost in trial wall seconds (a trial holds its `resources` for that long), and in GPU seconds (GPUs
    # held x wall seconds) where any trial held a GPU; CPU seconds are in `results`.
    cost = _seconds(trials, "wall_seconds")
    gpu_cost = _seconds(trials, "gpu_seconds")
    with_gpus = any(v > 0 for v in gpu_cost.values())
    rows = []
    # Stages in the order they finished (the spec's order), arms in the order their first trial did.
    trials = trials.sort_values("finished_at", kind="stable")
    for (stage, arm), group in trials.groupby(["stage", "arm"], sort=False):
        kind = group["stage_kind"].iloc[0]
        select, headline = _metrics(kind)
        finished = group[group["status"] == "finished"]
        row: dict[str, Any] = {
            "stage": stage, "kind": kind, "arm": _label(group, arm), "runs": len(finished),
            "replicates": int(finished["replicate"].nunique()), "diverged": int((group["status"] == "diverged").sum()),
        }  # fmt: skip
        for name, column in (("select", select), ("test", headline)):
            if column and column in finished:
                row[f"{name} ({column.split('.', 1)[1]})"] = _summary(finished, column)
        if kind == "evaluate":
            for column in [c for c in finished.columns if c.startswith("best.") and c.endswith(".top1")]:
                row[column[5:]] = _summary(finished, column)
        for column, name in (("params", "params"), ("multiply_adds", "mult-adds")):
            if column in finished and finished[column].notna().any():
                row[name] = f"{int(pd.to_numeric(finished[column]).median()):,}"
        parents = {p for p in group.get("lineage_trial_id", pd.Series(dtype=object)).dropna()}
        for name, seconds in (("trial s", cost), ("GPU s", gpu_cost) if with_gpus else (None, None)):
            if name:
                own = float(sum(seconds.get(t, 0.0) for t in group["trial_id"]))
                row[f"{name} (own + search)"] = f"{own:.0f} + {sum(seconds.get(p, 0.0) for p in parents):.0f}"
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


def _seconds(trials: pd.DataFrame, column: str) -> dict[str, float]:
    values = pd.to_numeric(trials[column], errors="coerce").fillna(0.0) if column in trials else [0.0] * len(trials)
    return dict(zip(trials["trial_id"], values))


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


def stage_counts(trials: pd.DataFrame, epochs: pd.DataFrame, planned: Mapping[str, int | None] | None = None
                 ) -> pd.DataFrame:  # fmt: skip
    """Per stage (the spec's order where ``planned`` gives it): trials planned, finished, diverged, errored
    (to be retried), running (epochs recorded, no end yet) and pending (planned, not started; None when
    the plan is not known)."""
    planned = dict(planned or {})
    ended = trials.set_index("trial_id")["status"] if not trials.empty else pd.Series(dtype=object)
    started = epochs.groupby("trial_id")["stage"].first() if not epochs.empty else pd.Series(dtype=object)
    stages = list(dict.fromkeys([*planned, *(trials["stage"] if not trials.empty else []), *started]))
    rows = []
    for stage in stages:
        statuses = trials.loc[trials["stage"] == stage, "status"] if not trials.empty else pd.Series(dtype=object)
        running = sum(1 for tid, st in started.items() if st == stage and tid not in ended.index)
        total = planned.get(stage)
        seen = len(statuses) + running
        rows.append({"stage": stage, "planned": total, "finished": int((statuses == "finished").sum()),
                     "diverged": int((statuses == "diverged").sum()), "errored": int((statuses == "errored").sum()),
                     "running": running, "pending": None if total is None else max(0, total - seen)})  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "planned", "finished", "diverged", "errored", "running", "pending"]
                        ).astype({"planned": "Int64", "pending": "Int64"})  # fmt: skip


def _compared_metric(kind: str) -> str | None:
    select, headline = _metrics(kind)
    return headline or select


def comparison_table(trials: pd.DataFrame, baselines: Mapping[str, str]) -> pd.DataFrame:
    """Each arm of a stage against that stage's baseline arm (``baselines``: stage -> arm label or id), on the
    stage's headline metric (its selection metric where it has none).

    The difference is paired by replicate where the two arms share at least two replicates (paired t-test,
    Wilcoxon signed-rank), unpaired otherwise (Welch's t-test, Mann-Whitney U); the t-test p-values are
    Holm-corrected across the arms of the stage. Comparisons with fewer than 3 replicates are flagged.
    """
    if trials.empty or not baselines:
        return pd.DataFrame()
    trials = trials.assign(replicate=replicate_keys(trials))
    rows = []
    for stage, wanted in baselines.items():
        done = trials[(trials["stage"] == stage) & (trials["status"] == "finished")]
        if done.empty:
            raise ValueError(f"baseline: stage {stage!r} has no finished trials; stages: {sorted(set(trials['stage']))}")
        metric = _compared_metric(done["stage_kind"].iloc[0])
        arms = {arm: group for arm, group in done.groupby("arm", sort=False)}
        labels = {arm: _label(group, arm) for arm, group in arms.items()}
        base = next((arm for arm, label in labels.items() if wanted in (label, arm)), None)
        if base is None:
            raise ValueError(f"baseline: stage {stage!r} has no arm {wanted!r}; its arms: {sorted(labels.values())}")
        if metric is None or metric not in done:
            continue

        found = [(arm, compare(replicate_means(group, metric), replicate_means(arms[base], metric)))
                 for arm, group in arms.items() if arm != base]  # fmt: skip
        adjusted = holm([c.t_p for _, c in found])
        for (arm, c), holm_p in zip(found, adjusted):
            interval = "" if c.ci_low is None else f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
            rows.append({
                "stage": stage, "arm": labels[arm], "baseline": labels[base], "metric": metric.split(".", 1)[1],
                "pairing": f"paired on {c.n} replicates" if c.paired else f"unpaired ({c.n} vs {c.n_baseline})",
                "difference": f"{c.difference:+.4f}{interval}", "t-test p": _p(c.t_p), "Holm p": _p(holm_p),
                # one column whichever test applies, so a stage with paired and unpaired arms stays one table
                "rank test": "Wilcoxon" if c.paired else "Mann-Whitney", "rank p": _p(c.rank_p), "flag": c.flag,
            })  # fmt: skip
    return pd.DataFrame(rows)


def main_effect_table(trials: pd.DataFrame, sweeps: Mapping[str, Mapping[str, list[Any]]] | None = None) -> pd.DataFrame:
    """Per stage with a sweep: each axis's main effect on the stage's headline (else selection) metric,
    each level against the axis's first level, averaged over the other axes and the replicates.

    ``sweeps`` (stage -> axis -> levels, as the spec lists them) orders the levels, so the reference is
    the spec's first level; without it, levels come in the order their first trial finished."""
    if trials.empty or "extra.axes_json" not in trials:
        return pd.DataFrame()
    trials = trials.assign(replicate=replicate_keys(trials)).sort_values("finished_at", kind="stable")
    rows = []
    for stage, done in trials[trials["status"] == "finished"].groupby("stage", sort=False):
        order = {axis: [json.dumps(v) if isinstance(v, (dict, list)) else v for v in levels]
                 for axis, levels in ((sweeps or {}).get(stage) or {}).items()}  # fmt: skip
        metric = _compared_metric(done["stage_kind"].iloc[0])
        if metric is None or metric not in done:
            continue
        records = []
        for axes_json, replicate, value in zip(done["extra.axes_json"], done["replicate"], done[metric]):
            if isinstance(axes_json, str) and not pd.isna(value):
                records.append({**{k: json.dumps(v) if isinstance(v, (dict, list)) else v
                                   for k, v in json.loads(axes_json).items()},
                                "replicate": replicate, "value": float(value)})  # fmt: skip
        axes = [a for a in dict.fromkeys(k for r in records for k in r if k not in ("replicate", "value"))
                if len({str(r.get(a)) for r in records}) > 1]  # fmt: skip
        records = [r for r in records if all(a in r for a in axes)]
        rank = {a: {level: i for i, level in enumerate(order.get(a, []))} for a in axes}
        records.sort(key=lambda r: [rank[a].get(r[a], len(rank[a])) for a in axes])  # stable: finish order otherwise
        for effect in main_effects(records, axes, "value") if axes else []:
            interval = "" if effect.ci_low is None else f" [{effect.ci_low:+.4f}, {effect.ci_high:+.4f}]"
            rows.append({
                "stage": stage, "metric": metric.split(".", 1)[1], "axis": effect.axis,
                "effect": f"{effect.level} - {effect.reference}", "cells": effect.n,
                "difference": f"{effect.difference:+.4f}{interval}",
                "flag": f"n<{MIN_REPLICATES}" if effect.n < MIN_REPLICATES else "",
            })  # fmt: skip
    return pd.DataFrame(rows)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _latex(frame: pd.DataFrame, caption: str) -> str:
    # pandas' Styler (jinja2) escapes LaTeX's special characters in cells and headers.
    styler = frame.style.hide(axis="index").format(escape="latex", na_rep="").format_index(escape="latex", axis=1)
    return styler.to_latex(caption=caption.replace("_", r"\_"), hrules=True, position="htbp")


@dataclass(frozen=True)
class ReportTables:
    """The report's three tables, computed once and rendered in every format: the arms of every stage, each
    arm against its stage's baseline arm, and the main effects of the sweep axes (``stage`` in each)."""

    arms: pd.DataFrame
    comparisons: pd.DataFrame
    main_effects: pd.DataFrame
    warnings: tuple[str, ...] = ()  # searches that chose nothing (nas_service.search_health)


def report_tables(trials: pd.DataFrame, baselines: Mapping[str, str] | None = None,
                  sweeps: Mapping[str, Mapping[str, list[Any]]] | None = None) -> ReportTables:  # fmt: skip
    """:func:`arm_table`, :func:`comparison_table`, :func:`main_effect_table` and the search-health warnings
    of ``trials``."""
    return ReportTables(arm_table(trials), comparison_table(trials, baselines or {}), main_effect_table(trials, sweeps),
                        tuple(health_warnings(trials)))  # fmt: skip


def report_sections(tables: ReportTables) -> list[tuple[str, int, str, pd.DataFrame]]:
    """The report's tables in page order: ``(stage, level, heading, table)``: the arms of each stage
    (level 1), then its comparison with the baseline arm and its main effects where it has them (level 2)."""
    if tables.arms.empty:
        return []
    comparisons, effects = tables.comparisons, tables.main_effects
    out = []
    for stage, group in tables.arms.groupby("stage", sort=False):
        group = group.drop(columns=["stage"]).dropna(axis=1, how="all")
        kind = group["kind"].iloc[0]
        out.append((stage, 1, f"{stage} ({kind})", group.drop(columns=["kind"])))
        mine = comparisons[comparisons["stage"] == stage].drop(columns=["stage"]) if not comparisons.empty else comparisons
        if not mine.empty:
            heading = f"against {mine['baseline'].iloc[0]} ({mine['metric'].iloc[0]}; 95% t intervals; Holm across arms)"
            out.append((stage, 2, heading, mine.drop(columns=["baseline", "metric"])))
        mine = effects[effects["stage"] == stage].drop(columns=["stage"]) if not effects.empty else effects
        if not mine.empty:
            heading = f"main effects ({mine['metric'].iloc[0]}; each level minus the axis's first, 95% t intervals)"
            out.append((stage, 2, heading, mine.drop(columns=["metric"])))
    return out


def _check_format(fmt: str) -> None:
    if fmt not in REPORT_FORMATS or fmt == "html":
        raise ValueError(f"format: must be one of {[f for f in REPORT_FORMATS if f != 'html']}, got {fmt!r}")


def render_report(tables: ReportTables, fmt: str = "text") -> str:
    """The tables as ``text``, ``markdown`` or ``latex`` (one table per stage, its comparison with the
    baseline arm and its main effects), or all rows as ``json`` or ``csv`` (the arms)."""
    _check_format(fmt)
    if fmt == "json":
        return json.dumps({"arms": tables.arms.to_dict("records"), "comparisons": tables.comparisons.to_dict("records"),
                           "main_effects": tables.main_effects.to_dict("records"), "warnings": list(tables.warnings)},
                          indent=2)  # fmt: skip
    if fmt == "csv":
        return tables.arms.to_csv(index=False)
    sections = report_sections(tables)
    if not sections:
        return "no finished trials yet"
    parts = []
    if tables.warnings:
        if fmt == "markdown":
            parts.append("## Warnings\n\n" + "\n".join(f"- {w}" for w in tables.warnings))
        elif fmt == "latex":
            parts.append("\n".join(f"% warning: {w}" for w in tables.warnings))
        else:
            parts.append("== warnings ==\n" + "\n".join(f"! {w}" for w in tables.warnings))
    for stage, level, heading, table in sections:
        first = level == 1
        if fmt == "markdown":
            parts.append(f"{'##' if first else '###'} {heading}\n\n{_markdown(table)}")
        elif fmt == "latex":
            parts.append(_latex(table, heading if first else f"{stage}: {heading}"))
        else:
            parts.append(f"{'==' if first else '--'} {heading} {'==' if first else '--'}\n" + table.to_string(index=False))
    return "\n\n".join(parts)


def format_report(trials: pd.DataFrame, baselines: Mapping[str, str] | None = None, fmt: str = "text",
                  sweeps: Mapping[str, Mapping[str, list[Any]]] | None = None) -> str:
    """:func:`render_report` of :func:`report_tables` (the ``html`` page is
    :func:`nas_service.report_page.html_page`)."""
    _check_format(fmt)  # before any table is computed
    return render_report(report_tables(trials, baselines, sweeps), fmt)
