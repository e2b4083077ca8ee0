"""Live progress of a running experiment, in the driver: per stage, trials done / running / pending /
failed, each running trial's epoch, and an ETA from the epoch times measured so far.

:class:`StageProgress` only counts (no I/O, tested on its own). :class:`ProgressView` shows it: a live
table (rich) on a terminal, plain status lines otherwise (CI, Ray job logs), at most one every
``plain_every`` seconds besides the one each trial's end or failure prints.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .search_health import trial_warning
from .trials import Trial

__all__ = ["StageProgress", "ProgressView", "format_duration", "uniform_epochs"]


def format_duration(seconds: float) -> str:
    """``95 -> "1m35s"``, ``4000 -> "1h06m"``, ``12 -> "12s"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Running:
    epochs: int | None
    epoch: int = 0
    last_report: float = field(default_factory=time.monotonic)


@dataclass
class StageProgress:
    """One stage's trials as the driver hears of them.

    Args:
        stage: the stage's name.
        total: how many trials the stage runs (an Optuna stage: its trial budget).
        done: how many of them were done before this run started.
        concurrency: how many trials run at once (the ETA divides the remaining epochs among them).
        epochs_per_trial: the epochs a trial runs, when all trials of the stage run the same number.
        clock: seconds, monotonic (tests pass their own).
    """

    stage: str
    total: int
    done: int = 0
    concurrency: int = 1
    epochs_per_trial: int | None = None
    clock: Callable[[], float] = time.monotonic
    failed: int = 0
    running: dict[str, _Running] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    finished_here: set[str] = field(default_factory=set)

    def started(self, trial: Trial) -> None:
        self.running[trial.trial_id] = _Running(trial.epochs or self.epochs_per_trial,
                                                last_report=self.clock())  # fmt: skip

    def epoch(self, trial: Trial, result: dict[str, Any]) -> None:
        """One reported epoch: its ``epoch_seconds`` where the trial measured it, else the time since the
        trial's previous report."""
        entry = self.running.get(trial.trial_id)
        if entry is None:  # a report before Tune told us of the start (or a resumed trial)
            self.started(trial)
            entry = self.running[trial.trial_id]
        now = self.clock()
        measured = result.get("epoch_seconds")
        seconds = float(measured) if isinstance(measured, (int, float)) and measured > 0 else now - entry.last_report
        if seconds > 0:
            self.epoch_seconds.append(seconds)
        entry.epoch = int(result.get("epoch", entry.epoch + 1))
        entry.last_report = now

    def finished(self, trial: Trial) -> None:
        self.running.pop(trial.trial_id, None)
        if trial.trial_id not in self.finished_here:
            self.finished_here.add(trial.trial_id)
            self.done += 1

    def errored(self, trial: Trial) -> None:
        """A failed attempt: Tune retries it from its checkpoint while retries are left."""
        self.failed += 1
        self.running.pop(trial.trial_id, None)

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - len(self.running))

    def eta_seconds(self) -> float | None:
        """Remaining epochs x the median epoch time / the trials that run at once; None until an epoch was
        timed or when the epoch counts are unknown."""
        if not self.epoch_seconds or self.epochs_per_trial is None and any(r.epochs is None for r in self.running.values()):
            return None
        per_trial = self.epochs_per_trial or max((r.epochs or 0 for r in self.running.values()), default=0)
        remaining = sum(max(0, (r.epochs or per_trial) - r.epoch) for r in self.running.values()) + self.pending * per_trial
        lanes = max(1, min(self.concurrency, len(self.running) + self.pending))
        return remaining * statistics.median(self.epoch_seconds) / lanes

    def line(self) -> str:
        """``[search] 2/6 done, 2 running (3/5, 1/5), 2 pending, 0 failed; ETA 1m20s``."""
        epochs = ", ".join(f"{r.epoch}/{r.epochs or '?'}" for r in self.running.values())
        eta = self.eta_seconds() if self.running or self.pending else None
        return (f"[{self.stage}] {self.done}/{self.total} done, {len(self.running)} running"
                + (f" ({epochs})" if epochs else "") + f", {self.pending} pending, {self.failed} failed"
                + (f"; ETA {format_duration(eta)}" if eta is not None else ""))  # fmt: skip


class ProgressView:
    """Shows a :class:`StageProgress` while its stage runs; the epoch lines still go to ``out``.

    Args:
        out: where lines go (the runner's printer).
        live: a rich live table; default: when standard output is a terminal.
        plain_every: seconds between status lines in plain mode (a trial's end or failure always prints one).
    """

    def __init__(self, out: Callable[[str], None], *, live: bool | None = None, plain_every: float = 30.0) -> None:
        self.out = out
        self.live_mode = sys.stdout.isatty() if live is None else live
        self.plain_every = plain_every
        self.progress: StageProgress | None = None
        self._live: Any = None
        self._last_line = 0.0
        self._last_text = ""
        self._last_metrics: dict[str, dict[str, Any]] = {}

    def start(self, progress: StageProgress) -> None:
        self.progress = progress
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            # Lines printed while it is live (the epoch lines) scroll above the table.
            self._live = Live(self._table(), console=Console(), refresh_per_second=2, transient=True)
            self._live.start()
        self._last_line = 0.0

    def stop(self) -> None:
        """Ends the live table; the stage's last counts stay on screen as one line."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.progress is not None and self.progress.line() != self._last_text:
            self._say(self.progress.line())

    def _say(self, line: str) -> None:
        self._last_text = line
        self.out(line)

    def event(self, kind: str, trial: Trial, result: dict[str, Any] | None = None) -> None:
        """``started`` / ``epoch`` / ``finished`` / ``errored``: counts it and refreshes the view."""
        progress = self.progress
        if progress is None or trial.stage != progress.stage:
            return
        if kind == "epoch":
            progress.epoch(trial, result or {})
            self._last_metrics[trial.trial_id] = result or {}
        else:
            getattr(progress, kind)(trial)
        if kind == "finished":
            warning = trial_warning(trial.kind, self._last_metrics.pop(trial.trial_id, {}))
            if warning:  # printed above a live table, so it stays on screen
                self.out(f"[{trial.stage}] warning: {trial.trial_id} ({trial.arm.label}, seed {trial.seed}): {warning}")
        if self._live is not None:
            self._live.update(self._table())
            return
        now = time.monotonic()
        # A line when a trial ends or fails; while trials run, one at most every plain_every seconds.
        if kind in ("finished", "errored") or now - self._last_line >= self.plain_every:
            self._last_line = now
            self._say(progress.line())

    def _table(self) -> Any:
        from rich.table import Table

        progress = self.progress
        assert progress is not None
        eta = progress.eta_seconds()
        table = Table(title=f"stage {progress.stage}" + (f", ETA {format_duration(eta)}" if eta is not None else ""))
        for column in ("done", "running", "pending", "failed"):
            table.add_column(column, justify="right")
        table.add_column("running trials (epoch)")
        running = ", ".join(f"{tid[:8]} {r.epoch}/{r.epochs or '?'}" for tid, r in progress.running.items())
        table.add_row(f"{progress.done}/{progress.total}", str(len(progress.running)), str(progress.pending),
                      str(progress.failed), running)  # fmt: skip
        return table


def uniform_epochs(trials: Iterable[Trial]) -> int | None:
    """The epochs every trial runs, when they agree (None otherwise, or for no trials)."""
    counts = {t.epochs for t in trials}
    return next(iter(counts)) if len(counts) == 1 and isinstance(next(iter(counts)), int) else None
