"""Everything in the project that talks to Ray (Tune and Core) lives in this module.

Ray's reporting and checkpoint APIs changed several times across 2.x; keeping every call here means a
Ray upgrade touches one file. The rest of the service calls plain functions: :func:`start_ray`,
:func:`run_trials`, :func:`shutdown_ray`.

The experiment's folders are :class:`nas_service.location.ExperimentLocation`'s; one trial's life is
:func:`nas_service.trial_lifecycle.run_trial`, which the trainables here adapt to Tune.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainers.checkpoints import copy_run_files, stage_run_files
from trainers.config import config_to_dict
from trainers.summary import RetrainSummary

from ..digests import digest
from ..location import ExperimentLocation
from ..planner import UnschedulableError
from ..stage_kinds import STAGE_KINDS, StageKind
from ..trial_lifecycle import record_failed_attempt, run_trial
from ..trials import Trial

# The driver's progress callback: (started | epoch | finished | errored, the planned trial, metrics or None).
OnEvent = Callable[[str, Trial, "dict[str, Any] | None"], None]
# Why one trial of the stage does not fit these alive nodes' total resources, or None when it does.
Unschedulable = Callable[[list[dict[str, float]]], "str | None"]

__all__ = [
    "RAY_ENVIRONMENT",
    "configure_environment",
    "start_ray",
    "shutdown_ray",
    "cluster_resources",
    "alive_node_resources",
    "StageOutcome",
    "run_trials",
    "run_optuna_trials",
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

def configure_environment() -> None:
    """Applies :data:`RAY_ENVIRONMENT` (without overriding what the user set)."""
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def start_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
              dashboard: bool = False) -> dict:  # fmt: skip
    """Starts a local Ray bound to 127.0.0.1, or connects to ``address`` (as ``ray.init`` does).

    Without ``address`` but with ``RAY_ADDRESS`` set (every Ray job's entrypoint has it), this connects there:
    ``ray.init`` would connect anyway, and refuses ``num_cpus`` when it does.

    Args:
        dashboard: start the local instance's dashboard (on 127.0.0.1, any free port). Ray Train needs
            it: its placement-group cleaner asks the State API whether a run's controller still lives
            (without it, the cleaner warns every second and cannot clean up after a dead driver).

    Returns:
        the cluster's resources (``{"CPU": 2.0, ...}``).
    """
    configure_environment()
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
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


def alive_node_resources() -> list[dict[str, float]]:
    """The total resources of each alive node (``{"CPU": 4.0, "GPU": 1.0, ...}``), as the GCS has them now."""
    import ray

    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass
class StageOutcome:
    """What one call of :func:`run_trials` achieved, judged from our own results store."""

    done: set[str]
    errored: dict[str, str]
    pending: set[str]
    interrupted: bool
    stopped_early: dict[str, Trial] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)  # where Tune's state disagreed with the store, and what was done


# ---------------------------------------------------------------------------------------------------------
# The trainable


class _TuneEdge:
    """How a trial's lifecycle talks to Tune: reports, Tune's checkpoints, DDP on Ray Train."""

    def __init__(self, location: ExperimentLocation) -> None:
        self.location = location

    def restore(self, workdir: Path) -> None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                copy_run_files(folder, workdir, only_if_newer=True)

    def report(self, metrics: Mapping[str, Any], checkpoint: Path | None, workdir: Path) -> None:
        from ray import tune

        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if checkpoint is None:
            tune.report(scalars)
            return
        staging = Path(tempfile.mkdtemp(prefix="nas-ckpt-"))
        try:
            stage_run_files(checkpoint, workdir, staging)
            tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def run_ddp(self, trial: Trial, workdir: Path, report: Callable[..., None],
                on_start: Callable[[int], None]) -> RetrainSummary:  # fmt: skip
        """A retrain trial as a DDP run on Ray Train, driven from this Tune trial (see ``train.py``).

        The run's name and storage derive from the trial, so a retried or resumed trial continues the same
        Ray Train run from its last checkpoint; a lost worker or node restarts the worker group from there.
        """
        from .train import ddp_run_name, ddp_trial_resources, run_ddp_retrain

        ddp = dict(trial.ddp or {})
        workers = int(ddp["workers"])
        _, per_worker = ddp_trial_resources(workers, ddp["resources_per_worker"])
        threads = max(1, round(float(ddp["resources_per_worker"].get("CPU", 1))))
        config = trial.config
        return run_ddp_retrain(
            config, workdir=workdir, workers=workers, run_name=ddp_run_name(trial.trial_id, config),
            storage_path=self.location.ddp, resources_per_worker=per_worker, retries=int(ddp["retries"]),
            sync_batchnorm=bool(ddp.get("sync_batchnorm", True)), report=report, on_start=on_start,
            threads=threads,
        )  # fmt: skip

    def gpus_held(self, trial: Trial) -> float:
        import ray

        if trial.ddp:  # the driver holds none; every worker holds its own
            per_worker = dict(trial.ddp.get("resources_per_worker") or {})
            return float(trial.ddp["workers"]) * float(per_worker.get("GPU", per_worker.get("gpu", 0.0)))
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def _known_here(kind: StageKind) -> None:
    """Registers the stage's kind in this worker process when it is not a built-in one (a kind a user
    registered in the driver travels with the trainable)."""
    if kind.name not in STAGE_KINDS:
        STAGE_KINDS.register(kind.name, kind)


def _trial_trainable(param: dict[str, Any], *, trials: dict[str, Trial], location: ExperimentLocation,
                     kind: StageKind) -> None:  # fmt: skip
    """A Tune trial of a planned trial (``param["trial_id"]`` names it)."""
    logging.getLogger("ray").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    _known_here(kind)
    run_trial(trials[param["trial_id"]], location, _TuneEdge(location))


def _optuna_trainable(param: dict[str, Any], *, optuna_plan: Any, location: ExperimentLocation) -> None:
    """A Tune trial of an Optuna suggestion: the suggested path becomes a planned trial, then runs."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    run_trial(optuna_plan.trial(param), location, _TuneEdge(location))


