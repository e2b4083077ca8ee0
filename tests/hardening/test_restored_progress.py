"""A resumed run's trial events reach the driver that resumed it.

Tune pickles a run's callbacks with its state and ``Tuner.restore`` calls the unpickled copies. Before the
fix the progress callback carried the interrupted driver's objects in its closure: a resumed run fed a stale
copy of the old progress view (counts of the previous run), and once ``ProgressView`` had gained an
attribute, the unpickled old view crashed the resumed run with ``AttributeError: 'ProgressView' object has no
attribute '_last_metrics'`` (seen resuming examples/precision.yaml). This test fails on that code: the
callback's events went to the receiver captured at pickling time.
"""

from __future__ import annotations

import types

import cloudpickle

from nas_service.ray_runtime import tune as tune_runtime
from nas_service.trials import Arm, Trial
from tests.helpers import search_config

TRIAL = Trial(stage="search", kind="cell_search", trial_id="abc", config=search_config(1), seed=0, axes={},
              arm=Arm("search:x", "x"))  # fmt: skip


def test_a_restored_callback_reports_to_the_receivers_of_the_process_that_restored_it():
    old_events: list[tuple[str, str]] = []
    tune_runtime._listen("stage-run", lambda config: TRIAL, lambda kind, trial, result: old_events.append((kind, trial.trial_id)))
    callback = tune_runtime._Progress.make("stage-run")
    saved = cloudpickle.dumps(callback)  # as Tune keeps it with the run's state

    new_events: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    tune_runtime._listen("stage-run", lambda config: TRIAL, lambda kind, trial, result: new_events.append((kind, trial.trial_id)),
                         lambda trial, cause: failures.append((trial.trial_id, cause)))  # fmt: skip
    restored = cloudpickle.loads(saved)
    tune_trial = types.SimpleNamespace(config={"trial_id": "abc"}, error_file=None, status="ERROR")
    restored.on_trial_start(0, [], tune_trial)
    restored.on_trial_result(0, [], tune_trial, {"epoch": 1})
    restored.on_trial_complete(0, [], tune_trial)
    assert new_events == [("started", "abc"), ("epoch", "abc"), ("finished", "abc")]
    assert old_events == []


def test_events_of_a_run_nobody_listens_to_are_dropped():
    callback = cloudpickle.loads(cloudpickle.dumps(tune_runtime._Progress.make("nobody-listens")))
    callback.on_trial_start(0, [], types.SimpleNamespace(config={"trial_id": "x"}))  # no error
