"""Comparison tables read only from the results store: per stage and arm, the metrics over replicates with
confidence intervals, and each arm against the stage's baseline arm (:mod:`nas_service.statistics`).

An arm is a stage's configuration without the seed. A replicate is one independent run of an arm: the seed
of the search that produced its architecture (through lineage) and its own seed, so the retrains of the
genotypes that ``weighting=max_w`` searches with seeds 0, 1, 2 chose are three replicates of one arm.
An arm's cost is its own compute plus, through lineage, the compute of the searches that produced it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .stage_kinds import STAGE_KINDS
from .statistics import compare, holm, summarize

__all__ = ["arm_table", "comparison_table", "format_report", "write_report", "status_table", "REPORT_FORMATS"]

REPORT_FORMATS = ("text", "markdown", "json", "csv")



def _metrics(kind: str) -> tuple[str | None, str | None]:
    """The selection and headline metrics (trials-table columns) of a stage kind; none for a kind that is
    not registered here (a store written by a newer version)."""
    if kind not in STAGE_KINDS:
        return None, None
    entry = STAGE_KINDS.get(kind)
    return entry.select_metric, entry.headline_metric


def _summary(values: pd.Series) -> str:
    return summarize(list(pd.to_numeric(values, errors="coerce").dropna())).text()


def replicate_keys(trials: pd.DataFrame) -> pd.Series:
    """Each trial's replicate: ``(seed of the trial its architecture came from, or None; its own seed)``."""
    seed_of = dict(zip(trials["trial_id"], trials["seed"]))
    parents = trials["lineage_trial_id"] if "lineage_trial_id" in trials else pd.Series(None, index=trials.index)
    return pd.Series([(seed_of.get(p) if isinstance(p, str) else None, s) for p, s in zip(parents, trials["seed"])],
                     index=trials.index, dtype=object)  # fmt: skip


def _label(group: pd.DataFrame, arm: str) -> str:
    return group.get("extra.arm_label", pd.Series([""])).iloc[0] or arm


def arm_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, arm): replicates, each metric as mean ± std [95% t interval] (or flagged when
    there are fewer than 3 replicates), best architecture, params, cost."""
    if trials.empty:
        return pd.DataFrame()
    trials = trials.assign(replicate=replicate_keys(trials))
    # Cost in trial wall seconds (a trial holds its `resources` for that long); CPU seconds are in `results`.
    cost = dict(zip(trials["trial_id"], pd.to_numeric(trials["wall_seconds"], errors="coerce").fillna(0.0)))
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
                row[f"{name} ({column.split('.', 1)[1]})"] = _summary(finished[column])
        if kind == "evaluate":
            for column in [c for c in finished.columns if c.startswith("best.") and c.endswith(".top1")]:
                row[column[5:]] = _summary(finished[column])
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

        def by_replicate(group: pd.DataFrame) -> dict[Any, float]:
            values = pd.to_numeric(group[metric], errors="coerce")
            return {k: float(v) for k, v in zip(group["replicate"], values) if not math.isnan(v)}

        found = [(arm, compare(by_replicate(group), by_replicate(arms[base]))) for arm, group in arms.items() if arm != base]
        adjusted = holm([c.t_p for _, c in found])
        for (arm, c), holm_p in zip(found, adjusted):
            interval = "" if c.ci_low is None else f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
            rows.append({
                "stage": stage, "arm": labels[arm], "baseline": labels[base], "metric": metric.split(".", 1)[1],
                "pairing": f"paired on {c.n} replicates" if c.paired else f"unpaired ({c.n} vs {c.n_baseline})",
                "difference": f"{c.difference:+.4f}{interval}", "t-test p": _p(c.t_p),
                ("Wilcoxon p" if c.paired else "Mann-Whitney p"): _p(c.rank_p), "Holm p": _p(holm_p), "flag": c.flag,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def format_report(trials: pd.DataFrame, baselines: Mapping[str, str] | None = None, fmt: str = "text") -> str:
    """The report: one table per stage (and its comparison with the baseline arm, when there is one), as
    ``text`` or ``markdown``, or all rows as ``json`` or ``csv``."""
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"format: must be one of {list(REPORT_FORMATS)}, got {fmt!r}")
    table = arm_table(trials)
    comparisons = comparison_table(trials, baselines or {})
    if fmt == "json":
        return json.dumps({"arms": table.to_dict("records"), "comparisons": comparisons.to_dict("records")}, indent=2)
    if fmt == "csv":
        return table.to_csv(index=False)
    if table.empty:
        return "no finished trials yet"
    parts = []
    for stage, group in table.groupby("stage", sort=False):
        group = group.drop(columns=["stage"]).dropna(axis=1, how="all")
        kind = group["kind"].iloc[0]
        group = group.drop(columns=["kind"])
        title = f"{stage} ({kind})"
        parts.append(f"## {title}\n\n{_markdown(group)}" if fmt == "markdown" else f"== {title} ==\n" + group.to_string(index=False))
        mine = comparisons[comparisons["stage"] == stage].drop(columns=["stage"]) if not comparisons.empty else comparisons
        if not mine.empty:
            heading = f"against {mine['baseline'].iloc[0]} ({mine['metric'].iloc[0]}; 95% t intervals; Holm across arms)"
            mine = mine.drop(columns=["baseline", "metric"])
            parts.append(f"### {heading}\n\n{_markdown(mine)}" if fmt == "markdown" else f"-- {heading} --\n" + mine.to_string(index=False))
    return "\n\n".join(parts)


def write_report(trials: pd.DataFrame, output: str | Path, baselines: Mapping[str, str] | None = None) -> Path:
    """Writes ``report.md``, ``arms.csv``, ``arms.json`` and (with baselines) ``comparisons.csv`` /
    ``comparisons.json`` into the folder ``output``; returns the path of ``report.md``."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    table, comparisons = arm_table(trials), comparison_table(trials, baselines or {})
    (folder / "report.md").write_text(f"# Report\n\n{format_report(trials, baselines, 'markdown')}\n", encoding="utf-8")
    table.to_csv(folder / "arms.csv", index=False)
    (folder / "arms.json").write_text(json.dumps(table.to_dict("records"), indent=2), encoding="utf-8")
    if not comparisons.empty:
        comparisons.to_csv(folder / "comparisons.csv", index=False)
        (folder / "comparisons.json").write_text(json.dumps(comparisons.to_dict("records"), indent=2), encoding="utf-8")
    return folder / "report.md"