# ---------------------------------------------------------------------------------------------------------
# Running one stage's trials


def _recorder(location: ExperimentLocation) -> Callable[[Trial, str], None]:
    """Records a failed attempt of a trial in the results store (:func:`record_failed_attempt`)."""
    from ..results import ResultsStore

    return lambda trial, cause: record_failed_attempt(ResultsStore.of(location), trial, cause)


def _tune_name(stage: str, trial_ids: list[str]) -> str:
    return f"{stage}-{digest(sorted(trial_ids), 10, compact=False)}"


def _asha(asha: dict[str, Any] | None, epochs: int) -> Any:
    if not asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric=asha["metric"], mode=asha["mode"], max_t=epochs,
                         grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"])  # fmt: skip


# The driver's receivers of each Tune run's trial events, by Tune run name. Tune pickles a run's callbacks
# with its state, and a restored run (``Tuner.restore``) calls those unpickled copies, not callbacks this
# process built: a callback holding the driver's objects would feed stale copies of them (a resumed run's
# progress went to the interrupted run's view; an older view class crashed the run). So the callback holds
# only the run's name and finds the live receivers through :func:`_receivers` (pickled by reference).
_RECEIVERS: dict[str, tuple[Callable[[dict[str, Any]], Trial | None], OnEvent | None,
                            Callable[[Trial, str], None] | None]] = {}  # fmt: skip


def _listen(name: str, trial_of: Callable[[dict[str, Any]], Trial | None], on_event: OnEvent | None,
            on_failure: Callable[[Trial, str], None] | None = None) -> None:  # fmt: skip
    """Routes the trial events of Tune run ``name`` to this process's ``on_event`` / ``on_failure`` (before
    its ``fit()``, fresh or restored)."""
    _RECEIVERS[name] = (trial_of, on_event, on_failure)


