"""The report on a constructed store with known replicates and differences: per-arm intervals, the n<3
flag, replicates through lineage, paired and unpaired comparisons against a baseline with Holm, outputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from nas_service.plots import with_arms, arm_curve
from nas_service.report import arm_table, comparison_table, format_report, main_effect_table
from nas_service.report_page import ReportData, load_report_data, spec_baselines, write_report
from nas_service.results import ResultsStore

T2 = 4.302653  # t(0.975, 2 df)


def _retrain(store: ResultsStore, trial_id: str, arm: str, seed: int, test: float, *, parent: str | None = None) -> None:
    store.write_trial(trial_id, 0, {
        "stage": "retrain", "stage_kind": "retrain", "status": "finished", "seed": seed, "arm": arm,
        "config": {"seed": seed, "arm": arm}, "lineage_trial_id": parent, "lineage_stage": "search" if parent else None,
        "best": {"valid_top1": test - 0.01, "test_top1": test}, "wall_seconds": 10.0,
        "extra": {"arm_label": {"a-human": "path=HUMAN", "a-dhgs": "from search: dhgs", "a-one": "genotype=ONE"}[arm]},
    })  # fmt: skip


@pytest.fixture
def trials(tmp_path):
    store = ResultsStore(tmp_path, "exp")
    for seed in (0, 1, 2):  # the searches the DHGS retrains come from: their seeds are the replicates
        store.write_trial(f"s{seed}", 0, {"stage": "search", "stage_kind": "hypercuboid_search", "status": "finished",
                                          "seed": seed, "arm": "a-search", "config": {"seed": seed},
                                          "best": {"valid_acc": 0.9}, "wall_seconds": 100.0})  # fmt: skip
    human = {0: 0.90, 1: 0.92, 2: 0.91}
    dhgs = {0: 0.91, 1: 0.94, 2: 0.93}  # +0.01, +0.02, +0.02 over the human path, search seed by search seed
    for seed in (0, 1, 2):
        _retrain(store, f"h{seed}", "a-human", 0, human[seed], parent=f"s{seed}")  # paired by its search's seed
        _retrain(store, f"d{seed}", "a-dhgs", 0, dhgs[seed], parent=f"s{seed}")
    _retrain(store, "o0", "a-one", 0, 0.95)
    return store.trials()


def test_arms_show_replicates_intervals_and_the_small_n_flag(trials) -> None:
    table = arm_table(trials).set_index("arm")
    assert table.loc["from search: dhgs", "replicates"] == 3 and table.loc["genotype=ONE", "replicates"] == 1
    half = T2 * 0.015275252 / math.sqrt(3)  # sd of 0.91, 0.94, 0.93
    assert table.loc["from search: dhgs", "test (test_top1)"] == (
        f"0.9267 ± 0.0153 [{0.926667 - half:.4f}, {0.926667 + half:.4f}] (n=3)")
    assert table.loc["genotype=ONE", "test (test_top1)"] == "0.9500 (n=1, n<3)"
    assert table.loc["from search: dhgs", "trial s (own + search)"] == "30 + 300"


def test_each_arm_against_the_baseline_paired_by_search_seed_with_holm(trials) -> None:
    table = comparison_table(trials, {"retrain": "path=HUMAN"}).set_index("arm")
    dhgs = table.loc["from search: dhgs"]
    # differences 0.01, 0.02, 0.02: mean 0.016667, sd 0.005774, t = 5.0 on 2 df -> p = 0.03775
    half = T2 * 0.0057735 / math.sqrt(3)
    assert dhgs["pairing"] == "paired on 3 replicates"
    assert dhgs["difference"] == f"+0.0167 [{0.0166667 - half:+.4f}, {0.0166667 + half:+.4f}]"
    assert dhgs["t-test p"] == "0.0377" and dhgs["rank test"] == "Wilcoxon" and dhgs["rank p"] == "0.2500" and dhgs["flag"] == ""
    one = table.loc["genotype=ONE"]
    assert one["pairing"] == "unpaired (1 vs 3)" and one["flag"] == "n<3" and one["t-test p"] == "-"
    # Holm over the one testable arm leaves its p as it is
    assert dhgs["Holm p"] == "0.0377"


def test_retrains_of_one_searched_architecture_are_one_replicate_not_several(tmp_path) -> None:
    # 3 searches x 3 retrain seeds of each one's architecture against a human path retrained with 3 seeds:
    # the searches are the independent units, so the DHGS arm has 3 replicates, each the mean of 3 retrains.
    store = ResultsStore(tmp_path, "exp")
    for seed in (0, 1, 2):
        store.write_trial(f"s{seed}", 0, {"stage": "search", "stage_kind": "hypercuboid_search", "status": "finished",
                                          "seed": seed, "arm": "a-search", "config": {"seed": seed},
                                          "best": {"valid_acc": 0.9}, "wall_seconds": 100.0})  # fmt: skip
    per_search = {0: (0.90, 0.92, 0.94), 1: (0.95, 0.95, 0.95), 2: (0.91, 0.93, 0.92)}  # means 0.92, 0.95, 0.92
    for search, values in per_search.items():
        for own, value in enumerate(values):
            _retrain(store, f"d{search}{own}", "a-dhgs", own, value, parent=f"s{search}")
    for own, value in enumerate((0.90, 0.91, 0.92)):
        _retrain(store, f"h{own}", "a-human", own, value)
    trials = store.trials()
    table = arm_table(trials).set_index("arm")
    assert table.loc["from search: dhgs", "runs"] == 9 and table.loc["from search: dhgs", "replicates"] == 3
    half = T2 * 0.017320508 / math.sqrt(3)  # sd of the search means 0.92, 0.95, 0.92
    assert table.loc["from search: dhgs", "test (test_top1)"] == (
        f"0.9300 ± 0.0173 [{0.93 - half:.4f}, {0.93 + half:.4f}] (n=3)")
    row = comparison_table(trials, {"retrain": "path=HUMAN"}).set_index("arm").loc["from search: dhgs"]
    assert row["pairing"] == "unpaired (3 vs 3)"  # search seeds and own seeds are not the same replicates
    assert row["difference"].startswith("+0.0200 [")


def test_learning_curves_count_replicates_as_the_tables_do(tmp_path) -> None:
    # 2 searches x 3 retrains of each one's architecture: the curve has 2 replicates per epoch, each the
    # mean of its search's 3 retrains (the band used to treat them as 6 independent trials).
    store = ResultsStore(tmp_path, "exp")
    for seed in (0, 1):
        store.write_trial(f"s{seed}", 0, {"stage": "search", "stage_kind": "hypercuboid_search", "status": "finished",
                                          "seed": seed, "arm": "a-search", "config": {"seed": seed},
                                          "best": {"valid_acc": 0.9}, "wall_seconds": 100.0})  # fmt: skip
    per_search = {0: (0.90, 0.92, 0.94), 1: (0.95, 0.96, 0.97)}  # means 0.92 and 0.96
    for search, values in per_search.items():
        for own, value in enumerate(values):
            _retrain(store, f"d{search}{own}", "a-dhgs", own, value, parent=f"s{search}")
            for epoch in (1, 2):
                store.write_epoch(f"d{search}{own}", 0, {"stage": "retrain", "epoch": epoch, "seed": own,
                                                         "valid_top1": value - 0.1 * (2 - epoch)})  # fmt: skip
    data = load_report_data([store])
    rows = with_arms(data.trials, data.epochs)
    curve = arm_curve(rows[rows["arm_label"] == "from search: dhgs"], "valid_top1")
    assert [epoch for epoch, _ in curve] == [1, 2]
    assert all(s.n == 2 for _, s in curve)
    assert curve[1][1].mean == pytest.approx(0.94) and curve[0][1].mean == pytest.approx(0.84)


def test_a_baseline_the_stage_does_not_have_is_refused_with_its_arms(trials) -> None:
    with pytest.raises(ValueError, match=r"stage 'retrain' has no arm 'nope'; its arms: \['from search: dhgs'"):
        comparison_table(trials, {"retrain": "nope"})


def test_formats_and_written_files(trials, tmp_path) -> None:
    text = format_report(trials, {"retrain": "path=HUMAN"})
    assert "== retrain (retrain) ==" in text and "-- against path=HUMAN (test_top1; 95% t intervals" in text
    markdown = format_report(trials, {"retrain": "path=HUMAN"}, "markdown")
    assert "## retrain (retrain)" in markdown and "| from search: dhgs |" in markdown
    data = json.loads(format_report(trials, {"retrain": "path=HUMAN"}, "json"))
    assert {row["arm"] for row in data["comparisons"]} == {"from search: dhgs", "genotype=ONE"}
    latex = format_report(trials, {"retrain": "path=HUMAN"}, "latex")
    assert latex.count(r"\begin{table}") == 3 and "nan" not in latex and r"test (test\_top1)" in latex and r"\toprule" in latex
    with pytest.raises(ValueError, match="format: must be one of"):
        format_report(trials, fmt="pdf")
    page = write_report(ReportData(trials, pd.DataFrame()), tmp_path / "out", {"retrain": "path=HUMAN"})
    assert page.name == "report.html" and page.read_text().startswith("<!DOCTYPE html>")
    assert (page.parent / "report.md").read_text().startswith("# Report")
    assert sorted(p.name for p in page.parent.iterdir()) == [
        "arms.csv", "arms.json", "comparisons.csv", "comparisons.json", "figures", "report.html", "report.md"]
    assert "against path=HUMAN" in page.read_text() and "from search: dhgs" in page.read_text()


def _sweep_store(tmp_path, name: str = "sweep") -> ResultsStore:
    """weighting x space x 3 seeds: max_w adds 0.02 + 0.003 * seed, sharp adds 0.01, exactly."""
    store = ResultsStore(tmp_path, name)
    for weighting in ("scalar", "max_w"):
        for space in ("darts", "sharp"):
            for seed in (0, 1, 2):
                value = 0.5 + (0.02 + 0.003 * seed) * (weighting == "max_w") + 0.01 * (space == "sharp")
                trial = f"{weighting}-{space}-{seed}"
                store.write_trial(trial, 0, {
                    "stage": "search", "stage_kind": "cell_search", "status": "finished", "seed": seed,
                    "arm": f"{weighting}-{space}", "config": {"seed": seed, "weighting": weighting, "space": space},
                    "best": {"valid_acc": value}, "wall_seconds": 1.0,
                    "extra": {"arm_label": f"weighting={weighting} space={space}",
                              "axes_json": json.dumps({"weighting": weighting, "space": space})},
                })  # fmt: skip
                for epoch in (1, 2):
                    store.write_epoch(trial, 0, {"stage": "search", "seed": seed, "epoch": epoch,
                                                 "valid_acc": value * epoch / 2, "arch_entropy_normal": 1.0 / epoch,
                                                 "param_free_share": 0.25})  # fmt: skip
    return store


def test_main_effects_of_a_two_axis_sweep_average_over_the_other_axis_and_the_seeds(tmp_path) -> None:
    table = main_effect_table(_sweep_store(tmp_path).trials()).set_index("axis")
    # weighting: 6 cells (space x seed), differences 0.020, 0.023, 0.026 twice: mean 0.023, sd 0.0026833
    half = 2.570582 * 0.0026833 / math.sqrt(6)
    assert table.loc["weighting", "effect"] == "max_w - scalar" and table.loc["weighting", "cells"] == 6
    assert table.loc["weighting", "difference"] == f"+0.0230 [{0.023 - half:+.4f}, {0.023 + half:+.4f}]"
    # space: exactly +0.01 in every cell: no spread, the interval is the point
    assert table.loc["space", "difference"] == "+0.0100 [+0.0100, +0.0100]" and table.loc["space", "flag"] == ""


def test_the_page_holds_every_figure_inline_and_the_spec_baseline_applies(tmp_path) -> None:
    store = _sweep_store(tmp_path)
    store.write_experiment_record({"spec": {"stages": [{"name": "search", "baseline": "weighting=scalar space=darts"}]},
                                   "code_version": "abc123"})  # fmt: skip
    data = load_report_data([store])
    assert spec_baselines(data) == {"search": "weighting=scalar space=darts"}
    page = write_report(data, tmp_path / "out", spec_baselines(data))
    text = page.read_text()
    figures = sorted(p.name for p in (page.parent / "figures").iterdir())
    assert figures == ["curves-search.png", "telemetry-search.png"]
    assert text.count("data:image/png;base64,") == len(figures) and "abc123" in text
    assert "against weighting=scalar space=darts" in text and "main effects" in text


def test_several_experiments_pool_an_arm_without_mixing_their_replicates(tmp_path) -> None:
    stores = [_sweep_store(tmp_path, "a"), _sweep_store(tmp_path, "b")]
    table = arm_table(load_report_data(stores).trials).set_index("arm")
    assert table.loc["weighting=max_w space=sharp", "replicates"] == 6  # seeds 0-2 in each experiment


def test_the_report_command_refuses_a_missing_experiment_and_takes_a_baseline(tmp_path, trials) -> None:
    missing = subprocess.run([sys.executable, "-m", "nas_service.cli", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "no experiment folder" in missing.stderr
    done = subprocess.run([sys.executable, "-m", "nas_service.cli", "report", str(tmp_path / "exp"), "--baseline",
                           "path=HUMAN", "--format", "markdown"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "### against path=HUMAN" in done.stdout
