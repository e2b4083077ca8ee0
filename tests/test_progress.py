"""Live progress counts and ETA (nas_service.progress), on a fake clock: no Ray, no terminal."""

from __future__ import annotations

import dataclasses

from nas_service.progress import ProgressView, StageProgress, format_duration, uniform_epochs
from nas_service.trials import Arm, Trial
from tests.helpers import search_config


def _trial(trial_id: str, epochs: int = 4) -> Trial:
    return Trial(stage="search", kind="cell_search", trial_id=trial_id, config=search_config(epochs), seed=0, axes={},
                 arm=Arm("search:x", "x"))  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_eta_follow_the_trials() -> None:
    clock = Clock()
    a, b, c = _trial("a"), _trial("b"), _trial("c")
    progress = StageProgress("search", total=4, done=1, concurrency=2, epochs_per_trial=4, clock=clock)
    assert progress.line() == "[search] 1/4 done, 0 running, 3 pending, 0 failed"  # no epoch timed: no ETA
    progress.started(a)
    progress.started(b)
    clock.now = 10.0
    progress.epoch(a, {"epoch": 1, "epoch_seconds": 10.0})
    progress.epoch(b, {"epoch": 1})  # no epoch_seconds: the time since its start, 10 s
    # remaining epochs: a 3 + b 3 + 1 pending x 4 = 10, 10 s each, over 2 lanes
    assert progress.eta_seconds() == 50.0
    assert progress.line() == "[search] 1/4 done, 2 running (1/4, 1/4), 1 pending, 0 failed; ETA 50s"
    progress.finished(a)
    progress.finished(a)  # Tune may tell twice; counted once
    progress.errored(b)
    progress.started(c)
    assert (progress.done, len(progress.running), progress.pending, progress.failed) == (2, 1, 1, 1)


def test_plain_view_prints_when_a_trial_ends_and_at_most_every_interval_otherwise() -> None:
    lines: list[str] = []
    view = ProgressView(lines.append, live=False, plain_every=3600)
    view.start(StageProgress("search", total=1, epochs_per_trial=4))
    trial = _trial("a")
    view.event("started", trial)  # the first event of the stage: a line
    view.event("epoch", trial, {"epoch": 1, "epoch_seconds": 5.0})  # within the interval: no line
    view.event("finished", trial)
    view.event("started", dataclasses.replace(_trial("other"), stage="retrain"))  # another stage's: not counted
    view.stop()
    assert lines == ["[search] 0/1 done, 1 running (0/4), 0 pending, 0 failed",
                     "[search] 1/1 done, 0 running, 0 pending, 0 failed"]  # stop() does not repeat the last line


def test_helpers() -> None:
    assert [format_duration(s) for s in (12, 95, 4000)] == ["12s", "1m35s", "1h06m"]
    assert uniform_epochs([_trial("a", 3), _trial("b", 3)]) == 3 and uniform_epochs([_trial("a", 3), _trial("b", 4)]) is None
