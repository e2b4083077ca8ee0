"""Distributed (DDP) retraining on Ray Train V2, driven from inside a Tune trial or any Ray driver.

The workers run the same loop as single-process retraining (:func:`trainers.retrain.run_retrain`); only
its :class:`~trainers.engine.Hooks` change:

- ``wrap_model``: batch norm becomes synchronized (:func:`trainers.distributed.convert_sync_batchnorm`), then
  ``ray.train.torch.prepare_model`` wraps the model in DDP. The loop keeps saving the unwrapped model.
- ``wrap_loader``: :func:`trainers.distributed.shard_loader` gives each worker its slice of every *global* batch of the loader
  the loop built. The global batches are exactly the single-process ones (same ``(seed, epoch)`` order, same
  generator draws), so with synchronized batch norm a DDP step is the single-process step of that batch
  (drop path aside: each rank draws the masks of its own slice from its own torch RNG).
  ``ray.train.torch.prepare_data_loader`` is not used: its ``DistributedSampler`` shuffles with its own
  seed and gives every worker the *whole* batch size (the global batch would grow with the workers), and
  it pads the evaluation splits with repeated images.
- ``all_reduce_sum``: ``torch.distributed.all_reduce``; ``is_writer``: rank 0.
- ``report``: every rank calls ``ray.train.report`` (a barrier); rank 0 attaches the epoch checkpoint,
  ``best.pt`` and every rank's own states (see Resume). Rank 0 also sends each epoch's metrics to the driver
  over a Ray queue, so the caller's ``report`` runs in the driver, once per epoch, while training goes on.

Resume: Ray Train keeps the checkpoints under ``<storage_path>/<run_name>``. Every start of the worker
group (a fresh ``fit`` with the same run name, or a restart after a lost worker) copies the latest one into
an empty per-worker folder, and ``run_retrain``'s own resume logic continues from it, on every rank from
the same epoch. A run whose final checkpoint is already in the caller's ``workdir`` is not started again.

Resume is exact: a resumed run reports the metrics of the uninterrupted one. The epoch file is rank 0's, but
each rank's RNG streams (and, without synchronized batch norm, its running statistics) are its own: the
ranks draw drop-path masks for slices of different sizes once the last global batch splits unevenly. So
every epoch's checkpoint also holds :data:`RANK_STATES_FILE`, every rank's
:func:`~trainers.distributed.capture_rank_state` gathered by rank 0, and on resume each rank rewrites its
private copy of the epoch file with its own (:func:`~trainers.distributed.adopt_rank_state`). A run resumed
with another number of workers keeps rank 0's states on every rank (it cannot be exact: the slices differ).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainers.checkpoints import copy_run_files, stage_run_files
from trainers.distributed import (
    DDPConfigError,
    adopt_rank_state,
    capture_rank_state,
    collective_device,
    convert_sync_batchnorm,
    per_worker_batch_size,
    shard_loader,
)
from trainers.summary import RetrainSummary

from ..digests import digest

__all__ = [
    "RANK_STATES_FILE",
    "WORKER_FAULT_ENV",
    "DRIVER_CPU_SLIVER",
    "ddp_trial_resources",
    "ddp_run_name",
    "run_ddp_retrain",
]

# Test instrumentation: JSON {"rank": R, "epoch": E, "step": S, "marker": FILE}. Worker R SIGKILLs itself
# once, after step S of epoch E (the marker file records that it did): a worker lost mid-epoch. Read in the
# driver and handed to the workers, so it works whatever environment Ray started its workers with.
WORKER_FAULT_ENV = "NAS_SERVICE_INJECT_WORKER_FAULT"


# In every Ray Train checkpoint beside the epoch file: {"epoch", "world_size", "ranks": [capture_rank_state
# of rank 0, rank 1, ...]}, weights-only safe.
RANK_STATES_FILE = "rank_states.pt"

# The CPU share of the process that drives a DDP run (a Tune trial waiting on its workers).
DRIVER_CPU_SLIVER = 0.01
_RESOURCE_QUANTUM = 1e-4  # Ray keeps resource amounts to four decimals


def ddp_trial_resources(workers: int, per_worker: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """What the driver and each worker of one DDP trial ask Ray for.

    The driver takes :data:`DRIVER_CPU_SLIVER` of a CPU and its workers the rest of what the user asked
    for, so the trial as a whole holds exactly ``workers * per_worker`` (2 workers of 1 CPU fit a 2-CPU
    machine; with a sliver on top they would wait forever for 2.01 CPUs). Worker amounts are rounded down
    to Ray's four decimals. The workers still run as many threads as the CPUs the user asked for
    (``torch.set_num_threads`` in the worker loop), not the floor of their share.

    Args:
        workers: DDP workers (>= 1).
        per_worker: ``{"CPU": c, "GPU": g, ...}`` as the user asked for each worker.

    Returns:
        ``(driver, worker)``: the driver's Tune resources (``{"cpu": ..}``) and each worker's
        ``ScalingConfig.resources_per_worker``.
    """
    if workers < 1:
        raise DDPConfigError(f"workers: must be >= 1, got {workers}")
    worker = {k: float(v) for k, v in per_worker.items() if v}
    cpu = worker.get("CPU", 0.0)
    if cpu > DRIVER_CPU_SLIVER / workers:
        share = cpu - DRIVER_CPU_SLIVER / workers
        worker["CPU"] = int(share / _RESOURCE_QUANTUM + 1e-9) * _RESOURCE_QUANTUM
    return {"cpu": DRIVER_CPU_SLIVER}, worker


def _restore_train_checkpoint(workdir: Path, *, rank: int, world: int) -> tuple[int, str | None]:
    """Copies Ray Train's latest checkpoint into the (empty) worker folder, with this rank's own RNG states
    and buffers (see the module's docstring).

    Returns:
        ``(epoch, why_not_exact)``: the checkpoint's epoch (0: none) and, when this rank could not get its
        own states back, why (else None).
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as folder:
        epoch = copy_run_files(folder, workdir)
        states_file = Path(folder) / RANK_STATES_FILE
        if not epoch:
            return 0, None
        if not states_file.exists():  # written before the per-rank states existed
            return epoch, f"the checkpoint of epoch {epoch} holds rank 0's RNG states only"
        saved = torch.load(states_file, map_location="cpu", weights_only=True)
    if saved["epoch"] != epoch:
        return epoch, f"{RANK_STATES_FILE} is of epoch {saved['epoch']}, the checkpoint of epoch {epoch}"
    if saved["world_size"] != world:
        return epoch, f"it resumes with {world} workers, its checkpoint was written by {saved['world_size']}"
    adopt_rank_state(workdir / "checkpoints" / f"epoch_{epoch:04d}.pt", saved["ranks"][rank])
    return epoch, None


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _quiet_report_lines() -> None:
    """Drops Ray Train's per-report INFO line on every worker (our epoch lines already say it once).

    Ray 2.60 logs it under the logger named by the module's *file path*, which neither
    ``LoggingConfig(log_level)`` nor the ``ray.train`` logger's level reaches.
    """
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: the lines stay, nothing breaks
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _train_loop_per_worker(loop_config: dict[str, Any]) -> RetrainSummary | dict[str, Any] | None:
    """One DDP worker: ``run_retrain`` with DDP hooks; rank 0 returns the summary."""
    import ray
    import ray.train
    import ray.train.torch

    from trainers.engine import DivergedError, Hooks
    from trainers.retrain import run_retrain

    _quiet_report_lines()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = loop_config["config"]
    device = ray.train.torch.get_device()
    queue = loop_config["queue"]
    step_log = Path(loop_config["step_loss_log"]) if loop_config.get("step_loss_log") else None
    fault = loop_config.get("fault")
    reduce_device = collective_device(device)
    # A fresh folder per start: a file rank 0 wrote after Ray's last checkpoint (killed between writing and
    # reporting) must not make it resume from a later epoch than the other ranks.
    workdir = Path(tempfile.mkdtemp(prefix=f"nas-ddp-r{rank}-"))
    if loop_config.get("threads"):
        # Ray sets OMP_NUM_THREADS to the floor of the worker's CPU share, one short when the driver's
        # sliver came off it (see ddp_trial_resources).
        torch.set_num_threads(int(loop_config["threads"]))
    try:
        start, not_exact = _restore_train_checkpoint(workdir, rank=rank, world=world)
        if rank == 0:
            queue.put({"start": start, "node": ray.get_runtime_context().get_node_id()})
            if not_exact:
                queue.put({"log": f"[ddp] resuming from epoch {start} without every rank's own RNG states: "
                                  f"{not_exact}; the run continues, not bit-exact"})  # fmt: skip
        unwrapped: list[nn.Module] = []  # the model the loop checkpoints (set by wrap_model)

        def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
            reduced = tensor.to(reduce_device)
            dist.all_reduce(reduced)
            return reduced.to(tensor.device)

        def wrap_model(model: nn.Module) -> nn.Module:
            unwrapped.append(model)
            if loop_config["sync_batchnorm"]:
                model = convert_sync_batchnorm(model, device=device)
            unused = bool(config.auxiliary) and config.aux_weight == 0  # the aux head would get no gradient
            return ray.train.torch.prepare_model(
                model, parallel_strategy_kwargs={"find_unused_parameters": unused})  # fmt: skip

        def gather_rank_states() -> list[dict[str, Any]] | None:
            # Called right after rank 0 wrote the epoch checkpoint and captured its RNG: nothing drew since.
            state = capture_rank_state(unwrapped[-1])
            states: list[Any] | None = [None] * world if rank == 0 else None
            # NCCL moves the pickled objects through the current CUDA device: make it this worker's.
            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                dist.gather_object(state, states, dst=0)
            return states

        def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
            scalars = _scalar_metrics(metrics)
            states = gather_rank_states()  # every rank writes one each epoch (run_epochs: rank 0 always)
            if rank == 0 and checkpoint is not None:
                with tempfile.TemporaryDirectory(prefix="nas-ddp-ckpt-") as staging:
                    stage_run_files(checkpoint, workdir, staging)
                    torch.save({"epoch": int(metrics["epoch"]), "world_size": world, "ranks": states},
                               Path(staging) / RANK_STATES_FILE)  # fmt: skip
                    ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(staging))
            else:
                ray.train.report(scalars, checkpoint=None)  # a barrier: every rank calls it
            if rank == 0:
                # Ray Train registers a reported checkpoint asynchronously: a worker lost right after the
                # report could restart the group from the one before. Waiting for the commit makes every
                # epoch the driver hears resumable, so a restart never trains (or reports) an epoch twice.
                ray.train.get_all_reported_checkpoints(
                    consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)  # fmt: skip
                queue.put({"epoch": int(metrics["epoch"]), "metrics": metrics})

        def step_end(epoch: int, step: int, loss: float, n: int) -> None:
            if step_log is not None:  # the loss of the whole global batch, as one process would see it
                total = all_reduce_sum(torch.tensor([loss * n, float(n)], dtype=torch.float64))
                if rank == 0:
                    line = {"epoch": epoch, "step": step, "loss": float(total[0] / total[1])}
                    with step_log.open("a") as out:
                        out.write(json.dumps(line) + "\n")
            if fault and fault["rank"] == rank and fault["epoch"] == epoch and fault["step"] == step:
                marker = Path(fault["marker"])
                if not marker.exists():
                    marker.write_text(f"worker {rank} killed after epoch {epoch} step {step}\n")
                    os.kill(os.getpid(), signal.SIGKILL)

        hooks = Hooks(
            report=report,
            wrap_model=wrap_model,
            wrap_loader=lambda loader: shard_loader(loader, rank=rank, world_size=world),
            all_reduce_sum=all_reduce_sum,
            is_writer=rank == 0,
            log=(lambda line: queue.put({"log": line})) if rank == 0 else (lambda line: None),
            step_end=step_end,
        )
        try:
            summary = run_retrain(config, workdir=workdir, device=device, hooks=hooks)
        except DivergedError as err:
            # Every rank raises at the same step (the engine agrees on it across workers). Ending the run
            # normally keeps Ray Train from restarting a deterministic failure; the driver raises it.
            diverged = {"epoch": err.epoch, "step": err.step, "loss": err.loss, "where": err.where}
            return {"diverged": diverged} if rank == 0 else None
        return summary if rank == 0 else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# The driver