def _receivers(name: str) -> tuple[Any, Any, Any]:
    return _RECEIVERS.get(name, (lambda config: None, None, None))


class _Progress:
    """A Tune callback (built lazily: Ray is imported only when a stage runs) that tells the receivers
    :func:`_listen` registered for its run of each trial's start, epochs, end and failed attempts
    (``on_failure(trial, cause)``: Tune retries it next, or gives up)."""

    @staticmethod
    def make(name: str) -> Any:
        from ray import tune

        class Progress(tune.Callback):
            def __init__(self) -> None:
                self.run_name = name  # the only state that travels with Tune's pickled run

            def _tell(self, kind: str, tune_trial: Any, result: dict[str, Any] | None = None) -> None:
                trial_of, on_event, _ = _receivers(self.run_name)
                planned = trial_of(tune_trial.config)  # Tune puts its own id in result["trial_id"]
                if planned is not None and on_event is not None:
                    on_event(kind, planned, result)

            def _failed(self, tune_trial: Any, retrying: bool) -> None:
                trial_of, _, on_failure = _receivers(self.run_name)
                planned = trial_of(tune_trial.config)
                cause = failure_cause(_latest_error(tune_trial))
                if planned is not None and on_failure is not None:
                    try:
                        on_failure(planned, cause)
                    except Exception as err:  # a record lost is no reason to stop every other trial
                        logger.warning("could not record the failed attempt of %s: %s", planned.trial_id, err)
                self._tell("errored", tune_trial, {"error": cause, "retrying": retrying})

            def on_trial_start(self, iteration, trials, trial, **info):
                self._tell("started", trial)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "epoch" in result:
                    self._tell("epoch", trial, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._tell("finished", trial)

            def on_trial_recover(self, iteration, trials, trial, **info):  # Tune retries it next
                self._failed(trial, retrying=True)

            def on_trial_error(self, iteration, trials, trial, **info):  # no retries left
                self._failed(trial, retrying=False)

        return Progress()


class _ScheduleWatch:
    """A Tune callback (built lazily, as :class:`_Progress`) that fails the stage when its trials cannot be
    scheduled: every few seconds it asks ``unschedulable(alive node resources)``; once that has named a
    reason for ``timeout_s`` seconds in a row (no node with room joined meanwhile), it raises
    :class:`UnschedulableError`, which ends ``fit()`` (Tune stops the stage's trial actors first).

    Without it such a stage never ends: Tune keeps a trial that fits no node PENDING, and Ray Train retries a
    DDP worker group that cannot start forever (``WorkerGroupStartupTimeoutError`` every minute).
    """

    @staticmethod
    def make(unschedulable: Unschedulable, timeout_s: float, *, every_s: float = 2.0,
             nodes: Callable[[], list[dict[str, float]]] = alive_node_resources) -> Any:  # fmt: skip
        from ray import tune

        class ScheduleWatch(tune.Callback):
            def __init__(self) -> None:
                self.since: float | None = None
                self.next_check = 0.0

            def on_step_begin(self, iteration, trials, **info):
                now = time.monotonic()
                if now < self.next_check:
                    return
                self.next_check = now + every_s
                reason = unschedulable(nodes())
                if reason is None:
                    self.since = None
                elif self.since is None:
                    self.since = now
                    logger.warning("%s: waiting up to %g s (--schedule-timeout) for nodes with room", reason,
                                   timeout_s)  # fmt: skip
                elif now - self.since >= timeout_s:
                    raise UnschedulableError(
                        f"{reason}, still after {now - self.since:.0f} s (--schedule-timeout {timeout_s:g}); lower "
                        "resources (or resources_per_worker x workers) in the spec, or add nodes with room"
                    )  # fmt: skip

        return ScheduleWatch()


def _run_config(name: str, storage_path: str, retries: int, progress: Any, *callbacks: Any) -> Any:
    """Every stage's Tune run: quiet (our own per-epoch lines), retried from checkpoints, one kept."""
    from ray import tune

    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=0, callbacks=[progress, *callbacks],
        failure_config=tune.FailureConfig(max_failures=retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )  # fmt: skip


logger = logging.getLogger(__name__)

# Tune's own words when its saved state names a checkpoint that a kill left deleted or unwritten.
_LOST_CHECKPOINT = "does not exist on storage anymore"


def _fit(path: str, make_tuner: Callable[[], Any], trainable: Any,
         unrecorded: Callable[[Any], list[str]] = lambda grid: []) -> tuple[Any, list[str]]:  # fmt: skip
    """Resumes the stage's Tune experiment, or starts it; returns the result grid and what was repaired.

    Tune's state is only a cache here (the results store and the trials' own checkpoints say what is done
    and where each trial stands), so where it disagrees with them it is dropped and the remaining trials
    start in a fresh Tune run, resuming from their own checkpoints:

    - Tune snapshots its state every few seconds and deletes a trial's older checkpoint when a newer one
      lands (num_to_keep=1): a kill between the two leaves state that names a deleted checkpoint, and every
      restore of that trial fails.
    - ``unrecorded(grid)``: trials the restored state calls ended while the store has no row for them (a
      lost or unreadable trial row): a restore never runs them again, so the stage could never complete.
    """
    from ray import tune

    _count_lost_workers_as_trial_failures()
    if not tune.Tuner.can_restore(path):
        return make_tuner().fit(), []
    grid = tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    if any(r.error is not None and _LOST_CHECKPOINT in str(r.error) for r in grid):
        note = "Tune's saved state names checkpoints a kill deleted"
    else:
        missing = unrecorded(grid)
        if not missing:
            return grid, []
        note = (f"Tune's saved state leaves {len(missing)} trial(s) neither errored nor recorded in the results store "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")  # fmt: skip
    note += "; dropped it: those trials run again from their own checkpoints"
    logger.warning("%s (%s)", note, path)
    _forget_tune_state(path)
    return make_tuner().fit(), [note]


def _forget_tune_state(path: str) -> None:
    """Deletes the experiment-level files ``Tuner.can_restore`` looks for; trial folders stay."""
    import pyarrow.fs as pafs

    from ..results import resolve_location

    fs, base = resolve_location(path)
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.File and name.endswith((".pkl", ".json")):
            fs.delete_file(info.path)


# ---------------------------------------------------------------------------------------------------------
# A trial's worker lost (killed by Ray's memory monitor, its node gone): a failed attempt, retried like any


def _count_lost_workers_as_trial_failures() -> None:
    """Makes Tune count a trial whose worker Ray lost as a failed attempt, retried from its checkpoint.

    Tune's actor manager (``RayActorManager._actor_task_failed``, Ray 2.60) expects a trial's task to fail
    with a ``RayActorError`` (the actor died) or a ``RayTaskError`` (the trainable raised). Since Ray 2.3 a
    worker that Ray's memory monitor kills fails its task with ``OutOfMemoryError`` instead (ray-project/ray
    PR #32107), which is neither: the manager raises ``RuntimeError("Caught unexpected exception: ...")``
    out of ``fit()``, so no retry happens and the run ends with a traceback. The same goes for the other
    system errors of a lost worker (``WorkerCrashedError``, ``NodeDiedError``, ...). This wraps the method
    once per process so that such an error reaches Tune as the ``RayActorError`` it means, keeping the
    original type and message in its text (:func:`failure_cause` reads them). A trial's own exception
    (``RayTaskError``) and real actor errors pass through untouched.
    """
    from ray.exceptions import RayActorError, RayError, RayTaskError

    try:
        from ray.air.execution._internal.actor_manager import RayActorManager
    except ImportError:  # pragma: no cover - a Ray without Tune's actor manager
        logger.warning("Ray's Tune actor manager moved: a trial killed for memory may end the run")
        return
    original = getattr(RayActorManager, "_actor_task_failed", None)
    if original is None:  # pragma: no cover
        logger.warning("Ray's Tune actor manager changed: a trial killed for memory may end the run")
        return
    if getattr(original, "_lost_worker_is_actor_error", False):
        return

    def _actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, RayError) and not isinstance(exception, (RayActorError, RayTaskError)):
            # Positional: exceptions pickle by their args (Tune pickles it into the trial's error file).
            exception = RayActorError(None, f"{type(exception).__name__}: {exception}")
        original(self, tracked_actor_task, exception)

    _actor_task_failed._lost_worker_is_actor_error = True  # type: ignore[attr-defined]
    RayActorManager._actor_task_failed = _actor_task_failed  # type: ignore[method-assign]


# Ray's words when its memory monitor killed a worker (OutOfMemoryError, or an actor's death context).
_OOM_WORDS = ("running low on memory", "OutOfMemoryError", "memory monitor")
_MEMORY_USE = re.compile(r"was ([\d.]+\s*[KMGT]?i?B) used / ([\d.]+\s*[KMGT]?i?B) limit \(([\d.]+)\)")


def _latest_error(tune_trial: Any) -> Any:
    """The exception of a Tune trial's latest failure, else its text, from the error files Tune has just
    written in the trial's local folder (the copies on storage come later)."""
    from ray import cloudpickle

    try:
        pickled, text = tune_trial.pickled_error_file, tune_trial.error_file
        if pickled and os.path.exists(pickled):
            with open(pickled, "rb") as f:
                return cloudpickle.load(f)
        if text and os.path.exists(text):  # every failure so far, each after a "Failure # n" line
            with open(text) as f:
                return f.read().rsplit("Failure # ", 1)[-1].split("\n", 1)[-1] or None
    except Exception as err:  # the files are Tune's; unreadable, the cause is unknown, which is no reason to stop
        return f"unknown error (its error file: {err})"
    return None


def failure_cause(error: Any) -> str:
    """One line saying why an attempt of a trial failed: the memory monitor's kill, a lost worker, or the
    trial's own exception (its type and last line, as Ray gives it)."""
    from ray.exceptions import RayError, RayTaskError

    text = str(error if error is not None else "unknown error").strip() or "unknown error"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(error, RayTaskError):
        return f"{type(error).__name__}: {lines[-1]}"
    if any(word in text for word in _OOM_WORDS):
        use = _MEMORY_USE.search(text)
        detail = f" (node memory {use[1]} used of {use[2]}, {float(use[3]):.0%})" if use else ""
        return f"out of memory: Ray's memory monitor killed the trial's worker{detail}"
    if isinstance(error, RayError):
        return f"worker died: {lines[0]}"
    return lines[-1]


def _advice(error: Any) -> str:
    """What to change after the last retry of a trial whose worker was lost (nothing for its own errors)."""
    from ray.exceptions import RayError, RayTaskError

    if isinstance(error, RayTaskError) or not isinstance(error, RayError):
        return ""
    if any(word in str(error) for word in _OOM_WORDS):
        return ("; no retries left: run fewer trials at once (more resources.cpu per trial) or reserve memory "
                "per trial (resources: {memory: 4GiB}) in the spec")  # fmt: skip
    return "; no retries left: its node's Ray logs (raylet.out) may say why"


def _errors(grid: Any, done: set[str], trial_of: Callable[[dict[str, Any]], Trial | None]) -> dict[str, str]:
    errored: dict[str, str] = {}
    for result in grid:
        planned = trial_of(result.config or {})
        if result.error is not None and planned is not None and planned.trial_id not in done:
            errored[planned.trial_id] = failure_cause(result.error) + _advice(result.error)
    return errored


def _ended_without_record(grid: Any, done: set[str], trial_of: Callable[[dict[str, Any]], Trial | None]
                          ) -> dict[str, Trial]:  # fmt: skip
    """Trials that ended without error but left no trial row: stopped early by the scheduler (ASHA).

    Only called after ``fit()`` returned normally: an interrupt raises KeyboardInterrupt instead (see
    ``TUNE_DISABLE_SIGINT_HANDLER``), so these trials really ended. The caller records them from their
    epoch rows (which also covers a driver that died after they ended but before recording them).
    """
    out = {}
    for result in grid:
        planned = trial_of(result.config or {})
        if result.error is None and planned is not None and planned.trial_id not in done:
            out[planned.trial_id] = planned
    return out


def _watch(unschedulable: Unschedulable | None, timeout_s: float | None) -> list[Any]:
    return [] if unschedulable is None or timeout_s is None else [_ScheduleWatch.make(unschedulable, timeout_s)]


def run_trials(
    *,
    location: ExperimentLocation,
    stage: str,
    trials: list[Trial],
    resources: dict[str, float],
    retries: int,
    max_concurrent: int,
    is_done: Callable[[], set[str]],
    asha: dict[str, Any] | None = None,
    on_event: OnEvent | None = None,
    unschedulable: Unschedulable | None = None,
    schedule_timeout: float | None = None,
) -> StageOutcome:
    """Runs (or resumes) one stage's trials as one Ray Tune experiment and reports what got done.

    The Tune experiment's name derives from the stage and its whole trial set, so running the same
    command again finds it (``Tuner.can_restore``) and resumes it with errored trials resumed from their
    checkpoints; trials already finished per ``is_done()`` (our own records) are not started at all.

    Args:
        location: where the experiment's files live.
        trials: every trial of the stage (finished ones included: they keep the Tune name stable); a DDP
            retrain's ``Trial.ddp`` says how it runs.
        resources: per trial, e.g. ``{"cpu": 1, "gpu": 0}``.
        retries: how many times a failing trial restarts from its checkpoint.
        max_concurrent: at most this many trials at once.
        is_done: the trial ids our results store says are done for good.
        asha: ASHA early stopping (``metric``, ``mode``, ``grace_period``, ``reduction_factor``), or None.
        on_event: ``on_event(kind, trial, result)`` in the driver for each trial's ``started``, ``epoch``
            (``result``: the reported metrics), ``finished`` and ``errored`` (each failed attempt:
            ``result["error"]`` its cause in one line, ``result["retrying"]`` whether Tune retries it). A failed
            attempt is also recorded in the results store (``trial_lifecycle.record_failed_attempt``).
        unschedulable, schedule_timeout: ``unschedulable(alive nodes' resources)`` says why one trial does
            not fit them (None: it does); once it has said so for ``schedule_timeout`` seconds, the stage
            fails (:class:`_ScheduleWatch`). None: wait for nodes with room forever.

    Raises:
        UnschedulableError: see ``schedule_timeout``.
    """
    from ray import tune

    configure_environment()
    by_id = {t.trial_id: t for t in trials}
    todo = [t.trial_id for t in trials if t.trial_id not in is_done()]
    if not todo:
        return StageOutcome(done=set(by_id), errored={}, pending=set(), interrupted=False)

    name = _tune_name(stage, list(by_id))
    storage_path = location.tune
    trainable = tune.with_resources(
        tune.with_parameters(_trial_trainable, trials=by_id, location=location, kind=STAGE_KINDS.get(trials[0].kind)),
        {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0),
         "memory": resources.get("memory", 0)},  # bytes Ray reserves per trial (0: none)
    )  # fmt: skip
    trial_of = lambda config: by_id.get(config.get("trial_id", ""))  # noqa: E731
    epochs = max(t.epochs or 1 for t in trials)

    def make_tuner() -> Any:
        remaining = [t for t in todo if t not in is_done()]  # a fresh start after a dropped Tune state
        return tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(remaining or todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                        scheduler=_asha(asha, epochs)),  # fmt: skip
            run_config=_run_config(name, storage_path, retries,
                                   _Progress.make(name),
                                   *_watch(unschedulable, schedule_timeout)),
        )  # fmt: skip

    def unrecorded(grid: Any) -> list[str]:
        """Trials to run that a restored run left neither done nor errored: Tune ended them without our row
        (a row lost since), or its state does not hold them at all (a fresh run after a dropped state held
        only the trials left then). With ASHA, a trial that ended without a row was stopped early: it is
        recorded from its epochs instead."""
        if asha:
            return []
        done = is_done()
        errored = _errors(grid, done, trial_of)
        return sorted(t for t in todo if t not in done and t not in errored)

    _listen(name, trial_of, on_event, _recorder(location))
    grid, repaired = _fit(f"{storage_path}/{name}", make_tuner, trainable, unrecorded)
    done = is_done()
    errored = _errors(grid, done, trial_of)
    stopped = _ended_without_record(grid, done, trial_of) if asha else {}
    pending = {t for t in by_id if t not in done and t not in errored and t not in stopped}
    return StageOutcome(done=done & set(by_id), errored=errored, pending=pending, interrupted=bool(pending),
                        stopped_early=stopped, repaired=repaired)  # fmt: skip


