"""One trial from start to results row, with no Ray in it: resume point, attempt numbering, epoch and trial
rows, divergence, the rows a kill left out. The Ray edge (:mod:`nas_service.ray_runtime.tune`) only adapts
it: it hands in a :class:`TrialEdge` that reports to Tune, restores Tune's checkpoint and runs DDP on Ray
Train, so this module is tested without Ray.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from trainers.config import config_to_dict
from trainers.summary import RunSummary

from .location import ExperimentLocation
from .results import ResultsStore
from .stage_kinds import STAGE_KINDS
from .trials import Trial

__all__ = ["TrialEdge", "run_trial", "summary_row", "record_stopped_early", "record_failed_attempt",
           "failed_attempts", "FAULT_INJECTION_ENV", "DONE_STATUSES"]  # fmt: skip

# A trial with one of these statuses is never run again.
DONE_STATUSES = ("finished", "diverged")

# Test instrumentation: JSON {"trial_id": ..., "epoch": N, "marker": FILE, "kind": ...}. Once, right after
# reporting epoch N (the marker file records that it did), the named trial fails, so tests can check retries.
# kind "raise" (the default): it raises. "memory": it allocates and touches memory in 64 MiB chunks until Ray's
# memory monitor kills its worker; past "cap_mib" (default 4096), or when the machine has less than
# "floor_mib" (default 2048) available, it frees it and SIGKILLs itself instead (the marker says which).
# "sigkill": it SIGKILLs its own process (a worker lost without a word).
FAULT_INJECTION_ENV = "NAS_SERVICE_INJECT_FAULT"

Report = Callable[[dict[str, Any], "Path | None"], None]


class TrialEdge(Protocol):
    """What the scheduler running the trial provides (Tune's implementation is in ``ray_runtime.tune``)."""

    def restore(self, workdir: Path) -> None:
        """Puts the scheduler's newest checkpoint of this trial into ``workdir`` if it is newer."""

    def report(self, metrics: Mapping[str, Any], checkpoint: Path | None, workdir: Path) -> None:
        """Reports one epoch's metrics (and its checkpoint file, when there is one) to the scheduler."""

    def run_ddp(self, trial: Trial, workdir: Path, report: Report, on_start: Callable[[int], None]) -> RunSummary:
        """Runs a DDP trial (``trial.ddp``) across workers; ``on_start(epoch)`` at each worker-group start."""

    def gpus_held(self, trial: Trial) -> float:
        """How many GPUs the trial holds while it runs (fractions count as such; DDP: all its workers')."""


def run_trial(trial: Trial, location: ExperimentLocation, edge: TrialEdge) -> None:
    """Runs (or resumes) one planned trial and records every epoch and its end in the results store."""
    # torch: imported where a trial runs; the planner and `nas-service plan/status` read DONE_STATUSES only.
    from trainers.checkpoints import epoch_of, latest_intact_checkpoint
    from trainers.engine import DivergedError, Hooks

    kind = STAGE_KINDS.get(trial.kind)
    store = ResultsStore.of(location)
    previous = store.trials(trial_ids=[trial.trial_id])
    if not previous.empty and previous["status"].iloc[0] in DONE_STATUSES:
        # Done before (a crash the scheduler did not get to record, or Optuna suggesting the same path
        # again): nothing is repeated; the searcher still hears the result.
        best = {k[5:]: v for k, v in previous.iloc[0].items() if k.startswith("best.") and _is_number(v)}
        edge.report(best, None, Path())
        return
    workdir = location.trial_workdir(trial.trial_id)
    workdir.mkdir(parents=True, exist_ok=True)
    edge.restore(workdir)
    # The attempt is the epoch this run starts from: a later start has a higher number, and two starts
    # from the same checkpoint write identical rows (resume is exact), so readers dedup safely. A damaged
    # newest checkpoint is set aside here (with a warning), so the number is that of the one resumed from.
    have = latest_intact_checkpoint(workdir / "checkpoints")
    attempt = epoch_of(have) if have else 0
    earlier = _earlier_attempt_seconds(store, trial.trial_id, attempt)
    started, cpu_started = time.time(), time.process_time()

    reported = False

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        nonlocal reported
        reported = True
        store.write_epoch(trial.trial_id, attempt, {"stage": trial.stage, "seed": trial.seed, **metrics})
        edge.report(metrics, checkpoint, workdir)
        _maybe_inject_fault(trial.trial_id, int(metrics["epoch"]))

    def restarted_from(epoch: int) -> None:  # a DDP worker group (re)started from this epoch's checkpoint
        nonlocal attempt
        attempt = epoch

    def row(summary: RunSummary | None, status: str, error: str | None = None) -> dict[str, Any]:
        # The trial's cost is every attempt's: earlier ones by their recorded epochs' seconds.
        per_attempt = [*earlier.values(), time.time() - started]
        wall = float(sum(per_attempt))
        values = summary_row(trial, summary, status=status, error=error, wall=wall,
                             cpu=time.process_time() - cpu_started, gpu=edge.gpus_held(trial) * wall)  # fmt: skip
        values["checkpoint"] = final_checkpoint(workdir)
        values["extra"]["attempt_wall_seconds"] = json.dumps([round(x, 3) for x in per_attempt])
        failures = failed_attempts(store, trial.trial_id)
        if failures:  # the errored rows they wrote are superseded by this one (and compacted away)
            values["extra"]["failed_attempts"] = json.dumps(failures)
        return values

    try:
        if trial.ddp is not None:
            summary = edge.run_ddp(trial, workdir, report, restarted_from)
        else:
            assert kind.run_trial is not None, f"stage kind {kind.name!r} runs in the driver, not as trials"
            summary = kind.run_trial(trial, workdir, Hooks(report=report, log=lambda line: None))
    except DivergedError as err:
        store.write_trial(trial.trial_id, attempt, row(None, "diverged", str(err)))
        store.compact_trial(trial.trial_id)
        edge.report({"diverged": 1}, None, workdir)
        return
    _backfill_epochs(store, trial, attempt, summary.history)
    store.write_trial(trial.trial_id, attempt, row(summary, "finished"))
    # The trial has ended: its one-row parts become one part per table (a kill here loses nothing).
    store.compact_trial(trial.trial_id)
    if not reported:  # finished from its last checkpoint: the scheduler still hears of it (and its config)
        edge.report({"done": 1}, None, workdir)


def record_failed_attempt(store: Any, trial: Trial, cause: str) -> int | None:
    """Writes the trial row of an attempt that failed: status ``errored``, ``error`` its cause (one line).

    The driver calls it when the scheduler reports the failure, before any retry starts. The failed attempt
    is the latest one that wrote an epoch row (0 if none did: one that failed before its first epoch may
    thus be recorded under its predecessor's number). A retry's row (a later attempt, or the same one
    written later) supersedes this one, so every row of the trial carries every failure so far in
    ``extra.failed_attempts`` (JSON ``[{"attempt", "error"}, ...]``): the trial's final row keeps them.

    Returns:
        The attempt recorded; None when the trial is already done for good (its row is left alone).
    """
    previous = store.trials(trial_ids=[trial.trial_id])
    if not previous.empty and previous["status"].iloc[0] in DONE_STATUSES:
        return None
    raw = store.read_table("epochs", trial_ids=[trial.trial_id])
    frame = raw.to_pandas() if raw.num_rows else None
    attempt = int(frame["attempt"].max()) if frame is not None else 0
    seconds = 0.0
    if frame is not None and "epoch_seconds" in frame:
        seconds = float(frame.loc[frame["attempt"] == attempt, "epoch_seconds"].sum())
    failures = [*failed_attempts(store, trial.trial_id), {"attempt": attempt, "error": cause}]
    row = summary_row(trial, None, status="errored", error=cause, wall=seconds, cpu=0.0)
    row["cpu_seconds"] = None  # not measured: the process that spent it is gone
    row["extra"]["failed_attempts"] = json.dumps(failures)
    store.write_trial(trial.trial_id, attempt, row)
    return attempt


def failed_attempts(store: Any, trial_id: str) -> list[dict[str, Any]]:
    """The failed attempts of a trial recorded so far (``[{"attempt", "error"}, ...]``, oldest first)."""
    raw = store.read_table("trials", trial_ids=[trial_id])
    if raw.num_rows == 0 or "extra.failed_attempts" not in raw.column_names:
        return []
    frame = raw.select(["attempt", "finished_at", "extra.failed_attempts"]).to_pandas()
    frame = frame.dropna(subset=["extra.failed_attempts"]).sort_values(["attempt", "finished_at"])
    return list(json.loads(frame["extra.failed_attempts"].iloc[-1])) if not frame.empty else []


def _earlier_attempt_seconds(store: Any, trial_id: str, attempt: int) -> dict[int, float]:
    """``{attempt: seconds}`` of the runs of this trial before ``attempt``, from the epoch rows they wrote
    (all of them, superseded ones too: redone work was paid for)."""
    raw = store.read_table("epochs", trial_ids=[trial_id])
    if raw.num_rows == 0 or "epoch_seconds" not in raw.column_names:
        return {}
    frame = raw.select(["attempt", "epoch_seconds"]).to_pandas()
    frame = frame[frame["attempt"] < attempt]
    return {int(a): float(v) for a, v in frame.groupby("attempt")["epoch_seconds"].sum().items()}


def final_checkpoint(workdir: Path) -> str | None:
    """The trial's checkpoint worth keeping: the best weights of a retrain, else the last epoch's state
    (a local path: the trial's folder, or its scratch copy when the storage is an object store)."""
    from trainers.checkpoints import list_epoch_checkpoints

    best = workdir / "best.pt"
    if best.is_file():
        return str(best)
    epochs = list_epoch_checkpoints(workdir / "checkpoints")
    return str(epochs[-1][1]) if epochs else None


def _backfill_epochs(store: Any, trial: Trial, attempt: int, history: list[dict[str, Any]]) -> None:
    """Writes the epoch rows that a kill left out, before the trial row says the trial is done.

    An epoch is resumable once its checkpoint exists; its row is written after that. A kill in between
    (of this process, or of a DDP driver whose rank 0 had already committed the epoch) resumes after the
    epoch without writing its row. The finished run's history has every epoch, so none is lost.
    """
    frame = store.epochs(trial_ids=[trial.trial_id])
    have = set() if frame.empty else {int(e) for e in frame["epoch"]}
    for metrics in history:
        if "epoch" in metrics and int(metrics["epoch"]) not in have:
            store.write_epoch(trial.trial_id, attempt, {"stage": trial.stage, "seed": trial.seed, **metrics})


def _maybe_inject_fault(trial_id: str, epoch: int) -> None:
    raw = os.environ.get(FAULT_INJECTION_ENV)
    if not raw:
        return
    fault = json.loads(raw)
    marker = Path(fault["marker"])
    if fault["trial_id"] != trial_id or fault["epoch"] != epoch or marker.exists():
        return
    kind = fault.get("kind", "raise")
    marker.write_text(f"injected after epoch {epoch}: {kind}\n")
    if kind == "raise":
        raise RuntimeError(f"injected fault in trial {trial_id} after epoch {epoch} ({FAULT_INJECTION_ENV})")
    if kind == "memory":
        hog: list[bytes] = []
        for _ in range(int(fault.get("cap_mib", 4096)) // 64):
            if _available_mib() < int(fault.get("floor_mib", 2048)):  # never starve the machine
                break
            hog.append(b"\x01" * (64 << 20))  # written, so resident: the memory monitor sees it
            time.sleep(0.05)  # a few of its checks per chunk
        hog.clear()
        with marker.open("a") as f:
            f.write("cap reached before the memory monitor acted: SIGKILL instead\n")
    elif kind != "sigkill":
        raise ValueError(f"{FAULT_INJECTION_ENV}: kind must be raise, memory or sigkill, got {kind!r}")
    os.kill(os.getpid(), signal.SIGKILL)


def _available_mib() -> float:
    """The machine's available memory (Linux ``MemAvailable``); infinite where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.inf


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def summary_row(trial: Trial, summary: RunSummary | None, *, status: str, wall: float, cpu: float,
                gpu: float | None = None, error: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The results-store trial row of a finished (or diverged) trial; ``gpu``: GPUs held x wall seconds."""
    row: dict[str, Any] = {
        "stage": trial.stage,
        "stage_kind": trial.kind,
        "seed": trial.seed,
        "status": status,
        "config": config_to_dict(trial.config),
        "arm": trial.arm.arm_id,
        "lineage_trial_id": trial.lineage.parent,
        "lineage_stage": trial.lineage.parent_stage,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "gpu_seconds": gpu,
        "error": error,
        "extra": {"arm_label": trial.arm.label, "lineage_source": trial.lineage.source,
                  "workers": int((trial.ddp or {}).get("workers", 1)),
                  # The stage's sweep values of this trial: the report's main effects per axis.
                  "axes_json": json.dumps(trial.axes, sort_keys=True, default=str)},
    }
    if summary is None:
        return row
    history = summary.history
    paper = (summary.protocol or "").startswith("paper")
    row.update(
        epochs_completed=summary.epochs_run,
        best_epoch=summary.best_epoch,
        best_metric="test_top1" if paper else STAGE_KINDS.get(trial.kind).epoch_metric,
        best={k: v for k, v in summary.best.items() if isinstance(v, (int, float))},
        last={k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))},
        params=summary.params,
        multiply_adds=summary.multiply_adds,
        protocol=summary.protocol,
        **summary.architecture(),
    )
    # The summary without its history but with the last epoch: what later stages' upstream results read.
    brief = {k: v for k, v in summary.to_dict().items() if k != "history"}
    row["extra"]["summary_json"] = json.dumps({**brief, "history_tail": history[-1:]})
    return row


