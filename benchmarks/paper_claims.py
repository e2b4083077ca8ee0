"""The sharpDARTS paper's claims in miniature, from a finished ``examples/paper_claims.yaml`` experiment. The
tables of docs/paper_claims.md are this script's output.

(a) Does Max-W lower the parameter-free share of the chosen normal cell? Per cell search, the normal cell of
    the no-hack parse ('none' allowed) at the selected epoch: how many of its ops are parameter-free; per
    cell search stage and weighting mean ± std [95% t interval]; Max-W minus scalar paired by seed (same
    data order and initial weights), paired t-test and Wilcoxon signed-rank
    (``nas_service.statistics.compare``). Beside them, the same counts of the paper's published no-hack
    genotypes (SHARPER_SCALAR_NO_HACK, SHARPER_MAX_W_NO_HACK).
(b) How do the DHGS paths rank against the human path and random paths? Every path of the grid stage is
    retrained over the same seeds. The unit of a method is one path: a DHGS path's value is the mean test
    top-1 of its retrains (one value per search), a random path's likewise (one per draw); the human path
    is one path, so its unit is one retrain seed. Each group against the human path: Welch's t-test and
    Mann-Whitney U on those units, and the same difference paired by retrain seed (the group's mean over its
    paths at seed s minus the human path's test top-1 at seed s). Then every path's rank by its mean.

Search health: the normalised entropy of the architecture weights at the selected epoch (1.0 = uniform) per
search arm, and the report's warnings (``nas_service.search_health``).

    .venv/bin/nas-service run examples/paper_claims.yaml
    .venv/bin/python benchmarks/paper_claims.py runs/paper_claims
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from nas_service.statistics import Comparison, Summary, compare, summarize
from search_spaces.ops import is_parameter_free

__all__ = ["latest_finished", "cell_counts", "paper_reference", "normal_cell_rows", "param_free_claim", "path_rows",
           "path_claim", "path_ranks", "entropy_rows", "render", "main"]  # fmt: skip

HUMAN = "human"
# The paper's no-hack genotypes (CIFAR-10, SharperDARTS space), published in search_spaces.genotypes.
PAPER_NO_HACK = {"scalar": "SHARPER_SCALAR_NO_HACK", "max_w": "SHARPER_MAX_W_NO_HACK"}
# (column of normal_cell_rows, label) in the order of the claim table (a).
CELL_METRICS = (("share_normal", "param-free share, normal cell"), ("param_free", "param-free ops, normal cell"),
                ("none", "'none' ops, normal cell"), ("share_reduce", "param-free share, reduction cell"),
                ("share_both", "param-free share, both cells"))  # fmt: skip
SEARCH_METRICS = {"cell_search": ("best.arch_entropy_normal", "best.arch_entropy_reduce", "best.valid_acc"),
                  "hypercuboid_search": ("best.arch_entropy_normalized", "best.path_weight", "best.valid_acc")}
# The search-health table's columns: (entropy_rows key, heading).
HEALTH_COLUMNS = (("stage", "stage"), ("weighting", "weighting"), ("distinct architectures", "distinct architectures"),
                  ("arch_entropy_normal", "entropy normal"), ("arch_entropy_reduce", "entropy reduce"),
                  ("arch_entropy_normalized", "DHGS entropy"), ("path_weight", "DHGS path weight"),
                  ("valid_acc", "search valid acc"))  # fmt: skip


def latest_finished(trials: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The finished trials of ``stage``; a store that kept trials of an earlier version of the spec has the
    latest finished trial of each arm label, lineage, path and seed as the current one."""
    done = trials[(trials["stage"] == stage) & (trials["status"] == "finished")].sort_values("finished_at")
    keys = [c for c in ("extra.arm_label", "lineage_trial_id", "path_json", "seed") if c in done]
    return done.drop_duplicates(keys, keep="last")


def _no_hack_genotype(row: Mapping[str, Any], epochs: pd.DataFrame | None) -> dict[str, Any] | None:
    """The no-hack genotype at the trial's selected epoch: from its summary, else from its epoch rows."""
    summary = row.get("extra.summary_json")
    if isinstance(summary, str):
        found = json.loads(summary).get("best_genotype_no_hack")
        if found:
            return found
    if epochs is not None and "genotype_no_hack" in epochs:
        mine = epochs[(epochs["trial_id"] == row["trial_id"]) & (epochs["epoch"] == row["best_epoch"])]
        if not mine.empty and isinstance(mine["genotype_no_hack"].iloc[0], str):
            return json.loads(mine["genotype_no_hack"].iloc[0])
    return None


