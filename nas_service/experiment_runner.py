"""Runs an experiment spec stage by stage: plan, run the stage's trials on Ray Tune, record, repeat.

Completion is judged from our own results store, never from Ray's counts: after an interrupt Tune can
report still-running trials as terminated (ray-notes.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .planner import Plan, UnschedulableError, max_concurrent_trials, plan, unschedulable_reason
from .progress import ProgressView, StageProgress, uniform_epochs
from .result_values import package_versions, utc
from .results import ResultsStore
from .spec import ExperimentSpec
from .stage_kinds import STAGE_KINDS
from .trial_lifecycle import DONE_STATUSES, record_stopped_early
from .trials import Trial, UpstreamResult

__all__ = ["RunOutcome", "StageScheduling", "stage_scheduling", "run_experiment", "upstream_from_store",
           "UnschedulableError", "EXIT_INTERRUPTED", "EXIT_FAILED", "DEFAULT_SCHEDULE_TIMEOUT_S"]

EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
# How long a stage on a cluster that may grow waits for nodes with room for its trials before it fails.
DEFAULT_SCHEDULE_TIMEOUT_S = 600.0


@dataclass
class RunOutcome:
    """How a run ended: ``complete`` only when every trial of every stage is done for good."""

    complete: bool
    interrupted: bool = False
    errored: dict[str, str] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.complete:
            return 0
        return EXIT_INTERRUPTED if self.interrupted else EXIT_FAILED


def upstream_from_store(store: ResultsStore) -> Callable[[str], list[UpstreamResult]]:
    """What finished trials of a stage left for the stages that take ``from:`` it."""

    def upstream(stage: str) -> list[UpstreamResult]:
        frame = store.trials()
        if frame.empty:
            return []
        out = []
        for _, row in frame[frame["stage"] == stage].iterrows():
            if row["status"] not in DONE_STATUSES:
                continue
            raw = row.get("extra.summary_json")
            kind = STAGE_KINDS.get(row["stage_kind"])
            if row["status"] == "finished" and isinstance(raw, str) and kind.upstream is not None:
                summary = json.loads(raw)
                summary["history"] = summary.pop("history_tail", [])
                out.append(kind.upstream(row["trial_id"], kind.summary_type.from_dict(summary)))
            else:
                config = json.loads(row["config_json"]) if isinstance(row.get("config_json"), str) else {}
                out.append(UpstreamResult(row["trial_id"], int(row["seed"]), config, status=row["status"]))
        return out

    return upstream


def _stage_done_count(store: ResultsStore, stage: str) -> int:
    frame = store.trials()
    if frame.empty:
        return 0
    return int(((frame["stage"] == stage) & frame["status"].isin(DONE_STATUSES)).sum())


@dataclass(frozen=True)
class StageScheduling:
    """How one stage's trials use the cluster.

    Attributes:
        per_trial: what each Tune trial holds (``{"cpu", "gpu"}``).
        concurrency: trials at once.
        ddp: the DDP settings each trial carries (``Trial.ddp``; None: trials train in-process).
        note: a line for the user (how many at once and why), or a warning.
        bundles: what one trial asks Ray for, as placement bundles (``{"CPU", "GPU"}``): the trial itself,
            or a DDP trial's driver and then each of its workers (they may be on different nodes).
    """

    per_trial: dict[str, float]
    concurrency: int
    ddp: dict[str, Any] | None = None
    note: str = ""
    bundles: tuple[dict[str, float], ...] = ()


def _check_fits(stage: Any, one_trial: dict[str, float], cpus: float, gpus: float, fixed: bool,
                memory: float | None = None) -> str | None:  # fmt: skip
    """None when one trial fits the cluster; else the reason (raised at once on a fixed cluster)."""
    reserved = one_trial.get("memory") or 0.0
    too_much_memory = memory is not None and reserved > memory
    if one_trial["cpu"] <= cpus + 1e-9 and one_trial["gpu"] <= gpus + 1e-9 and not too_much_memory:
        return None
    reason = (f"stage {stage.name!r}: one trial needs {one_trial['cpu']:g} CPUs and {one_trial['gpu']:g} GPUs, "
              f"the cluster has {cpus:g} and {gpus:g}")  # fmt: skip
    if too_much_memory:
        reason += (f"; it reserves {reserved / 2**30:.2f} GiB of memory, Ray has {memory / 2**30:.2f} GiB "
                   "to reserve")  # fmt: skip
    if fixed:
        raise UnschedulableError(f"{reason}; it would never start. Lower resources (or resources_per_worker x "
                                 "workers) in the spec, or run on a cluster with room (--address)")  # fmt: skip
    return reason


def _memory(resources: Any) -> dict[str, float]:
    """``{"memory": bytes}`` when the spec reserves memory (Ray's resource name), else nothing."""
    return {"memory": float(resources.memory)} if resources.memory else {}


def stage_scheduling(spec: ExperimentSpec, stage: Any, cluster: dict[str, float], *,
                     fixed: bool = False) -> StageScheduling:  # fmt: skip
    """Per-trial resources and concurrency of ``stage`` on a cluster with ``cluster`` resources.

    ``fixed``: the cluster cannot grow (the local Ray instance ``run`` starts itself): a trial that does not
    fit raises :class:`UnschedulableError` instead of waiting forever for nodes that never come.

    A DDP retrain trial (``workers`` >= 2) holds a sliver of a CPU for its driver while its workers hold
    the rest (:func:`~nas_service.ray_runtime.train.ddp_trial_resources`); concurrency counts the workers,
    so the service never starts more DDP trials than the cluster can give workers to (drivers holding
    every CPU while their workers wait would never finish).
    """
    cpus, gpus = cluster.get("CPU", 1), cluster.get("GPU", 0)
    memory = cluster.get("memory")  # what Ray may reserve for tasks; unknown (None) limits nothing
    workers = getattr(stage, "workers", 1)
    if workers < 2:
        per_trial = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **_memory(spec.resources)}
        waiting = _check_fits(stage, per_trial, cpus, gpus, fixed, memory)
        note = f"WARNING: {waiting}: its trials wait until nodes with room join" if waiting else ""
        bundles = ({"CPU": per_trial["cpu"], "GPU": per_trial["gpu"], **_memory(spec.resources)},)
        return StageScheduling(per_trial, max_concurrent_trials(per_trial, cpus, gpus, memory), note=note,
                               bundles=bundles)  # fmt: skip
    from .ray_runtime.train import ddp_trial_resources

    asked = {"CPU": stage.resources_per_worker.cpu, "GPU": stage.resources_per_worker.gpu,
             **_memory(stage.resources_per_worker)}  # fmt: skip
    driver, worker = ddp_trial_resources(workers, asked)
    whole = {"cpu": workers * asked["CPU"], "gpu": workers * asked["GPU"],
             **{k: workers * v for k, v in _memory(stage.resources_per_worker).items()}}  # fmt: skip
    concurrency = max_concurrent_trials(whole, cpus, gpus, memory)
    note = (f"DDP over {workers} workers of {asked['CPU']:g} CPU, {asked['GPU']:g} GPU each; "
            f"up to {concurrency} trial(s) at once")  # fmt: skip
    waiting = _check_fits(stage, whole, cpus, gpus, fixed, memory)
    if waiting:
        note += f"; WARNING: {waiting}: its workers wait until nodes with room join"
    ddp = {"workers": workers, "resources_per_worker": asked, "retries": stage.worker_retries,
           "sync_batchnorm": stage.sync_batchnorm}
    bundles = ({"CPU": driver["cpu"]},) + tuple(dict(worker) for _ in range(workers))
    return StageScheduling({"cpu": driver["cpu"], "gpu": 0.0}, concurrency, ddp, note, bundles)


