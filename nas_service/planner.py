"""The planner: a validated spec -> stages of trials, each with a deterministic id, an arm and a lineage.

Each stage kind expands its own stages (its registry entry's ``plan``; the shared expansions are in
:mod:`nas_service.stage_kinds.common`). What a trial is, how its id and arm are derived and what an
upstream result carries is :mod:`nas_service.trials`. Stages that take ``from:`` an earlier stage expand
only once every trial of that stage has a result; until then they are ``waiting`` with no trials (``plan``
is cheap: call it again after each stage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .spec_models import Resources
from .stage_kinds import STAGE_KINDS
from .trials import (  # noqa: F401  (re-exported: the planner's values)
    Arm,
    Lineage,
    OptunaPlan,
    Plan,
    PlanError,
    StagePlan,
    Trial,
    Upstream,
    UpstreamResult,
    execution_identity,
    trial_id_for,
)

if TYPE_CHECKING:
    from .spec import ExperimentSpec

__all__ = [
    "PlanError", "Arm", "Lineage", "Trial", "UpstreamResult", "OptunaPlan", "StagePlan", "Plan", "plan",
    "trial_id_for", "max_concurrent_trials", "describe_plan", "UnschedulableError", "fits_on_nodes",
    "unschedulable_reason",
]  # fmt: skip


class UnschedulableError(ValueError):
    """A trial asks for more than the cluster has: at once on a cluster that cannot grow (a local Ray
    instance), or after ``schedule_timeout`` seconds on one that did not grow (a real cluster)."""


def plan(spec: ExperimentSpec, *, upstream: Upstream | None = None) -> Plan:
    """Expands ``spec`` into stages and trials.

    Args:
        spec: a validated spec (:func:`nas_service.spec.load_spec`).
        upstream: ``upstream(stage_name)`` returns the results of that stage's finished trials (from the
            results store). None: no stage has results yet, so every ``from:`` stage is waiting.

    Returns:
        The :class:`Plan`; deterministic for the same spec and upstream results.

    Raises:
        PlanError: an upstream result cannot be trained by the consuming stage.
    """
    stage_plans: dict[str, StagePlan] = {}
    for stage in spec.stages:
        stage_plans[stage.name] = STAGE_KINDS.get(stage.kind).plan(spec, stage, stage_plans, upstream)
    return Plan(spec.name, spec.storage, spec.resources, spec.retries, tuple(stage_plans.values()))


# ---------------------------------------------------------------------------------------------------------
# Concurrency and display


def max_concurrent_trials(resources_per_trial: Resources | Mapping[str, float], cluster_cpus: float,
                          cluster_gpus: float, cluster_memory: float | None = None) -> int:  # fmt: skip
    """How many trials may run at once: never more than the CPUs, the GPUs or (when both the trial's reservation
    and the cluster's memory are known) the memory can hold, at least 1.

    Args:
        resources_per_trial: a :class:`~nas_service.spec.Resources` or ``{"cpu": c, "gpu": g, "memory": bytes}``.
        cluster_cpus, cluster_gpus: what the cluster (or the local machine) has.
        cluster_memory: the bytes Ray may reserve for tasks (``ray.cluster_resources()["memory"]``); None: unknown.

    Raises:
        ValueError: a trial holds neither CPU nor GPU, or a count is negative.
    """
    if isinstance(resources_per_trial, Mapping):
        cpu, gpu = float(resources_per_trial.get("cpu", 1.0)), float(resources_per_trial.get("gpu", 0.0))
        memory = resources_per_trial.get("memory")
    else:
        cpu, gpu, memory = resources_per_trial.cpu, resources_per_trial.gpu, resources_per_trial.memory
    if min(cpu, gpu, cluster_cpus, cluster_gpus) < 0:
        raise ValueError(f"resources must be >= 0, got per trial cpu={cpu}, gpu={gpu}; "
                         f"cluster cpus={cluster_cpus}, gpus={cluster_gpus}")  # fmt: skip
    if cpu == 0 and gpu == 0:
        raise ValueError("a trial must hold some CPU or GPU (else concurrency is unbounded): cpu=0, gpu=0")
    # The small epsilon keeps 1.0 / 0.1 from flooring to 9 (it is 9.999... in floating point).
    pairs = [(cluster_cpus, cpu), (cluster_gpus, gpu)]
    if memory and cluster_memory is not None:  # Ray leaves the rest PENDING; the stated concurrency says so
        pairs.append((float(cluster_memory), float(memory)))
    limits = [math.floor(have / need + 1e-9) for have, need in pairs if need > 0]
    return max(1, min(limits))


def fits_on_nodes(bundles: Sequence[Mapping[str, float]], nodes: Sequence[Mapping[str, float]]) -> bool:
    """Whether one trial's resource bundles can all be placed at once on ``nodes`` (their total resources).

    A plain trial is one bundle that must fit one node; a DDP trial is its driver's bundle plus one per worker,
    which Ray Train may spread over nodes. First fit, largest bundle first (exact for the identical worker
    bundles a DDP trial has).

    Args:
        bundles: ``[{"CPU": c, "GPU": g}, ...]`` as Ray takes them (zero amounts ask for nothing).
        nodes: each alive node's total resources, ``[{"CPU": 4.0, "GPU": 1.0, ...}, ...]``.
    """
    free = [dict(node) for node in nodes]
    for bundle in sorted(bundles, key=lambda b: tuple(-float(b.get(k, 0.0)) for k in ("GPU", "CPU"))):
        asked = {k: float(v) for k, v in bundle.items() if v}
        for node in free:
            if all(node.get(k, 0.0) + 1e-9 >= v for k, v in asked.items()):
                for k, v in asked.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            return False
    return True


def unschedulable_reason(stage: str, bundles: Sequence[Mapping[str, float]],
                         nodes: Sequence[Mapping[str, float]]) -> str | None:  # fmt: skip
    """None when one trial of ``stage`` fits ``nodes`` (:func:`fits_on_nodes`); else what it asks for and
    what the cluster has, in one line."""
    if fits_on_nodes(bundles, nodes):
        return None

    def amounts(r: Mapping[str, float]) -> str:  # 2 decimals: a DDP worker's 0.995 CPU is the 1 CPU asked for
        return f"{round(float(r.get('CPU', 0)), 2):g} CPU, {round(float(r.get('GPU', 0)), 2):g} GPU"

    if len(bundles) == 1:
        asked = f"one trial needs {amounts(bundles[0])} on one node"
    else:  # a DDP trial: its driver's sliver, then identical worker bundles
        worker = bundles[-1]
        asked = f"one trial needs {len(bundles) - 1} DDP workers of {amounts(worker)} each (and its driver)"
    have = "; ".join(amounts(n) for n in nodes) or "nothing"
    return f"stage {stage!r}: {asked}, the cluster's {len(nodes)} alive node(s) have {have}"


def describe_plan(plan: Plan, done_ids: set[str] | frozenset[str] = frozenset()) -> str:
    """A table of every trial: stage, trial id, arm id, arm label, seed and state (done / pending / waiting).

    Waiting stages get one row saying what they wait on and how many trials they expect; an Optuna stage
    gets one row for its run-time trials. A summary line ends the table.
    """
    header = ("STAGE", "TRIAL", "ARM", "LABEL", "SEED", "STATE")
    rows: list[tuple[str, ...]] = []
    counts = {"done": 0, "pending": 0}
    for s in plan.stages:
        if s.state == "waiting":
            expected = "?" if s.expected_trials is None else str(s.expected_trials)
            rows.append((s.name, "-", "-", f"({expected} trials)", "-", f"waiting on {s.waiting_on}"))
            continue
        if s.state == "search":
            assert s.optuna is not None
            label = f"optuna: {s.optuna.trials} trials over the grid"
            rows.append((s.name, "-", "-", label, str(s.optuna.base_config.seed), "search at run time"))
            continue
        for t in s.trials:
            state = "done" if t.trial_id in done_ids else "pending"
            counts[state] += 1
            rows.append((s.name, t.trial_id, t.arm.arm_id, t.arm.label, str(t.seed), state))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    waiting = [s.name for s in plan.stages if s.state == "waiting"]
    known = counts["done"] + counts["pending"]
    summary = f"{plan.name}: {known} trials known, {counts['done']} done, {counts['pending']} pending"
    if waiting:
        summary += f"; waiting: {', '.join(waiting)}"
    return "\n".join([*lines, summary])