def cell_counts(genotype: Mapping[str, Any]) -> dict[str, Any]:
    """A genotype's normal cell: op count, parameter-free ops, 'none' ops and share; the reduction cell's
    parameter-free ops and share; the share over both cells."""
    normal = [op for op, _ in genotype["normal"]]
    reduce = [op for op, _ in genotype["reduce"]]
    free, reduce_free = sum(map(is_parameter_free, normal)), sum(map(is_parameter_free, reduce))
    return {"ops": len(normal), "param_free": free, "none": normal.count("none"), "share_normal": free / len(normal),
            "param_free_reduce": reduce_free, "share_reduce": reduce_free / len(reduce),
            "share_both": (free + reduce_free) / (len(normal) + len(reduce))}  # fmt: skip


def paper_reference() -> dict[str, dict[str, Any]]:
    """:func:`cell_counts` of the paper's no-hack genotypes, per weighting."""
    from search_spaces.genotypes import get_published

    return {w: cell_counts(get_published(name).genotype.to_dict()) for w, name in PAPER_NO_HACK.items()}


def normal_cell_rows(trials: pd.DataFrame, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell search (every ``cell_search`` stage): stage, space, weighting, seed,
    :func:`cell_counts` of its no-hack genotype at the selected epoch, the entropies and the
    search-validation accuracy."""
    rows = []
    stages = trials.loc[trials["stage_kind"] == "cell_search", "stage"].unique()
    for _, row in pd.concat([latest_finished(trials, s) for s in stages] or [trials.iloc[:0]]).iterrows():
        genotype = _no_hack_genotype(row, epochs)
        if genotype is None:
            continue
        rows.append({
            "stage": row["stage"], "space": row.get("config.space"), "weighting": row["config.weighting"],
            "seed": int(row["seed"]), **cell_counts(genotype),
            "entropy_normal": row.get("best.arch_entropy_normal"),
            "entropy_reduce": row.get("best.arch_entropy_reduce"), "valid_acc": row.get("best.valid_acc"),
            "normal": ", ".join(f"{op}({i})" for op, i in genotype["normal"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def param_free_claim(rows: pd.DataFrame,
                     metric: str = "share_normal") -> tuple[dict[str, Summary], Comparison | None]:  # fmt: skip
    """Per weighting the summary of ``metric``, and Max-W minus scalar (paired by seed where seeds pair)."""
    by = {w: dict(zip(g["seed"], g[metric].astype(float))) for w, g in rows.groupby("weighting")}
    summaries = {w: summarize(list(v.values())) for w, v in by.items()}
    if not {"scalar", "max_w"} <= set(by):
        return summaries, None
    return summaries, compare(by["max_w"], by["scalar"])


def path_rows(trials: pd.DataFrame, stage: str = "paths") -> pd.DataFrame:
    """One row per retrain of the grid stage: group (``DHGS scalar``, ``DHGS max_w``, ``human``,
    ``random#k(seed=S)``), the path (its JSON), the producing search's seed (DHGS), the retrain seed and
    its test top-1 at the selected epoch."""
    seed_of = dict(zip(trials["trial_id"], trials["seed"]))
    weightings = trials["config.weighting"] if "config.weighting" in trials else [None] * len(trials)
    weighting_of = dict(zip(trials["trial_id"], weightings))
    rows = []
    for _, row in latest_finished(trials, stage).iterrows():
        parent = row.get("lineage_trial_id")
        if isinstance(parent, str):
            group, search_seed = f"DHGS {weighting_of.get(parent)}", seed_of.get(parent)
        else:
            group, search_seed = str(row["extra.arm_label"]).removeprefix("path="), None
        rows.append({"group": group, "path": row["path_json"], "search_seed": search_seed,
                     "seed": int(row["seed"]), "test_top1": float(row["best.test_top1"]),
                     "params": row.get("params")})  # fmt: skip
    return pd.DataFrame(rows)


def path_claim(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per group (each DHGS weighting, the random paths pooled, each random path, the human path): its
    units (see the module docstring), their summary, and the difference from the human path, both on the
    units (unpaired for a group of paths; a single path's seeds pair with the human path's) and paired by
    retrain seed (``vs_human_by_seed``)."""
    human = rows[rows["group"] == HUMAN]
    human_by_seed = dict(zip(human["seed"], human["test_top1"]))
    groups: dict[str, pd.DataFrame] = {}
    for name in sorted({g for g in rows["group"] if g.startswith("DHGS")}):
        groups[name] = rows[rows["group"] == name]
    randoms = sorted({g for g in rows["group"] if g.startswith("random")})
    if randoms:
        groups["random (pooled)"] = rows[rows["group"].isin(randoms)]
    for name in randoms:
        groups[name] = rows[rows["group"] == name]
    out = []
    for name, frame in groups.items():
        per_path = frame.groupby("path")["test_top1"].mean()
        if len(per_path) > 1:  # a method: one unit per path (DHGS: per search)
            units, unit = {("path", p): v for p, v in per_path.items()}, "path"
        else:  # one path: one unit per retrain seed, which pairs with the human path's
            units, unit = dict(zip(frame["seed"], frame["test_top1"])), "seed"
        by_seed = frame.groupby("seed")["test_top1"].mean().to_dict()
        out.append({"group": name, "unit": unit, "paths": len(per_path), "trials": len(frame),
                    "summary": summarize(list(units.values())), "vs_human": compare(units, human_by_seed),
                    "vs_human_by_seed": compare(by_seed, human_by_seed)})  # fmt: skip
    out.append({"group": HUMAN, "unit": "seed", "paths": 1 if len(human) else 0, "trials": len(human),
                "summary": summarize(list(human_by_seed.values())), "vs_human": None,
                "vs_human_by_seed": None})  # fmt: skip
    return out


def path_ranks(rows: pd.DataFrame) -> pd.DataFrame:
    """Every path of the grid stage by its mean test top-1 over its retrains, best first, with its rank
    (1 = best; ties share the better rank), group, producing search's seed and parameters."""
    per = rows.groupby("path").agg(
        group=("group", "first"), search_seed=("search_seed", "first"), mean=("test_top1", "mean"),
        std=("test_top1", "std"), n=("test_top1", "size"), params=("params", "first"))  # fmt: skip
    per["rank"] = per["mean"].rank(ascending=False, method="min").astype(int)
    return per.sort_values(["rank", "group"]).reset_index()


def entropy_rows(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Per search stage and weighting: how many distinct architectures the seeds chose (default parse), the
    normalised entropies (1.0 = uniform) and the selection metric at the selected epoch, over the seeds."""
    out = []
    finished = trials[trials["status"] == "finished"]
    for (stage, kind), _ in finished.groupby(["stage", "stage_kind"], sort=False):
        if kind not in SEARCH_METRICS:
            continue
        for weighting, g in latest_finished(trials, stage).groupby("config.weighting", sort=False):
            chosen = g["genotype_json"] if kind == "cell_search" else g["path_json"]
            row: dict[str, Any] = {"stage": stage, "weighting": weighting,
                                   "distinct architectures": f"{chosen.nunique()} of {len(g)}"}  # fmt: skip
            for column in SEARCH_METRICS[kind]:
                if column in g:
                    values = list(pd.to_numeric(g[column], errors="coerce"))
                    row[column.removeprefix("best.")] = summarize(values)
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------
# Printing


def _s(summary: Summary | None, digits: int = 4) -> str:
    if summary is None or summary.n == 0:
        return "-"
    if summary.std is None:
        return f"{summary.mean:.{digits}f} (n<3)"
    f = f".{digits}f"
    return f"{summary.mean:{f}} ± {summary.std:{f}} [{summary.ci_low:{f}}, {summary.ci_high:{f}}]"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _c(c: Comparison | None) -> list[str]:
    """difference [95% CI], t-test p, rank-test p."""
    if c is None:
        return ["", "", ""]
    interval = f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]" if c.ci_low is not None else ""
    return [f"{c.difference:+.4f}{interval}", _p(c.t_p), _p(c.rank_p)]


def _pairing(c: Comparison | None) -> str:
    if c is None:
        return ""
    return f"paired, n={c.n}" if c.paired else f"unpaired, {c.n} vs {c.n_baseline}"


def _cell(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def _render_cells(cells: pd.DataFrame) -> list[str]:
    parts = ["## (a) Parameter-free ops in the chosen normal cell (no-hack parse), scalar vs Max-W"]
    paper = paper_reference()
    for stage, rows in cells.groupby("stage", sort=False):
        parts.append(f"\n### {stage} (space {rows['space'].iloc[0]})\n")
        order = rows.sort_values(["weighting", "seed"], ascending=[False, True])
        body = [[r.weighting, r.seed, f"{r.param_free} of {r.ops}", r.none, f"{r.param_free_reduce} of {r.ops}",
                 f"{r.entropy_normal:.3f}", f"{r.entropy_reduce:.3f}", f"{r.valid_acc:.4f}", r.normal]
                for r in order.itertuples()]  # fmt: skip
        parts.append(_table(["weighting", "seed", "param-free (normal)", "none (normal)", "param-free (reduce)",
                             "entropy normal", "entropy reduce", "search valid acc", "no-hack normal cell"],
                            body))  # fmt: skip
        body = []
        for metric, label in CELL_METRICS:
            summaries, c = param_free_claim(rows, metric)
            ref = f"{paper['scalar'][metric]:.3g} / {paper['max_w'][metric]:.3g}"
            body.append([label, _s(summaries.get("scalar"), 3), _s(summaries.get("max_w"), 3), *_c(c),
                         _pairing(c), ref])  # fmt: skip
        parts.append("\nmean ± std [95% t interval] over seeds; Max-W - scalar paired by seed (paired t-test, "
                     "Wilcoxon signed-rank); the paper: its no-hack genotypes, scalar / Max-W\n")
        parts.append(_table(["metric", "scalar", "max_w", "max_w - scalar [95% CI]", "t-test p", "Wilcoxon p",
                             "pairing", "paper"], body))  # fmt: skip
    return parts


def _render_paths(paths: pd.DataFrame) -> list[str]:
    parts = ["\n## (b) DHGS paths against the human path and random paths (test top-1 after retraining)\n"]
    body = [[g["group"], g["paths"], g["trials"], f"{g['summary'].n} {g['unit']}s", _s(g["summary"]),
             *_c(g["vs_human"]), _pairing(g["vs_human"]), *_c(g["vs_human_by_seed"])]
            for g in path_claim(paths)]  # fmt: skip
    parts.append(_table(["group", "paths", "retrains", "n (units)", "mean ± std [95% CI]", "- human [95% CI]",
                         "t p", "rank p", "pairing", "- human by retrain seed [95% CI]", "paired t p",
                         "Wilcoxon p"], body))  # fmt: skip
    parts.append("\nunits: a group with several paths has one value per path (its mean over the retrain seeds; "
                 "DHGS: one per search), compared with the human path's seeds by Welch's t-test and "
                 "Mann-Whitney U; a single path has one value per retrain seed, paired with the human path's "
                 "(paired t-test, Wilcoxon). 'by retrain seed': the group's mean over its paths at each seed "
                 "minus the human path at that seed, paired.\n")
    ranks = path_ranks(paths)
    body = [[r.rank, r.group, "" if pd.isna(r.search_seed) else int(r.search_seed), f"{r.mean:.4f}",
             f"{r.std:.4f}", r.n, "" if pd.isna(r.params) else f"{int(r.params):,}"]
            for r in ranks.itertuples()]  # fmt: skip
    parts.append(f"every path by its mean test top-1 over its retrains ({len(ranks)} paths)\n")
    parts.append(_table(["rank", "group", "search seed", "mean test top-1", "std", "retrains", "params"], body))
    human_rank = ranks.loc[ranks["group"] == HUMAN, "rank"]
    lines = []
    for group, g in ranks.groupby("group"):
        if group.startswith("DHGS") and not human_rank.empty:
            above = int((g["rank"] < human_rank.iloc[0]).sum())
            lines.append(f"- {group}: ranks {sorted(g['rank'].tolist())} of {len(ranks)}; {above} of {len(g)} "
                         f"above the human path (rank {human_rank.iloc[0]})")  # fmt: skip
    return parts + (["\n" + "\n".join(lines)] if lines else [])


def _render_health(trials: pd.DataFrame, health: list[dict[str, Any]]) -> list[str]:
    from nas_service.search_health import health_warnings

    parts = ["\n## Search health (selected epoch; normalised entropy, 1.0 = uniform)\n"]
    columns = [(key, head) for key, head in HEALTH_COLUMNS if any(key in r for r in health)]
    body = [[_s(r[k], 3) if isinstance(r.get(k), Summary) else r.get(k, "") for k, _ in columns] for r in health]
    parts.append(_table([head for _, head in columns], body))
    warnings = health_warnings(trials)
    quiet = "no search arm ended near uniform (the report's threshold: 0.95 of max)"
    parts.append("\n" + ("\n".join(f"- warning: {w}" for w in warnings) if warnings else quiet))
    return parts


def render(trials: pd.DataFrame, epochs: pd.DataFrame | None = None) -> str:
    """The claim tables (a) and (b) and the search health, as markdown."""
    parts = []
    cells = normal_cell_rows(trials, epochs)
    if not cells.empty:
        parts += _render_cells(cells)
    paths = path_rows(trials) if (trials["stage"] == "paths").any() else pd.DataFrame()
    if not paths.empty:
        parts += _render_paths(paths)
    health = entropy_rows(trials)
    if health:
        parts += _render_health(trials, health)
    return "\n".join(parts) if parts else "no finished trials of examples/paper_claims.yaml's stages"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="the experiment folder, e.g. runs/paper_claims")
    args = parser.parse_args(argv)
    from nas_service.results import ResultsStore

    store = ResultsStore.from_experiment_path(args.experiment)
    print(render(store.trials(), store.epochs()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
