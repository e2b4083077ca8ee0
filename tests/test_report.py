"""The report on a constructed store with known replicates and differences: per-arm intervals, the n<3
flag, replicates through lineage, paired and unpaired comparisons against a baseline with Holm, outputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from nas_service.report import arm_table, comparison_table, format_report, write_report
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
    assert dhgs["t-test p"] == "0.0377" and dhgs["Wilcoxon p"] == "0.2500" and dhgs["flag"] == ""
    one = table.loc["genotype=ONE"]
    assert one["pairing"] == "unpaired (1 vs 3)" and one["flag"] == "n<3" and one["t-test p"] == "-"
    # Holm over the one testable arm leaves its p as it is
    assert dhgs["Holm p"] == "0.0377"


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
    with pytest.raises(ValueError, match="format: must be one of"):
        format_report(trials, fmt="latex")
    page = write_report(trials, tmp_path / "out", {"retrain": "path=HUMAN"})
    assert page.read_text().startswith("# Report")
    assert sorted(p.name for p in page.parent.iterdir()) == [
        "arms.csv", "arms.json", "comparisons.csv", "comparisons.json", "report.md"]


def test_the_report_command_refuses_a_missing_experiment_and_takes_a_baseline(tmp_path, trials) -> None:
    missing = subprocess.run([sys.executable, "-m", "nas_service.cli", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "no experiment folder" in missing.stderr
    done = subprocess.run([sys.executable, "-m", "nas_service.cli", "report", str(tmp_path / "exp"), "--baseline",
                           "path=HUMAN", "--format", "markdown"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "### against path=HUMAN" in done.stdout
