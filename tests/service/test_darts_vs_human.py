"""examples/darts_vs_human.yaml, shrunken, end to end on a local Ray through the CLI: DHGS (scalar and Max-W),
the grid stage that trains the extracted paths beside the human path and random paths on the same grid,
the Optuna search with ASHA, the retrain of its best paths, and the report against the human path."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from nas_service.results import ResultsStore
from search_spaces.paths import HyperCuboidPath
from tests.helpers import ROOT
from tests.service.test_ray_experiments import cli_env, finish, start_run

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

TINY = {"epochs": 2, "max_steps_per_epoch": 2}


def shrunken_spec(tmp_path) -> tuple[dict, str]:
    """The example with 2 epochs of 2 steps everywhere, one retrain seed, a 3-trial Optuna search whose ASHA
    may stop a trial after its first epoch; the stages, the grid and the candidates are the example's."""
    spec = yaml.safe_load((ROOT / "examples" / "darts_vs_human.yaml").read_text())
    spec["storage"] = str(tmp_path / "runs")
    for stage in spec["stages"]:
        stage["overrides"] = {**stage.get("overrides", {}), **TINY}
        if stage["kind"] != "hypercuboid_search":
            stage["seeds"] = [0]
    stages = {s["name"]: s for s in spec["stages"]}
    stages["optuna"]["optuna"]["trials"] = 3
    stages["optuna"]["asha"] = {**stages["optuna"]["asha"], "grace_period": 1}
    path = tmp_path / "darts_vs_human.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec, str(path)


def test_the_darts_vs_human_comparison_runs_on_one_grid_on_ray(tmp_path, ray_home) -> None:
    spec, path = shrunken_spec(tmp_path)
    code, out = finish(start_run(path, cli_env(tmp_path)), timeout=800)
    assert code == 0, out[-4000:]
    trials = ResultsStore(spec["storage"], spec["name"]).trials()
    by_stage = {stage: group for stage, group in trials.groupby("stage")}
    assert set(by_stage) == {"dhgs", "compare", "optuna", "optuna_retrain"}
    assert (trials["status"] == "finished").all(), trials[["stage", "trial_id", "status", "error"]]

    # One grid: every path trained in `compare` and by Optuna has the example's widths, depth and head.
    grid = next(s for s in spec["stages"] if s["name"] == "compare")
    for stage in ("compare", "optuna", "optuna_retrain"):
        for text in by_stage[stage]["path_json"]:
            p = HyperCuboidPath.from_dict(json.loads(text))
            assert {p.stem_channels, *(w for s in p.stages for w in (s.c_in, s.c_out))} <= set(grid["channels"])
            assert (p.layers, p.head_channels) == (grid["layers"], grid["head_channels"])
    labels = set(by_stage["compare"]["extra.arm_label"])
    assert {"path=human", "from dhgs: weighting=scalar", "from dhgs: weighting=max_w"} <= labels
    # each DHGS arm is replicated over the three search seeds
    dhgs_arm = by_stage["compare"][by_stage["compare"]["extra.arm_label"] == "from dhgs: weighting=max_w"]
    assert len(dhgs_arm) == 3 and set(dhgs_arm["lineage_stage"]) == {"dhgs"}

    # Optuna made its 3 trials under ASHA: each ran both epochs or was stopped early and recorded as such.
    optuna = by_stage["optuna"]
    assert len(optuna) == 3
    stopped = optuna.get("extra.stopped_early", pd.Series([pd.NA] * len(optuna), index=optuna.index))
    for completed, early in zip(optuna["epochs_completed"], stopped):
        assert completed == TINY["epochs"] or (not pd.isna(early) and bool(early)), (completed, early)
    assert len(by_stage["optuna_retrain"]) == 2

    # The report compares every arm of `compare` with the human path, and the page is written.
    assert "-- against path=human (test_top1;" in out
    page = tmp_path / "runs" / spec["name"] / "report" / "report.html"
    assert f"report page: {page}" in out and "against path=human" in page.read_text()
