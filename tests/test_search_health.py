"""Search-health warnings: a search whose architecture weights end near uniform is flagged in the report
and by ``run``'s progress, so that nobody reads a coin-toss genotype as a finding."""

from __future__ import annotations

import math

import pandas as pd
import torch

from nas_service.progress import ProgressView, StageProgress
from nas_service.report import format_report, report_tables
from nas_service.results import ResultsStore
from nas_service.search_health import NEAR_UNIFORM, health_warnings, least_decided, trial_warning
from nas_service.trials import Arm, Trial
from tests.helpers import search_config
from search_spaces.hypercuboid import HyperCuboidSupernet
from trainers.search import describe_hypercuboid


def _trials(entropies: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    rows = []
    for i, (stage, arm, normal, reduce) in enumerate(entropies):
        rows.append({"stage": stage, "stage_kind": "cell_search", "trial_id": f"t{i}", "arm": arm, "seed": i,
                     "status": "finished", "extra.arm_label": f"weighting={arm}", "best.valid_acc": 0.9 + i / 100,
                     "best.arch_entropy_normal": normal, "best.arch_entropy_reduce": reduce})  # fmt: skip
    return pd.DataFrame(rows)


def test_an_arm_that_ended_near_uniform_is_named_with_how_many_trials_and_how_close():
    trials = _trials([("search", "scalar", 0.999, 0.70), ("search", "scalar", 0.60, 0.97),
                      ("search", "scalar", 0.50, 0.55), ("search", "max_w", 0.40, 0.30)])  # fmt: skip
    (warning,) = health_warnings(trials)
    assert warning.startswith("search (weighting=scalar): architecture weights did not move in 2 of 3 trials")
    assert "0.970-0.999" in warning and "worst: arch_entropy_normal" in warning
    assert health_warnings(_trials([("search", "max_w", 0.9, 0.5)])) == []  # decided enough: no warning


def test_the_report_shows_the_warnings_first_in_every_format(tmp_path):
    store = ResultsStore(tmp_path, "exp")
    for seed in (0, 1, 2):
        store.write_trial(f"s{seed}", 0, {
            "stage": "search", "stage_kind": "cell_search", "status": "finished", "seed": seed, "arm": "a-scalar",
            "config": {"seed": seed}, "wall_seconds": 10.0, "extra": {"arm_label": "weighting=scalar"},
            "best": {"valid_acc": 0.9, "arch_entropy_normal": 0.999, "arch_entropy_reduce": 0.99},
        })  # fmt: skip
    trials = store.trials()
    assert report_tables(trials).warnings
    assert format_report(trials).startswith("== warnings ==\n! search (weighting=scalar)")
    assert format_report(trials, fmt="markdown").startswith("## Warnings\n\n- search (weighting=scalar)")
    assert '"warnings": [' in format_report(trials, fmt="json")


def test_run_prints_a_warning_when_a_search_trial_finishes_near_uniform():
    lines: list[str] = []
    view = ProgressView(lines.append, live=False)
    view.start(StageProgress("search", total=2))
    undecided = Trial(stage="search", kind="cell_search", trial_id="aaa", config=search_config(1), seed=3, axes={},
                      arm=Arm("search:x", "weighting=scalar"))  # fmt: skip
    decided = Trial(stage="search", kind="cell_search", trial_id="bbb", config=search_config(1), seed=4, axes={},
                    arm=Arm("search:y", "weighting=max_w"))  # fmt: skip
    view.event("epoch", undecided, {"epoch": 1, "arch_entropy_normal": 0.998, "arch_entropy_reduce": 0.9})
    view.event("finished", undecided)
    view.event("epoch", decided, {"epoch": 1, "arch_entropy_normal": 0.5, "arch_entropy_reduce": 0.6})
    view.event("finished", decided)
    warnings = [line for line in lines if "warning" in line]
    assert warnings == ["[search] warning: aaa (weighting=scalar, seed 3): architecture weights did not move: "
                        "arch_entropy_normal 0.998 of max (1.0 = uniform); the architecture it returns is close "
                        "to a coin toss"]  # fmt: skip


def test_each_search_kind_names_its_uniformity_metrics_and_other_kinds_none():
    assert least_decided("cell_search", {"arch_entropy_normal": 0.2, "arch_entropy_reduce": 0.96}) == (
        "arch_entropy_reduce", 0.96)
    assert least_decided("hypercuboid_search", {"arch_entropy_normalized": 0.99}) == ("arch_entropy_normalized", 0.99)
    assert least_decided("retrain", {"arch_entropy_normal": 1.0}) is None
    assert trial_warning("cell_search", {"arch_entropy_normal": NEAR_UNIFORM - 1e-3}) is None


def test_dhgs_reports_its_entropy_as_a_share_of_the_uniform_maximum():
    torch.manual_seed(0)
    model = HyperCuboidSupernet(channels=(4, 8), layers=2, num_classes=10, in_channels=1, head_channels=16)
    described = describe_hypercuboid(model)  # freshly initialised: close to uniform
    group = model.arch_weights()[0, 0].numel()
    assert math.isclose(described["arch_entropy_normalized"], described["arch_entropy_mean_nats"] / math.log(group))
    assert 0.9 < described["arch_entropy_normalized"] <= 1.0 + 1e-9
    with torch.no_grad():
        model.arch_parameters()[0].mul_(0).index_fill_(-1, torch.tensor([0]), 50.0)  # all weight on one op
    assert describe_hypercuboid(model)["arch_entropy_normalized"] < 0.7
