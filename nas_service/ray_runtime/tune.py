"""Everything in the project that talks to Ray (Tune and Core) lives in this module.

Ray's reporting and checkpoint APIs changed several times across 2.x; keeping every call here means a
Ray upgrade touches one file. The rest of the service calls plain functions: :func:`start_ray`,
:func:`run_trials`, :func:`shutdown_ray`.

Layout of one experiment's storage (a local folder or a URI pyarrow understands)::

    <storage>/<experiment>/results/          Parquet tables (nas_service.results)
    <storage>/<experiment>/tune/<stage>-<h>/ one Ray Tune experiment per stage and trial set
    <storage>/<experiment>/trials/<id>/      a trial's own checkpoints (local storage only)
    <storage>/<experiment>/ddp/<run>/         Ray Train's checkpoints of a DDP retrain trial

A trial resumes from the newest checkpoint it can find: its own folder (local storage), or the Tune
checkpoint Ray hands back after ``Tuner.restore`` / a retry (any storage).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RAY_ENVIRONMENT",
    "configure_environment",
    "start_ray",
    "shutdown_ray",
    "cluster_resources",
    "TrialPayload",
    "StageOutcome",
    "run_trials",
    "FAULT_INJECTION_ENV",
]

# Settings every Ray process of ours needs; set before Ray starts so workers inherit them.
RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # On Linux Ray binds its servers to the machine's address unless this is 0; then every listener is
    # on 127.0.0.1 (ray-notes.md, checked with `ss -ltnp`).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # The classic reporter honours verbose=0; our own per-epoch lines replace Tune's tables.
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ctrl-C raises KeyboardInterrupt in the driver instead of Tune's soft stop, whose results cannot tell
    # an interrupted trial from one that ended; the experiment state on disk resumes either way.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}

# Test instrumentation: JSON {"trial_id": ..., "epoch": N, "marker": FILE}. The named trial raises once,
# right after reporting epoch N (the marker file records that it did), so tests can check retries.
FAULT_INJECTION_ENV = "NAS_SERVICE_INJECT_FAULT"


def configure_environment() -> None:
    """Applies :data:`RAY_ENVIRONMENT` (without overriding what the user set)."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def start_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
              dashboard: bool = False) -> dict:  # fmt: skip
    """Starts a local Ray bound to 127.0.0.1, or connects to ``address`` (as ``ray.init`` does).

    Args:
        dashboard: start the local instance's dashboard (on 127.0.0.1, any free port). Ray Train needs
            it: its placement-group cleaner asks the State API whether a run's controller still lives
            (without it, the cleaner warns every second and cannot clean up after a dead driver).

    Returns:
        the cluster's resources (``{"CPU": 2.0, ...}``).
    """
    configure_environment()
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        else:
            options = {"include_dashboard": dashboard}
            if dashboard:
                options.update(dashboard_host="127.0.0.1", dashboard_port=_free_port())
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, log_to_driver=True,
                     logging_level="WARNING", **options)  # fmt: skip
    return cluster_resources()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_resources() -> dict:
    import ray

    return dict(ray.cluster_resources())


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class TrialPayload:
    """What a Tune trial needs to run one planned trial (plain data, so Ray can ship it)."""

    trial_id: str
    stage: str
    kind: str
    config: dict[str, Any]
    seed: int
    arm: str
    arm_label: str
    lineage_trial_id: str | None
    lineage_stage: str | None
    lineage_source: str
    # A DDP retrain: {"workers": n, "resources_per_worker": {"CPU": c, "GPU": g}, "retries": r,
    # "sync_batchnorm": b}; None trains in the Tune trial's own process.
    ddp: dict[str, Any] | None = None


@dataclass
class StageOutcome:
    """What one call of :func:`run_trials` achieved, judged from our own results store."""

    done: set[str]
    errored: dict[str, str]
    pending: set[str]
    interrupted: bool
    stopped_early: dict[str, TrialPayload] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# The trainable