def record_stopped_early(store: Any, trial: Trial) -> bool:
    """Writes the trial row of a trial a scheduler (ASHA) stopped early, from its recorded epochs; False
    if it has a row already or recorded no epoch."""
    from search_spaces.networks import count_multiply_adds, count_parameters
    from trainers.data import get_dataset_info
    from trainers.retrain import build_model, model_spec, summarize_retrain

    if not store.trials(trial_ids=[trial.trial_id]).empty:
        return False
    frame = store.epochs(trial_ids=[trial.trial_id]).sort_values("epoch")
    if frame.empty:
        return False
    # Metrics only: the store's own columns (timestamps, ids) are not part of a training history.
    own = {"schema_version", "experiment", "stage", "trial_id", "attempt", "seed", "written_at"}
    history = [{k: v for k, v in row.items() if k not in own and isinstance(v, (int, float))
                and not (isinstance(v, float) and math.isnan(v))} for row in frame.to_dict("records")]  # fmt: skip
    for entry in history:
        entry["epoch"] = int(entry["epoch"])
    config = trial.config
    info = get_dataset_info(config.data.dataset)
    spec = model_spec(config, info)
    model = build_model(spec)
    madds = count_multiply_adds(model, (info.in_channels, info.input_size, info.input_size))
    summary = summarize_retrain(history, config, spec, count_parameters(model), madds)
    wall = float(sum(entry.get("epoch_seconds", 0.0) for entry in history))
    row = summary_row(trial, summary, status="finished", wall=wall, cpu=0.0)  # CPU and GPU time were not measured
    row["extra"]["stopped_early"] = True
    store.write_trial(trial.trial_id, int(frame["attempt"].max()), row)
    store.compact_trial(trial.trial_id)
    return True