def ddp_run_name(trial_id: str, config: Any) -> str:
    """A deterministic Ray Train run name: the same trial and config always continue the same run."""
    from trainers.config import config_to_dict
    from trainers.identity import without_later_defaults

    return f"ddp-{trial_id}-{digest(without_later_defaults(config_to_dict(config)), 10, compact=False)}"


def _finished_summary(config: Any, workdir: Path) -> RetrainSummary | None:
    """The summary of a run whose final epoch checkpoint is already in ``workdir`` (else None)."""
    from search_spaces.networks import count_parameters
    from trainers.checkpoints import latest_intact_checkpoint, load_checkpoint
    from trainers.config import config_to_dict
    from trainers.identity import same_computation
    from trainers.retrain import build_model, summarize_retrain

    latest = latest_intact_checkpoint(workdir / "checkpoints")
    if latest is None:
        return None
    state = load_checkpoint(latest)
    if not same_computation(state["config"], config_to_dict(config)) or int(state["epoch"]) != config.epochs:
        return None
    return summarize_retrain(json.loads(state["history"]), config, state["spec"],
                             count_parameters(build_model(state["spec"])))  # fmt: skip


def run_ddp_retrain(
    config: Any,
    *,
    workdir: str | Path,
    workers: int,
    run_name: str,
    storage_path: str,
    resources_per_worker: dict[str, float] | None = None,
    retries: int = 1,
    sync_batchnorm: bool = True,
    report: Callable[[dict[str, Any], Path | None], None] | None = None,
    log: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    threads: int | None = None,
    step_loss_log: str | Path | None = None,
) -> RetrainSummary:
    """Retrains ``config`` (a ``RetrainConfig``) with DDP over ``workers`` Ray Train workers.

    Call it where Ray is initialized (a Tune trial, or a driver after ``ray.init``). One worker runs
    :func:`trainers.retrain.run_retrain` in this process (no Ray Train start-up, ~35 s on 2 cores).

    Args:
        config: the retraining config; ``config.data.batch_size`` is the global batch, split evenly.
        workdir: the trial's folder; gets ``checkpoints/epoch_XXXX.pt`` (final epoch) and ``best.pt`` as a
            single-process run leaves them. A final checkpoint already there means the run is done: its
            summary is returned without starting Ray Train.
        workers: DDP workers (``ScalingConfig.num_workers``).
        run_name, storage_path: Ray Train's ``RunConfig(name, storage_path)``; the same pair continues the
            same run from its last checkpoint. ``storage_path`` is absolute or a URI every node reaches.
        resources_per_worker: e.g. ``{"CPU": 1}`` or ``{"CPU": 4, "GPU": 1}``; a GPU selects NCCL, else gloo.
        retries: restarts of the worker group from the last checkpoint after a lost worker
            (``FailureConfig(max_failures)``).
        sync_batchnorm: synchronize batch norm statistics across workers (the single-process statistics
            of the global batch).
        report: called in this process once per finished epoch, in order, as ``report(metrics, None)``
            (Ray Train keeps the checkpoints).
        log: progress lines from rank 0.
        on_start: called in this process with the epoch each start of the worker group resumes from
            (0: from scratch), before that start reports any epoch.
        threads: torch threads per worker (default: what Ray's CPU share gives, at least 1).
        step_loss_log: a JSON-lines file where rank 0 appends the global batch's loss of every step
            (``{"epoch", "step", "loss"}``); costs one extra all-reduce per step.

    Returns:
        ``run_retrain``'s summary with ``ddp`` set: workers, run name, ``starts`` (the epoch each start
        of the worker group resumed from, e.g. ``[0, 2]`` after a worker was lost in epoch 3) and
        ``nodes`` (the Ray node rank 0 ran on, per start).

    Raises:
        DDPConfigError: the global batch does not split evenly over ``workers``.
        ray.train.TrainingFailedError: the workers failed more than ``retries`` times.
        trainers.engine.DivergedError: the loss became NaN or infinite (on any worker; not retried).
    """
    from trainers.engine import Hooks
    from trainers.retrain import run_retrain

    per_worker_batch_size(config.data.batch_size, workers)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = report or (lambda metrics, checkpoint: None)
    log = log or (lambda line: None)
    on_start = on_start or (lambda epoch: None)
    resources = dict(resources_per_worker or {"CPU": 1})
    ddp_info: dict[str, Any] = {"workers": workers, "run_name": run_name, "storage_path": storage_path}
    finished = _finished_summary(config, workdir)
    if finished is not None:
        return dataclasses.replace(finished, ddp={**ddp_info, "starts": [], "nodes": []})
    if workers == 1:
        summary = run_retrain(config, workdir=workdir, hooks=Hooks(report=report, log=log))
        return dataclasses.replace(summary, ddp={**ddp_info, "starts": [], "nodes": []})

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    use_gpu = float(resources.get("GPU", 0)) > 0
    fault_raw = os.environ.get(WORKER_FAULT_ENV)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "config": config, "queue": queue, "sync_batchnorm": sync_batchnorm,
            "step_loss_log": str(step_loss_log) if step_loss_log else None,
            "fault": json.loads(fault_raw) if fault_raw else None, "threads": threads,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run_name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=retries),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       # Its INFO lines (each report, each checkpoint) repeat our epoch lines.
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )  # fmt: skip

    # fit() blocks; it runs in a thread so that this thread (the Tune trial's, where tune.report works)
    # hands each epoch to `report` as rank 0 finishes it.
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised below, in the caller's thread
            outcome["error"] = err

    started = time.perf_counter()
    thread = threading.Thread(target=fit, name=f"ddp-fit-{run_name}", daemon=True)
    thread.start()
    starts: list[int] = []
    nodes: list[str] = []
    reported: set[int] = set()

    def handle(message: dict[str, Any]) -> None:
        if "start" in message:
            starts.append(int(message["start"]))
            nodes.append(str(message.get("node")))
            on_start(int(message["start"]))
        elif "log" in message:
            log(message["log"])
        elif message["epoch"] not in reported:
            reported.add(message["epoch"])
            report(message["metrics"], None)

    try:
        while thread.is_alive():
            try:
                handle(queue.get(timeout=0.5))
            except Empty:
                pass
        thread.join()
        for message in queue.get_nowait_batch(queue.qsize()):
            handle(message)
    finally:
        queue.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if isinstance(result.return_value, dict) and "diverged" in result.return_value:
        from trainers.engine import DivergedError

        raise DivergedError(**result.return_value["diverged"])
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:  # laid out as a single-process run's
            copy_run_files(folder, workdir)
    summary = result.return_value or _finished_summary(config, workdir)
    if summary is None:
        raise RuntimeError(f"Ray Train run {run_name!r} ended without a summary or a final checkpoint")
    # Epochs Ray finished but whose message was lost with a killed rank 0: hand them over now, in order.
    first = starts[0] if starts else 0
    for metrics in summary.history:
        if metrics["epoch"] > first and metrics["epoch"] not in reported:
            reported.add(metrics["epoch"])
            report(metrics, None)
    ddp_info.update(starts=starts, nodes=nodes, fit_seconds=time.perf_counter() - started)
    return dataclasses.replace(summary, ddp=ddp_info)