def _local_workdir(storage: str, experiment: str, trial_id: str) -> Path:
    """The trial's own folder on a local storage; scratch space for URI storage."""
    if "://" not in storage or storage.startswith("file://"):
        base = storage[len("file://") :] if storage.startswith("file://") else storage
        return Path(base) / experiment / "trials" / trial_id
    return Path(tempfile.gettempdir()) / "nas-service" / experiment / "trials" / trial_id


def _epoch_of(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _restore_tune_checkpoint(workdir: Path) -> None:
    """Copies the checkpoint Tune hands back into the trial folder when it is newer than what is there."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    ckpt_dir = workdir / "checkpoints"
    have = max((_epoch_of(p) for p in ckpt_dir.glob("epoch_*.pt")), default=0)
    with checkpoint.as_directory() as folder:
        files = sorted(Path(folder).glob("epoch_*.pt"))
        if files and _epoch_of(files[-1]) > have:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[-1], ckpt_dir / files[-1].name)
            if (Path(folder) / "best.pt").exists():
                shutil.copy2(Path(folder) / "best.pt", workdir / "best.pt")


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _maybe_inject_fault(trial_id: str, epoch: int) -> None:
    raw = os.environ.get(FAULT_INJECTION_ENV)
    if not raw:
        return
    fault = json.loads(raw)
    marker = Path(fault["marker"])
    if fault["trial_id"] == trial_id and fault["epoch"] == epoch and not marker.exists():
        marker.write_text(f"injected after epoch {epoch}\n")
        raise RuntimeError(f"injected fault in trial {trial_id} after epoch {epoch} ({FAULT_INJECTION_ENV})")


def _trial_trainable(param: dict[str, Any], *, payloads: dict[str, TrialPayload], storage: str,
                     experiment: str) -> None:  # fmt: skip
    """A Tune trial of a planned trial (``param["trial_id"]`` names it)."""
    _run_payload(payloads[param["trial_id"]], storage=storage, experiment=experiment)


def _optuna_trainable(param: dict[str, Any], *, optuna_plan: Any, storage: str, experiment: str) -> None:
    """A Tune trial of an Optuna suggestion: the suggested path becomes a planned trial, then runs."""
    from ..runner import trial_payload

    _run_payload(trial_payload(optuna_plan.trial(param)), storage=storage, experiment=experiment)


def _run_payload(trial: TrialPayload, *, storage: str, experiment: str) -> None:
    """Runs one trial through the training engine inside a Tune trial; records every epoch and the end."""
    from ray import tune

    from nas_service.results import ResultsStore
    from trainers.config import config_from_dict
    from trainers.engine import DivergedError, Hooks

    from ..trial_runner import run_training, summary_row

    logging.getLogger("ray").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    store = ResultsStore(storage, experiment)
    previous = store.trials(trial_ids=[trial.trial_id])
    if not previous.empty and previous["status"].iloc[0] in ("finished", "diverged"):
        # Done before (a crash Tune did not get to record, or Optuna suggesting the same path again):
        # nothing is repeated; the searcher still hears the result.
        tune.report({k[5:]: v for k, v in previous.iloc[0].items() if k.startswith("best.") and _is_number(v)})
        return
    workdir = _local_workdir(storage, experiment, trial.trial_id)
    workdir.mkdir(parents=True, exist_ok=True)
    _restore_tune_checkpoint(workdir)
    have = sorted((workdir / "checkpoints").glob("epoch_*.pt"))
    # The attempt is the epoch this run starts from: a later start has a higher number, and two starts
    # from the same checkpoint write identical rows (resume is exact), so readers dedup safely.
    attempt = _epoch_of(have[-1]) if have else 0
    config = config_from_dict(trial.config)
    started = time.time()
    cpu_started = time.process_time()

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        store.write_epoch(trial.trial_id, attempt, {"stage": trial.stage, "seed": trial.seed, **metrics})
        tune_checkpoint = None
        staging = None
        if checkpoint is not None:
            staging = Path(tempfile.mkdtemp(prefix="nas-ckpt-"))
            shutil.copy2(checkpoint, staging / checkpoint.name)
            if (workdir / "best.pt").exists():
                shutil.copy2(workdir / "best.pt", staging / "best.pt")
            tune_checkpoint = tune.Checkpoint.from_directory(str(staging))
        tune.report(_scalar_metrics(metrics), checkpoint=tune_checkpoint)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        _maybe_inject_fault(trial.trial_id, int(metrics["epoch"]))

    def restarted_from(epoch: int) -> None:  # a DDP worker group (re)started from this epoch's checkpoint
        nonlocal attempt
        attempt = epoch

    try:
        if trial.ddp is not None:
            summary = _run_ddp(trial, config, storage=storage, experiment=experiment, workdir=workdir,
                               report=report, on_start=restarted_from)  # fmt: skip
        else:
            summary = run_training(config, workdir=workdir, hooks=Hooks(report=report, log=lambda line: None))
    except DivergedError as err:
        store.write_trial(trial.trial_id, attempt, summary_row(
            trial, None, status="diverged", error=str(err), wall=time.time() - started,
            cpu=time.process_time() - cpu_started))  # fmt: skip
        tune.report({"diverged": 1})
        return
    _backfill_epochs(store, trial, attempt, summary.get("history") or [])
    store.write_trial(trial.trial_id, attempt, summary_row(
        trial, summary, status="finished", wall=time.time() - started, cpu=time.process_time() - cpu_started))  # fmt: skip
    if not summary.get("history") or summary["epochs_run"] == 0:
        tune.report({"done": 1})


def _backfill_epochs(store: Any, trial: TrialPayload, attempt: int, history: list[dict[str, Any]]) -> None:
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


def _run_ddp(trial: TrialPayload, config: Any, *, storage: str, experiment: str, workdir: Path,
             report: Callable[[dict[str, Any], Path | None], None], on_start: Callable[[int], None]) -> dict[str, Any]:  # fmt: skip
    """A retrain trial as a DDP run on Ray Train, driven from this Tune trial (see ``train.py``).

    The run's name and storage derive from the trial, so a retried or resumed trial continues the same
    Ray Train run from its last checkpoint; a lost worker or node restarts the worker group from there.
    """
    from .train import ddp_run_name, ddp_trial_resources, run_ddp_retrain

    ddp = trial.ddp or {}
    workers = int(ddp["workers"])
    _, per_worker = ddp_trial_resources(workers, ddp["resources_per_worker"])
    threads = max(1, round(float(ddp["resources_per_worker"].get("CPU", 1))))
    return run_ddp_retrain(
        config, workdir=workdir, workers=workers, run_name=ddp_run_name(trial.trial_id, config),
        storage_path=_storage_under(storage, experiment, "ddp"), resources_per_worker=per_worker,
        retries=int(ddp["retries"]), sync_batchnorm=bool(ddp.get("sync_batchnorm", True)), report=report,
        on_start=on_start, threads=threads,
    )  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# ---------------------------------------------------------------------------------------------------------
# Running one stage's trials


def _tune_name(stage: str, trial_ids: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(trial_ids)).encode()).hexdigest()[:10]
    return f"{stage}-{digest}"


def _storage_under(storage: str, experiment: str, leaf: str) -> str:
    """``<storage>/<experiment>/<leaf>`` as Ray wants it: a URI, or an absolute local path."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{experiment}/{leaf}"
    return str(Path(storage).resolve() / experiment / leaf)


def _tune_storage(storage: str, experiment: str) -> str:
    return _storage_under(storage, experiment, "tune")


def _asha(asha: dict[str, Any] | None, epochs: int) -> Any:
    if not asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric=asha["metric"], mode=asha["mode"], max_t=epochs,
                         grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"])  # fmt: skip


class _Progress:
    """A Tune callback (built lazily: Ray is imported only when a stage runs) for per-epoch lines."""

    @staticmethod
    def make(payload_of: Callable[[dict[str, Any]], TrialPayload | None],
             on_epoch: Callable[[TrialPayload, dict[str, Any]], None] | None,
             on_error: Callable[[TrialPayload, str], None] | None) -> Any:  # fmt: skip
        from ray import tune

        class Progress(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                payload = payload_of(trial.config)  # Tune puts its own id in result["trial_id"]
                if payload is not None and on_epoch is not None and "epoch" in result:
                    on_epoch(payload, result)

            def on_trial_error(self, iteration, trials, trial, **info):
                payload = payload_of(trial.config)
                if payload is not None and on_error is not None:
                    on_error(payload, str(trial.error_file or "error"))

        return Progress()


def _run_config(name: str, storage_path: str, retries: int, progress: Any) -> Any:
    """Every stage's Tune run: quiet (our own per-epoch lines), retried from checkpoints, one kept."""
    from ray import tune

    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=0, callbacks=[progress],
        failure_config=tune.FailureConfig(max_failures=retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )  # fmt: skip


def _fit(path: str, make_tuner: Callable[[], Any], trainable: Any) -> Any:
    from ray import tune

    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return make_tuner().fit()


def _errors(grid: Any, done: set[str], payload_of: Callable[[dict[str, Any]], TrialPayload | None]) -> dict[str, str]:
    errored: dict[str, str] = {}
    for result in grid:
        payload = payload_of(result.config or {})
        if result.error is not None and payload is not None and payload.trial_id not in done:
            errored[payload.trial_id] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1]}"
    return errored


