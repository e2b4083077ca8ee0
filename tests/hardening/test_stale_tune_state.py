"""A Tune state that names a checkpoint which no longer exists does not block the experiment for good.

A kill between Tune deleting a trial's older checkpoint (num_to_keep=1) and its next state snapshot leaves
such a state (seen once in CI: every restore of that trial failed, and every rerun). Made deterministic
here: a trial fails after its epoch-1 checkpoint (no retries), then its Tune checkpoints are deleted. The
rerun failed before this change; now Tune's state is dropped and the trial resumes from its own checkpoint.
"""

from __future__ import annotations

import json
import shutil

import pytest

from nas_service.planner import plan
from nas_service.results import ResultsStore
from nas_service.spec import load_spec
from tests.service.test_ray_experiments import cli_env, finish, start_run, write_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_rerun_recovers_from_tune_state_that_names_deleted_checkpoints(tmp_path, ray_home) -> None:
    spec = write_spec(tmp_path, retries=0)
    victim = plan(load_spec(spec)).stage("search").trials[0].trial_id
    fault = json.dumps({"trial_id": victim, "epoch": 1, "marker": str(tmp_path / "fired")})
    code, out = finish(start_run(spec, cli_env(tmp_path, NAS_SERVICE_INJECT_FAULT=fault)))
    assert code != 0 and (tmp_path / "fired").exists(), out[-2000:]
    lost = [p for p in (tmp_path / "runs" / "tiny" / "tune").rglob("checkpoint_*") if f"trial_id={victim}" in str(p)]
    assert lost, "Tune kept no checkpoint of the failed trial: nothing to delete, nothing tested"
    for folder in lost:
        shutil.rmtree(folder)

    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out[-3000:]
    store = ResultsStore(str(tmp_path / "runs"), "tiny")
    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 3 and set(trials["status"]) == {"finished"}
    rows = epochs[epochs["trial_id"] == victim].sort_values("epoch")
    assert list(rows["attempt"]) == [0, 1]  # epoch 2 came from its own epoch-1 checkpoint, not a fresh start
