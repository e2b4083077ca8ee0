"""A resumed trial's cost counts every attempt (issue 14, item 7): before, `wall_seconds` was the last
attempt's only (7.9 s against 23.9 s uninterrupted) and the attempts were not recorded. Ray-free: the trial
lifecycle runs in this process with an edge that reports nowhere; the first attempt fails after epoch 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas_service.planner import plan
from nas_service.results import ResultsStore
from nas_service.spec import load_spec
from nas_service.trial_lifecycle import FAULT_INJECTION_ENV, run_trial
from tests.helpers import tiny_search_spec


class QuietEdge:
    def restore(self, workdir: Path) -> None:
        pass

    def report(self, metrics, checkpoint, workdir) -> None:
        pass

    def run_ddp(self, *args, **kwargs):
        raise AssertionError("no DDP here")

    def gpus_held(self, trial) -> float:
        return 0.0


def test_a_resumed_trial_costs_all_its_attempts(tmp_path, monkeypatch) -> None:
    spec = load_spec(tiny_search_spec("cost", tmp_path / "runs", seeds=[0], epochs=2, max_steps_per_epoch=2))
    trial = plan(spec).stage("search").trials[0]
    monkeypatch.setenv(FAULT_INJECTION_ENV, json.dumps({"trial_id": trial.trial_id, "epoch": 1,
                                                        "marker": str(tmp_path / "fired")}))  # fmt: skip
    with pytest.raises(RuntimeError, match="injected fault"):
        run_trial(trial, spec.location, QuietEdge())
    run_trial(trial, spec.location, QuietEdge())  # resumes from the epoch-1 checkpoint

    store = ResultsStore.of(spec.location)
    row = store.trials().iloc[0]
    epochs = store.epochs().set_index("epoch")
    assert list(epochs["attempt"]) == [0, 1]
    per_attempt = json.loads(row["extra.attempt_wall_seconds"])
    assert len(per_attempt) == 2 and per_attempt[0] == round(epochs.loc[1, "epoch_seconds"], 3)
    assert row["wall_seconds"] == pytest.approx(sum(per_attempt), abs=2e-3)
    assert row["wall_seconds"] > epochs["epoch_seconds"].sum()  # both epochs, and the second run's start-up
