"""fp32 against bf16, side by side, from a finished ``examples/precision.yaml`` experiment: per stage and
metric the mean ± std of each precision over the seeds, the paired difference (bf16 - fp32, same seed) with
its 95% t interval and paired t-test p-value, and the time ratio. The table in docs/training.md
("Precision") is this script's output.

    .venv/bin/python -m nas_service.cli run examples/precision.yaml
    .venv/bin/python benchmarks/precision_fidelity.py runs/precision
"""

from __future__ import annotations

import argparse
import json
import math

# (stage, metric column, label); the search stages' architecture metrics are those of the selected epoch.
METRICS = {
    "search": [("best.valid_acc", "search valid acc"),
               ("best.param_free_share_no_hack", "param-free share, no-hack parse"),
               ("best.arch_entropy_normal", "normalised entropy, normal cell")],
    "retrain": [("best.test_top1", "test top-1")],
}  # fmt: skip


def fidelity_rows(trials) -> list[dict]:
    """One row per (stage, metric): fp32 and bf16 summaries and their paired comparison."""
    from nas_service.statistics import compare, summarize

    rows = []
    finished = trials[trials["status"] == "finished"].sort_values("finished_at")
    # A store keeps the trials of earlier versions of the spec (e.g. before a preset changed): the latest
    # finished trial of each stage, precision and seed is the current one.
    finished = finished.drop_duplicates(["stage", "config.precision", "seed"], keep="last")
    for stage, group in finished.groupby("stage", sort=False):
        by_precision = {p: g.set_index("seed") for p, g in group.groupby("config.precision")}
        if set(by_precision) != {"fp32", "bf16"}:
            continue
        fp32, bf16 = by_precision["fp32"], by_precision["bf16"]
        kind = "retrain" if group["stage_kind"].iloc[0] == "retrain" else "search"
        for column, label in METRICS[kind] + [("wall_seconds", "trial wall seconds")]:
            if column not in group:
                continue
            a, b = fp32[column].dropna().to_dict(), bf16[column].dropna().to_dict()
            c = compare(b, a)
            rows.append({"stage": stage, "metric": label, "fp32": summarize(list(a.values())),
                         "bf16": summarize(list(b.values())), "comparison": c})  # fmt: skip
        if "genotype_json" in group and kind == "search":
            same = sum(json.loads(fp32.loc[s, "genotype_json"])["normal"] == json.loads(bf16.loc[s, "genotype_json"])["normal"]
                       for s in fp32.index.intersection(bf16.index))  # fmt: skip
            rows.append({"stage": stage, "metric": "same normal cell as fp32 (seeds)", "count": same,
                         "of": len(fp32.index.intersection(bf16.index))})  # fmt: skip
    return rows


def _cell(summary) -> str:
    return "-" if summary.n == 0 else f"{summary.mean:.4f} ± {summary.std if summary.std is not None else math.nan:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="the experiment folder, e.g. runs/precision")
    args = parser.parse_args(argv)
    from nas_service.results import ResultsStore

    store = ResultsStore.from_experiment_path(args.experiment)
    print("| stage | metric | fp32 (mean ± std) | bf16 (mean ± std) | bf16 - fp32 [95% CI] | paired t p | n |")
    print("|---|---|---|---|---|---|---|")
    for row in fidelity_rows(store.trials()):
        if "count" in row:
            print(f"| {row['stage']} | {row['metric']} | | | {row['count']} of {row['of']} | | {row['of']} |")
            continue
        c = row["comparison"]
        interval = f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]" if c.ci_low is not None else ""
        p = f"{c.t_p:.3f}" if c.t_p is not None else "-"
        print(f"| {row['stage']} | {row['metric']} | {_cell(row['fp32'])} | {_cell(row['bf16'])} | "
              f"{c.difference:+.4f}{interval} | {p} | {c.n} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