def _ended_without_record(grid: Any, done: set[str], payload_of: Callable[[dict[str, Any]], TrialPayload | None]
                          ) -> dict[str, TrialPayload]:  # fmt: skip
    """Trials that ended without error but left no trial row: stopped early by the scheduler (ASHA).

    Only called after ``fit()`` returned normally: an interrupt raises KeyboardInterrupt instead (see
    ``TUNE_DISABLE_SIGINT_HANDLER``), so these trials really ended. The caller records them from their
    epoch rows (which also covers a driver that died after they ended but before recording them).
    """
    out = {}
    for result in grid:
        payload = payload_of(result.config or {})
        if result.error is None and payload is not None and payload.trial_id not in done:
            out[payload.trial_id] = payload
    return out


def run_trials(
    *,
    storage: str,
    experiment: str,
    stage: str,
    payloads: list[TrialPayload],
    resources: dict[str, float],
    retries: int,
    max_concurrent: int,
    is_done: Callable[[], set[str]],
    asha: dict[str, Any] | None = None,
    on_epoch: Callable[[TrialPayload, dict[str, Any]], None] | None = None,
    on_error: Callable[[TrialPayload, str], None] | None = None,
) -> StageOutcome:
    """Runs (or resumes) one stage's trials as one Ray Tune experiment and reports what got done.

    The Tune experiment's name derives from the stage and its whole trial set, so running the same
    command again finds it (``Tuner.can_restore``) and resumes it with errored trials resumed from their
    checkpoints; trials already finished per ``is_done()`` (our own records) are not started at all.

    Args:
        storage: a local folder or a URI; ``experiment``: the experiment's name under it.
        payloads: every trial of the stage (finished ones included: they keep the Tune name stable).
        resources: per trial, e.g. ``{"cpu": 1, "gpu": 0}``.
        retries: how many times a failing trial restarts from its checkpoint.
        max_concurrent: at most this many trials at once.
        is_done: the trial ids our results store says are done for good.
        asha: ASHA early stopping (``metric``, ``mode``, ``grace_period``, ``reduction_factor``), or None.
        on_epoch, on_error: progress callbacks (run in the driver).
    """
    from ray import tune

    configure_environment()
    by_id = {p.trial_id: p for p in payloads}
    todo = [p.trial_id for p in payloads if p.trial_id not in is_done()]
    if not todo:
        return StageOutcome(done=set(by_id), errored={}, pending=set(), interrupted=False)

    name = _tune_name(stage, list(by_id))
    storage_path = _tune_storage(storage, experiment)
    trainable = tune.with_resources(
        tune.with_parameters(_trial_trainable, payloads=by_id, storage=storage, experiment=experiment),
        {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)},
    )  # fmt: skip
    payload_of = lambda config: by_id.get(config.get("trial_id", ""))  # noqa: E731
    epochs = max(int(p.config.get("epochs", 1)) for p in payloads)

    def make_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                        scheduler=_asha(asha, epochs)),  # fmt: skip
            run_config=_run_config(name, storage_path, retries, _Progress.make(payload_of, on_epoch, on_error)),
        )  # fmt: skip

    grid = _fit(f"{storage_path}/{name}", make_tuner, trainable)
    done = is_done()
    errored = _errors(grid, done, payload_of)
    stopped = _ended_without_record(grid, done, payload_of) if asha else {}
    pending = {t for t in by_id if t not in done and t not in errored and t not in stopped}
    return StageOutcome(done=done & set(by_id), errored=errored, pending=pending, interrupted=bool(pending),
                        stopped_early=stopped)  # fmt: skip