def run_optuna_trials(
    *,
    location: ExperimentLocation,
    stage: str,
    optuna_plan: Any,
    resources: dict[str, float],
    retries: int,
    max_concurrent: int,
    stage_done_count: Callable[[], int],
    asha: dict[str, Any] | None = None,
    on_event: OnEvent | None = None,
    unschedulable: Unschedulable | None = None,
    schedule_timeout: float | None = None,
) -> StageOutcome:
    """An Optuna search (``OptunaSearch``) over a grid stage's HyperCuboid grid, resumable like any stage.

    Each suggestion becomes a planned trial with a deterministic id (the same path twice is trained
    once). The stage is complete when ``optuna_plan.trials`` suggestions have a recorded outcome.
    ``unschedulable`` and ``schedule_timeout`` as for :func:`run_trials`.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    configure_environment()
    if stage_done_count() >= optuna_plan.trials:
        return StageOutcome(done=set(), errored={}, pending=set(), interrupted=False)
    metric = (asha or {}).get("metric", "valid_top1")
    mode = (asha or {}).get("mode", "max")
    search = {"stage": stage, "space": optuna_plan.space(), "trials": optuna_plan.trials, "seed": optuna_plan.seed,
              "config": config_to_dict(optuna_plan.base_config)}  # fmt: skip
    name = f"{stage}-optuna-{digest(search, 10, compact=False)}"
    storage_path = location.tune
    trainable = tune.with_resources(
        tune.with_parameters(_optuna_trainable, optuna_plan=optuna_plan, location=location),
        {"cpu": resources.get("cpu", 1), "gpu": resources.get("gpu", 0),
         "memory": resources.get("memory", 0)},  # bytes Ray reserves per trial (0: none)
    )  # fmt: skip
    keys = set(optuna_plan.space())

    def trial_of(config: dict[str, Any]) -> Trial | None:
        if not keys <= set(config):
            return None
        return optuna_plan.trial({k: config[k] for k in keys})

    def make_tuner() -> Any:
        return tune.Tuner(
            trainable,
            param_space={k: tune.choice(v) for k, v in optuna_plan.space().items()},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric=metric, mode=mode, seed=optuna_plan.seed),
                num_samples=optuna_plan.trials, max_concurrent_trials=max_concurrent,
                scheduler=_asha(asha, optuna_plan.base_config.epochs),
            ),
            run_config=_run_config(name, storage_path, retries,
                                   _Progress.make(name),
                                   *_watch(unschedulable, schedule_timeout)),
        )  # fmt: skip

    _listen(name, trial_of, on_event, _recorder(location))
    grid, repaired = _fit(f"{storage_path}/{name}", make_tuner, trainable)
    ids = {p.trial_id for p in (trial_of(r.config or {}) for r in grid) if p is not None}
    errored = _errors(grid, set(), trial_of)
    stopped = _ended_without_record(grid, set(), trial_of)
    return StageOutcome(done=ids, errored=errored, pending=set(), interrupted=False, stopped_early=stopped,
                        repaired=repaired)  # fmt: skip