def _epoch_line(trial: Trial, result: dict[str, Any]) -> str:
    keys = [k for k in ("train_loss", "valid_acc", "valid_top1", "test_top1") if k in result]
    parts = " ".join(f"{k} {result[k]:.4f}" for k in keys)
    epochs = trial.epochs or "?"
    return f"[{trial.stage}] {trial.trial_id} {trial.arm.label or ''} seed {trial.seed}: epoch " \
           f"{int(result['epoch'])}/{epochs} {parts}".replace("  ", " ")  # fmt: skip


def run_experiment(
    spec: ExperimentSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    spec_path: str | None = None,
    out: Callable[[str], None] = lambda line: print(line, flush=True),
    live_progress: bool | None = None,
    schedule_timeout: float = DEFAULT_SCHEDULE_TIMEOUT_S,
) -> RunOutcome:
    """Runs (or resumes) every stage of ``spec``; returns how it ended.

    ``live_progress``: a live progress table (rich) instead of plain status lines; default: when standard
    output is a terminal.

    ``schedule_timeout``: on a cluster that may grow, a stage whose trial does not fit the cluster's alive
    nodes (a node lost, or more asked for than any node has) waits this many seconds for nodes with room,
    then fails with :class:`UnschedulableError` (a local instance refuses such a stage at once).

    Raises:
        UnschedulableError: a stage's trial does not fit the cluster (see ``schedule_timeout``)."""
    from . import ray_runtime  # Ray and torch only once a run starts: `nas-service plan` imports this module

    location = spec.location
    store = ResultsStore.of(location)
    ddp_stages = any(getattr(stage, "workers", 1) > 1 for stage in spec.stages)
    resources = ray_runtime.start_ray(address, num_cpus=num_cpus, dashboard=ddp_stages)
    per_trial = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu, **_memory(spec.resources)}
    concurrency = max_concurrent_trials(per_trial, resources.get("CPU", 1), resources.get("GPU", 0),
                                        resources.get("memory"))  # fmt: skip
    out(f"experiment {spec.name}: storage {spec.storage}; Ray has {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs; up to {concurrency} trials at once")  # fmt: skip
    store.write_experiment_record({
        "spec": spec.model_dump(mode="json", by_alias=True), "spec_path": spec_path, "started_at": utc(None, "started_at"),
        "code_version": package_versions()["code"], "versions": package_versions(),
    })  # fmt: skip
    from .store_repair import repair_store  # torch when a checkpoint must be read: only once a run starts

    for note in repair_store(store, location):  # damage a kill cannot cause, healed before anything is judged
        out(f"repaired: {note}")
    upstream = upstream_from_store(store)
    outcome = RunOutcome(complete=True)
    view = ProgressView(out, live=live_progress)
    for stage in spec.stages:
        current: Plan = plan(spec, upstream=upstream)
        stage_plan = current.stage(stage.name)
        if stage_plan.state == "waiting":
            outcome.complete = False
            outcome.waiting.append(stage.name)
            out(f"[{stage.name}] waiting on {stage_plan.waiting_on}: not run")
            continue
        trials = list(stage_plan.trials)
        done = store.finished_trial_ids()
        out(f"[{stage.name}] {stage.kind}: {len(trials)} trials, {len(done & {t.trial_id for t in trials})} done")
        kind = STAGE_KINDS.get(stage.kind)
        if kind.run_in_driver is not None:
            kind.run_in_driver(trials, location, out)
            continue
        asha = None
        if stage_plan.asha is not None:
            a = stage_plan.asha
            asha = {"metric": a.metric, "mode": a.mode, "grace_period": a.grace_period,
                    "reduction_factor": a.reduction_factor}  # fmt: skip
        # A local instance is fixed; a cluster (--address, or RAY_ADDRESS inside a Ray job) may grow nodes.
        scheduling = stage_scheduling(spec, stage, resources, fixed=not (address or os.environ.get("RAY_ADDRESS")))
        if scheduling.note:
            out(f"[{stage.name}] {scheduling.note}")
        searching = stage_plan.state == "search"
        view.start(StageProgress(
            stage.name, total=stage_plan.optuna.trials if searching else len(trials),
            done=_stage_done_count(store, stage.name) if searching else len(done & {t.trial_id for t in trials}),
            concurrency=scheduling.concurrency, epochs_per_trial=uniform_epochs(trials),
        ))  # fmt: skip

        def on_event(kind: str, trial: Trial, result: dict[str, Any] | None) -> None:
            if kind == "epoch":
                out(_epoch_line(trial, result or {}))
            elif kind == "errored":  # an attempt failed: Tune retries it from its checkpoint while it may
                info = result or {}
                then = "retrying from its last checkpoint" if info.get("retrying") else "no retries left"
                out(f"[{trial.stage}] {trial.trial_id} failed; {then}: {info.get('error', 'unknown error')}")
            view.event(kind, trial, result)

        common = dict(
            location=location, stage=stage.name, resources=scheduling.per_trial,
            retries=spec.retries, max_concurrent=scheduling.concurrency, asha=asha, on_event=on_event,
            unschedulable=lambda nodes, name=stage.name, bundles=scheduling.bundles: unschedulable_reason(
                name, bundles, nodes),
            schedule_timeout=schedule_timeout,
        )  # fmt: skip
        try:
            if searching:
                result = ray_runtime.run_optuna_trials(
                    optuna_plan=stage_plan.optuna, stage_done_count=lambda: _stage_done_count(store, stage.name),
                    **common,
                )  # fmt: skip
            else:
                result = ray_runtime.run_trials(
                    trials=[dataclasses.replace(t, ddp=scheduling.ddp) for t in trials],
                    is_done=store.finished_trial_ids, **common,
                )  # fmt: skip
        finally:
            view.stop()
        for note in result.repaired:
            out(f"[{stage.name}] repaired: {note}")
        for trial in result.stopped_early.values():
            if record_stopped_early(store, trial):
                out(f"[{stage.name}] {trial.trial_id} stopped early by ASHA (recorded with its epochs so far)")
        for trial_id, error in result.errored.items():
            out(f"[{stage.name}] {trial_id} errored: {error}")
        outcome.errored.update(result.errored)
        if result.interrupted:
            outcome.complete, outcome.interrupted = False, True
            break
        if result.errored:
            outcome.complete = False
    if outcome.interrupted or not outcome.complete:
        command = f"nas-service run {shlex.quote(spec_path)}" if spec_path else "the same command"
        out(f"experiment {spec.name} is not complete; rerun {command} to resume (finished trials are kept)")
    else:  # one Parquet file per table: fast to read, and every column visible to plain readers
        removed = store.compact()
        out(f"results compacted: {sum(removed.values())} parts into one file per table")
    return outcome