def run_optuna_trials(
    *,
    storage: str,
    experiment: str,
    stage: str,
    optuna_plan: Any,
    resources: dict[str, float],
    retries: int,
    max_concurrent: int,
    stage_done_count: Callable[[], int],
    asha: dict[str, Any] | None = None,
    on_epoch: Callable[[TrialPayload, dict[str, Any]], None] | None = None,
    on_error: Callable[[TrialPayload, str], None] | None = None,
) -> StageOutcome:
    """An Optuna search (``OptunaSearch``) over a grid stage's HyperCuboid grid, resumable like any stage.

    Each suggestion becomes a planned trial with a deterministic id (the same path twice is trained
    once). The stage is complete when ``optuna_plan.trials`` suggestions have a recorded outcome.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from ..runner import trial_payload

    configure_environment()
    if stage_done_count() >= optuna_plan.trials:
        return StageOutcome(done=set(), errored={}, pending=set(), interrupted=False)
    metric = (asha or {}).get("metric", "valid_top1")
    mode = (asha or {}).get("mode", "max")
    digest = hashlib.sha256(json.dumps({"stage": stage, "space": optuna_plan.space(), "trials": optuna_plan.trials,
                                        "seed": optuna_plan.seed, "config": optuna_plan.base_config},
                                       sort_keys=True).encode()).hexdigest()[:10]  # fmt: skip
    name = f"{stage}-optuna-{digest}"
    storage_path = _tune_storage(storage, experiment)
    trainable = tune.with_resources(
        tune.with_parameters(_optuna_trainable, optuna_plan=optuna_plan, storage=storage, experiment=experiment),
        {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0)},
    )  # fmt: skip
    keys = set(optuna_plan.space())

    def payload_of(config: dict[str, Any]) -> TrialPayload | None:
        if not keys <= set(config):
            return None
        return trial_payload(optuna_plan.trial({k: config[k] for k in keys}))

    def make_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space={k: tune.choice(v) for k, v in optuna_plan.space().items()},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric=metric, mode=mode, seed=optuna_plan.seed),
                num_samples=optuna_plan.trials, max_concurrent_trials=max_concurrent,
                scheduler=_asha(asha, int(optuna_plan.base_config.get("epochs", 1))),
            ),
            run_config=_run_config(name, storage_path, retries, _Progress.make(payload_of, on_epoch, on_error)),
        )  # fmt: skip

    grid = _fit(f"{storage_path}/{name}", make_tuner, trainable)
    ids = {p.trial_id for p in (payload_of(r.config or {}) for r in grid) if p is not None}
    errored = _errors(grid, set(), payload_of)
    stopped = _ended_without_record(grid, set(), payload_of)
    return StageOutcome(done=ids, errored=errored, pending=set(), interrupted=False, stopped_early=stopped)
