"""The planner: a validated spec -> stages of trials, each with a deterministic id, an arm and a lineage.

A trial is one training run: the stage's recipe with the spec's data defaults, the stage's overrides, one
point of the stage's sweep grid, one seed and (for ``retrain``/``grid``) one architecture. Its id is the
first 12 hex digits of the SHA-256 of the canonical JSON (sorted keys, compact) of
``{"stage", "kind", "config"}``, so the same trial gets the same id in every process and every run, and
editing a spec keeps the ids of the trials it did not change (added seeds or sweep values add trials).
Two refinements, both so that an id names the computation and nothing else:

* Fields that only say where files are, how they are read or how memory is spent (``data.root``,
  ``data.download``, ``data.num_workers``, ``activation_checkpointing``, an evaluation's ``root``) are left
  out of the hash: moving the data to another disk or cluster, or trading memory for time, does not turn
  finished trials into new ones.
* A trial whose architecture came from an upstream trial also hashes that trial's id (``lineage``): two
  searches that happen to choose the same genotype still give two retrain trials, one per search, so
  every retrain has exactly one producing search and the report can charge that search's cost to it.

An *arm* is a stage's configuration without the seed; trials of one arm differ only by seed and are the
samples a report averages. Where the architecture came from an upstream trial, the arm also leaves out
the architecture (it depends on the upstream seed) and names the upstream trial's arm instead, so the
retrains of every seed of ``weighting=max_w`` form one arm, ``from search: weighting=max_w``.

Stages that take ``from:`` an earlier stage expand only once every trial of that stage has a result;
until then they are ``waiting`` with no trials (``plan`` is cheap: call it again after each stage).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from search_spaces.genotypes import Genotype
from search_spaces.hypercuboid import random_path
from search_spaces.paths import HYPERCUBOID_OPS, HyperCuboidPath, PathStage
from trainers.config import (
    ConfigError,
    config_to_dict,
    with_overrides,
    without_result_neutral_fields,
)

from .spec import (
    AshaSpec,
    ExperimentSpec,
    InlineGenotype,
    InlinePath,
    RandomPaths,
    Resources,
    nest_dotted,
    stage_base_config,
    sweep_points,
)

__all__ = [
    "PlanError",
    "Arm",
    "Lineage",
    "Trial",
    "UpstreamResult",
    "OptunaPlan",
    "StagePlan",
    "Plan",
    "plan",
    "trial_id_for",
    "max_concurrent_trials",
    "describe_plan",
]

ID_LENGTH = 12
ARM_ID_LENGTH = 10
# Left out of trial ids besides the training configs' RESULT_NEUTRAL_FIELDS: an evaluation's data root.
_EVALUATION_ROOT: tuple[tuple[str, ...], ...] = (("root",),)
# Architecture fields a retrain config carries; an upstream-derived arm leaves them out.
_ARCH_FIELDS = ("genotype", "path", "op_set")


class PlanError(ValueError):
    """A spec that validated but cannot be expanded (e.g. an upstream result that is not a valid
    architecture for this stage); the message names the stage, the trial and the rule."""


# ---------------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Arm:
    """A stage's configuration without the seed: ``arm_id`` (a short stable hash) and a readable label."""

    arm_id: str
    label: str


@dataclass(frozen=True)
class Lineage:
    """Where a trial's architecture came from.

    Args:
        parent: the producing trial's id (a search, a grid trial, the retrain an evaluation scores), or None.
        parent_stage: that trial's stage, or None.
        source: a label: ``recipe``, ``published:DARTS_V2``, ``inline:genotypes[0]``, ``random#1(seed=0)``,
            ``optuna``, or ``<stage>/<trial id>:<take>/<parse>`` for an upstream result.
    """

    parent: str | None = None
    parent_stage: str | None = None
    source: str = "recipe"


@dataclass(frozen=True)
class Trial:
    """One run of one stage.

    Args:
        stage, kind: the stage's name and kind.
        trial_id: deterministic: see the module docstring.
        config: the resolved trainers config as a JSON-able dict (``config_to_dict``); for ``evaluate``,
            ``{"kind": "evaluate", "source_stage", "source_trial", "checkpoint", "datasets", "root"}``.
        seed: the config's seed (for evaluate: the scored trial's seed).
        axes: the stage's sweep values of this trial (``{"weighting": "max_w"}``); the seed is not in it.
        arm: the trial's arm.
        lineage: where its architecture came from.
    """

    stage: str
    kind: str
    trial_id: str
    config: dict[str, Any]
    seed: int
    axes: dict[str, Any]
    arm: Arm
    lineage: Lineage = field(default_factory=Lineage)

    def __hash__(self) -> int:  # the config is a dict; the id already is its content hash
        return hash(self.trial_id)


@dataclass(frozen=True)
class UpstreamResult:
    """What a finished trial left for the stages that take ``from:`` its stage.

    Args:
        trial_id: the finished trial.
        seed: its seed.
        config: its resolved config (``Trial.config``).
        best, last: the architecture (a genotype or path mapping) at the best / last epoch; for a
            retrain or grid trial, its fixed architecture (``best == last``).
        best_no_hack, last_no_hack: cell searches: the same epochs parsed without the 'none' exclusion.
        score: the trial's selection score (higher is better; e.g. best search-validation accuracy), for
            ``from: {top: N}``.
        status: ``finished``; any other status (``diverged``, ``failed``) counts as done but gives the
            downstream stage nothing to train (the plan notes it).
    """

    trial_id: str
    seed: int
    config: Mapping[str, Any]
    best: Mapping[str, Any] | None = None
    last: Mapping[str, Any] | None = None
    best_no_hack: Mapping[str, Any] | None = None
    last_no_hack: Mapping[str, Any] | None = None
    score: float | None = None
    status: str = "finished"

    def architecture(
        self, take: Literal["best", "last"], parse: Literal["default", "no_hack"]
    ) -> Mapping[str, Any] | None:
        """The architecture ``from:`` asks for; None when the trial has none (diverged before any epoch)."""
        if parse == "no_hack":
            return self.best_no_hack if take == "best" else self.last_no_hack
        return self.best if take == "best" else self.last

    @classmethod
    def from_summary(
        cls, trial_id: str, summary: Mapping[str, Any], *, status: str = "finished"
    ) -> UpstreamResult:
        """From the summary dict of ``trainers.search.run_*_search`` or ``trainers.retrain.run_retrain``."""
        config = summary["config"]
        kind = summary["kind"]
        if kind == "cell_search":
            history = summary.get("history") or [{}]
            return cls(trial_id, config["seed"], config, best=summary["best_genotype"],
                       last=summary["last_genotype"], best_no_hack=summary.get("best_genotype_no_hack"),
                       last_no_hack=history[-1].get("genotype_no_hack"), score=summary.get("best_valid_acc"),
                       status=status)  # fmt: skip
        if kind == "hypercuboid_search":
            return cls(trial_id, config["seed"], config, best=summary["best_path"], last=summary["last_path"],
                       score=summary.get("best_valid_acc"), status=status)  # fmt: skip
        spec = summary.get("spec") or {}
        arch = spec.get("path") if spec.get("model") == "path" else spec.get("genotype")
        score = summary.get("best_valid_top1")
        if score is None:
            score = summary.get("test_top1_at_best")
        return cls(trial_id, config["seed"], config, best=arch, last=arch, score=score, status=status)


# ---------------------------------------------------------------------------------------------------------
# Hashing


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _digest(obj: Any, length: int) -> str:
    return hashlib.sha256(_canonical(obj).encode("utf-8")).hexdigest()[:length]


def _identity_config(config: Mapping[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """The config without result-neutral fields (and without the top-level fields in ``drop``)."""
    out = without_result_neutral_fields(config, extra=_EVALUATION_ROOT)
    for key in drop:
        out.pop(key, None)
    return out


def trial_id_for(stage: str, kind: str, config: Mapping[str, Any], parent: str | None = None,
                 execution: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The deterministic id of a trial (see the module docstring).

    ``execution``: how the trial runs, where that changes its results (see :func:`execution_identity`).
    """
    payload: dict[str, Any] = {"stage": stage, "kind": kind, "config": _identity_config(config)}
    if parent is not None:
        payload["lineage"] = parent
    if execution:
        payload["execution"] = dict(execution)
    return _digest(payload, ID_LENGTH)


def execution_identity(stage: Any) -> dict[str, Any]:
    """The part of how a stage's trials run that changes their results, hence their ids.

    DDP with synchronized batch norm trains as one process would, so the worker count is not part of a
    trial's identity (a trial may resume with other workers). Per-worker batch norm statistics depend on
    each worker's share of the batch: then the worker count is.
    """
    workers = getattr(stage, "workers", 1)
    if workers > 1 and not getattr(stage, "sync_batchnorm", True):
        return {"local_batchnorm_workers": workers}
    return {}


def _arm(stage: str, kind: str, config: Mapping[str, Any], label_parts: Sequence[str], *,
         from_arm: Arm | None = None, drop: Sequence[str] = ("seed",),
         execution: Mapping[str, Any] | None = None) -> Arm:  # fmt: skip
    payload: dict[str, Any] = {"stage": stage, "kind": kind, "config": _identity_config(config, drop)}
    if execution:
        payload["execution"] = dict(execution)
    if from_arm is not None:
        payload["from_arm"] = from_arm.arm_id
    label = ", ".join(p for p in label_parts if p) or "base"
    return Arm(_digest(payload, ARM_ID_LENGTH), label)


def _axis_label(axes: Mapping[str, Any]) -> list[str]:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else _canonical(v)

    return [f"{k}={show(v)}" for k, v in axes.items()]


# ---------------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class OptunaPlan:
    """An Optuna search over a grid stage's HyperCuboid grid, whose trials exist only at run time.

    The search space (:meth:`space`) is the stem width and, per stage ``t`` of the ``2 * layers`` stages,
    the output width ``c_out_t`` and the op ``op_t``; :meth:`trial` turns one suggestion into a
    :class:`Trial` with the same deterministic id rules as fixed trials.
    """

    stage: str
    trials: int
    seed: int
    channels: tuple[int, ...]
    layers: int
    head_channels: int
    base_config: dict[str, Any]  # the stage's retrain config (seed set), before the path

    def space(self) -> dict[str, list[Any]]:
        """Parameter name -> categorical choices."""
        out: dict[str, list[Any]] = {"stem": list(self.channels)}
        for t in range(2 * self.layers):
            out[f"c_out_{t}"] = list(self.channels)
            out[f"op_{t}"] = list(HYPERCUBOID_OPS)
        return out

    def path_for(self, params: Mapping[str, Any]) -> HyperCuboidPath:
        """The channel-consistent path of one suggestion (``params`` holds every key of :meth:`space`)."""
        missing = [k for k in self.space() if k not in params]
        if missing:
            raise PlanError(
                f"optuna stage {self.stage!r}: suggestion lacks parameters {missing}; got {dict(params)}"
            )
        stages, c_in = [], int(params["stem"])
        for t in range(2 * self.layers):
            c_out = int(params[f"c_out_{t}"])
            stages.append(PathStage(1 + t % 2, c_in, c_out, str(params[f"op_{t}"])))
            c_in = c_out
        return HyperCuboidPath(int(params["stem"]), tuple(stages), self.head_channels)

    def trial(self, params: Mapping[str, Any]) -> Trial:
        """The trial that trains the path ``params`` describe."""
        path = self.path_for(params)
        config = with_overrides_dict(self.base_config, {"genotype": None, "path": path.to_json()})
        return Trial(
            stage=self.stage, kind="grid", trial_id=trial_id_for(self.stage, "grid", config), config=config,
            seed=config["seed"], axes={}, arm=_arm(self.stage, "grid", config, ["path=optuna"]),
            lineage=Lineage(source="optuna"),
        )  # fmt: skip

    def owns(self, config: Mapping[str, Any]) -> bool:
        """Whether a finished trial's config belongs to this search (same base, any path)."""
        mine = _identity_config(self.base_config, ("genotype", "path"))
        return _identity_config(config, ("genotype", "path")) == mine


@dataclass(frozen=True)
class StagePlan:
    """One stage: its trials, or why it has none yet.

    Args:
        state: ``ready`` (its trials are known), ``waiting`` (on ``waiting_on``'s results), or ``search``
            (an Optuna stage: ``optuna.trials`` trials suggested at run time).
        expected_trials: the trial count, known before the upstream stage finishes where possible (None
            when it depends on a ``top:`` of an unknown count; an upper bound where duplicates may merge).
        notes: upstream trials that gave nothing to train, duplicates merged, ...
    """

    name: str
    kind: str
    state: Literal["ready", "waiting", "search"]
    trials: tuple[Trial, ...] = ()
    waiting_on: str | None = None
    depends_on: str | None = None
    expected_trials: int | None = None
    optuna: OptunaPlan | None = None
    asha: AshaSpec | None = None
    epochs: int | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A whole experiment, stage by stage."""

    name: str
    storage: str
    resources: Resources
    retries: int
    stages: tuple[StagePlan, ...]

    @property
    def trials(self) -> tuple[Trial, ...]:
        """Every known trial, stage by stage."""
        return tuple(t for s in self.stages for t in s.trials)

    def stage(self, name: str) -> StagePlan:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def trial(self, trial_id: str) -> Trial:
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise KeyError(f"no trial {trial_id!r} in the plan of {self.name!r}")


# ---------------------------------------------------------------------------------------------------------
# Expansion

Upstream = Callable[[str], Sequence[UpstreamResult]]


@dataclass(frozen=True)
class _Arch:
    """One architecture a retrain / grid stage trains."""

    field: Literal["genotype", "path"]
    value: str  # a published name or canonical JSON
    source: str  # lineage source label
    label: str  # arm label part
    op_set: str | None = None
    parent: str | None = None
    parent_stage: str | None = None
    from_arm: Arm | None = None


def with_overrides_dict(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``config_to_dict(with_overrides(config_from_dict(config), overrides))`` for plain dicts."""
    from trainers.config import config_from_dict

    return config_to_dict(with_overrides(config_from_dict(dict(config)), dict(overrides)))


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
        stage_plans[stage.name] = _plan_stage(spec, stage, stage_plans, upstream)
    return Plan(spec.name, spec.storage, spec.resources, spec.retries, tuple(stage_plans.values()))


def _plan_stage(
    spec: ExperimentSpec, stage: Any, done: dict[str, StagePlan], upstream: Upstream | None
) -> StagePlan:
    ref = getattr(stage, "from_", None)
    parent_plan = done[ref.stage] if ref is not None else None
    if stage.kind == "evaluate":
        return _plan_evaluate(stage, parent_plan, upstream)
    base = config_to_dict(stage_base_config(spec, stage))
    points = sweep_points(stage)
    asha = getattr(stage, "asha", None)
    if stage.kind in ("cell_search", "hypercuboid_search"):
        trials = [_make_trial(stage, base, None, axes, seed) for axes in points for seed in stage.seeds]
        return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials),
                         epochs=base["epochs"])  # fmt: skip
    if stage.kind == "grid" and stage.optuna is not None:
        seeded = with_overrides_dict(base, {"seed": stage.seeds[0]})
        optuna = OptunaPlan(stage.name, stage.optuna.trials, stage.optuna.seed, tuple(stage.channels),
                            stage.layers, stage.head_channels, seeded)  # fmt: skip
        return StagePlan(stage.name, stage.kind, "search", expected_trials=stage.optuna.trials, optuna=optuna,
                         asha=asha, epochs=base["epochs"])  # fmt: skip
    static = _static_archs(stage)
    per_arch = len(points) * len(stage.seeds)
    common = {"asha": asha, "epochs": base["epochs"], "depends_on": ref.stage if ref else None}
    archs = list(static)
    notes: list[str] = []
    if ref is not None:
        upstream_count = _expected(parent_plan, ref.top)
        results = _finished_upstream(parent_plan, upstream)
        if results is None:
            expected = None if upstream_count is None else (upstream_count + len(static)) * per_arch
            return StagePlan(stage.name, stage.kind, "waiting", waiting_on=ref.stage,
                             expected_trials=expected, **common)  # type: ignore[arg-type]
        from_archs, notes = _upstream_archs(stage, ref, parent_plan, results, base)
        archs = from_archs + archs
    trials: list[Trial] = []
    seen: dict[str, Trial] = {}
    for arch in archs:
        for axes in points:
            for seed in stage.seeds:
                trial = _make_trial(stage, base, arch, axes, seed)
                if trial.trial_id in seen:
                    first = seen[trial.trial_id].lineage.source
                    notes.append(f"{arch.source} (seed {seed}) is the same trial as {first}; trained once")
                    continue
                seen[trial.trial_id] = trial
                trials.append(trial)
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials),
                     notes=tuple(notes), **common)  # type: ignore[arg-type]


def _make_trial(
    stage: Any, base: dict[str, Any], arch: _Arch | None, axes: dict[str, Any], seed: int
) -> Trial:
    overrides: dict[str, Any] = nest_dotted(axes) if axes else {}
    if arch is not None:
        overrides["genotype"] = arch.value if arch.field == "genotype" else None
        overrides["path"] = arch.value if arch.field == "path" else None
        if arch.op_set is not None:
            overrides["op_set"] = arch.op_set
    overrides["seed"] = seed
    try:
        config = with_overrides_dict(base, overrides)
    except ConfigError as err:
        raise PlanError(f"stage {stage.name!r}: {arch.source if arch else 'trial'} with {axes or 'no axes'}, "
                        f"seed {seed}: {err}") from None  # fmt: skip
    parent = arch.parent if arch is not None else None
    label = ([arch.label] if arch is not None else []) + _axis_label(axes)
    drop = ("seed",) + (_ARCH_FIELDS if arch is not None and arch.from_arm is not None else ())
    execution = execution_identity(stage)
    if execution:
        label.append(f"{execution['local_batchnorm_workers']} workers, local BN")
    return Trial(
        stage=stage.name, kind=stage.kind, trial_id=trial_id_for(stage.name, stage.kind, config, parent, execution),
        config=config, seed=seed, axes=dict(axes),
        arm=_arm(stage.name, stage.kind, config, label, from_arm=arch.from_arm if arch else None, drop=drop,
                 execution=execution),
        lineage=Lineage(parent, arch.parent_stage if arch else None, arch.source if arch else "recipe"),
    )  # fmt: skip


def _static_archs(stage: Any) -> list[_Arch]:
    """The architectures a retrain / grid stage names itself, in spec order."""
    out: list[_Arch] = []
    for j, ref in enumerate(getattr(stage, "genotypes", [])):
        if isinstance(ref, InlineGenotype):
            text = Genotype.from_dict(ref.model_dump(exclude_none=True)).to_json()
            out.append(_Arch("genotype", text, f"inline:genotypes[{j}]", f"genotype=genotypes[{j}]"))
        else:
            out.append(_Arch("genotype", ref, f"published:{ref}", f"genotype={ref}"))
    for field_name in ("candidates", "paths"):
        for j, ref in enumerate(getattr(stage, field_name, [])):
            if isinstance(ref, str):
                out.append(_Arch("path", ref, f"published:{ref}", f"path={ref}"))
            elif isinstance(ref, InlinePath):
                text = HyperCuboidPath.from_dict(ref.model_dump()).to_json()
                out.append(_Arch("path", text, f"inline:{field_name}[{j}]", f"path={field_name}[{j}]"))
            elif isinstance(ref, RandomPaths):
                # One generator per entry, drawn in order: raising N keeps the first paths.
                rng = random.Random(ref.seed)
                for k in range(ref.random):
                    path = random_path(stage.channels, stage.layers, rng, head_channels=stage.head_channels)
                    name = f"random#{k + 1}(seed={ref.seed})"
                    out.append(_Arch("path", path.to_json(), name, f"path={name}"))
    return out


def _expected(parent: StagePlan | None, top: int | None) -> int | None:
    if parent is None or parent.expected_trials is None:
        return None
    return parent.expected_trials if top is None else min(top, parent.expected_trials)


def _finished_upstream(parent: StagePlan | None, upstream: Upstream | None) -> list[UpstreamResult] | None:
    """The parent stage's results in plan order, or None while it is not finished."""
    if parent is None or upstream is None or parent.state == "waiting":
        return None
    results = list(upstream(parent.name))
    if parent.optuna is not None:
        mine = sorted((r for r in results if parent.optuna.owns(r.config)), key=lambda r: r.trial_id)
        unique = list({r.trial_id: r for r in mine}.values())
        return unique if len(unique) >= parent.optuna.trials else None
    by_id = {r.trial_id: r for r in results}  # results of trials no longer in the spec are ignored
    if any(t.trial_id not in by_id for t in parent.trials):
        return None
    return [by_id[t.trial_id] for t in parent.trials]


def _upstream_arm(parent: StagePlan, result: UpstreamResult) -> Arm:
    for trial in parent.trials:
        if trial.trial_id == result.trial_id:
            return trial.arm
    return _arm(parent.name, parent.kind, result.config, ["path=optuna"])  # an Optuna trial


def _upstream_archs(stage: Any, ref: Any, parent: StagePlan, results: list[UpstreamResult],
                    base: dict[str, Any]) -> tuple[list[_Arch], list[str]]:  # fmt: skip
    from search_spaces.spaces import get_search_space

    notes: list[str] = []
    usable = []
    for r in results:
        arch = r.architecture(ref.take, ref.parse) if r.status == "finished" else None
        if arch is None:
            notes.append(f"{parent.name}/{r.trial_id} ({r.status}): no {ref.take} architecture to train")
        else:
            usable.append((r, arch))
    if ref.top is not None:
        # Highest score first; unscored last; ties by id so the choice never depends on result order.
        ranked = sorted(usable, key=lambda ra: (ra[0].score is None, -(ra[0].score or 0.0), ra[0].trial_id))
        chosen = {id(ra[0]) for ra in ranked[: ref.top]}
        usable = [ra for ra in usable if id(ra[0]) in chosen]
    out = []
    # An explicit op_set in the stage wins; else a genotype trains with the op set of the space it came from.
    keep_op_set = base.get("op_set") is not None
    for r, arch in usable:
        source = f"{parent.name}/{r.trial_id}:{ref.take}"
        if parent.kind == "cell_search":
            source += f"/{ref.parse}"
        up_arm = _upstream_arm(parent, r)
        label = f"from {parent.name}: {up_arm.label}"
        try:
            if parent.kind == "cell_search":
                op_set = None if keep_op_set else get_search_space(r.config["space"]).op_set
                genotype = Genotype.from_dict(dict(arch)).validate(op_set or base.get("op_set") or "sharp")
                value = genotype.to_json()
                out.append(_Arch("genotype", value, source, label, op_set, r.trial_id, parent.name, up_arm))
            else:
                value = _path_json(arch)
                out.append(_Arch("path", value, source, label, None, r.trial_id, parent.name, up_arm))
        except (ValueError, KeyError, TypeError) as err:
            raise PlanError(
                f"stage {stage.name!r}: the result of {source} is not a usable architecture: {err}"
            ) from None
    return out, notes


def _path_json(arch: Any) -> str:
    from search_spaces.paths import resolve_path

    return resolve_path(arch if not isinstance(arch, Mapping) else dict(arch)).to_json()


def _plan_evaluate(stage: Any, parent: StagePlan | None, upstream: Upstream | None) -> StagePlan:
    ref = stage.from_
    results = _finished_upstream(parent, upstream)
    if results is None:
        return StagePlan(stage.name, stage.kind, "waiting", waiting_on=ref.stage, depends_on=ref.stage,
                         expected_trials=_expected(parent, ref.top))  # fmt: skip
    notes = [f"{ref.stage}/{r.trial_id} ({r.status}): no checkpoint to score"
             for r in results if r.status != "finished"]  # fmt: skip
    results = [r for r in results if r.status == "finished"]
    if ref.top is not None:
        results = sorted(results, key=lambda r: (r.score is None, -(r.score or 0.0), r.trial_id))[: ref.top]
    trials = []
    for r in results:
        config = {
            "kind": "evaluate", "source_stage": ref.stage, "source_trial": r.trial_id,
            "checkpoint": stage.checkpoint, "datasets": list(stage.datasets), "root": stage.root,
        }  # fmt: skip
        up_arm = _upstream_arm(parent, r)  # type: ignore[arg-type]
        trials.append(Trial(
            stage=stage.name, kind="evaluate", config=config, seed=r.seed, axes={},
            trial_id=trial_id_for(stage.name, "evaluate", config, r.trial_id),
            arm=_arm(stage.name, "evaluate", config, [f"of {ref.stage}: {up_arm.label}"], from_arm=up_arm,
                     drop=("source_trial",)),
            lineage=Lineage(r.trial_id, ref.stage, f"{ref.stage}/{r.trial_id}:{stage.checkpoint}"),
        ))  # fmt: skip
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), depends_on=ref.stage,
                     expected_trials=len(trials), notes=tuple(notes))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Concurrency and display


def max_concurrent_trials(resources_per_trial: Resources | Mapping[str, float], cluster_cpus: float,
                          cluster_gpus: float) -> int:  # fmt: skip
    """How many trials may run at once: never more than the CPUs or the GPUs can hold, at least 1.

    Args:
        resources_per_trial: a :class:`~nas_service.spec.Resources` or ``{"cpu": c, "gpu": g}``.
        cluster_cpus, cluster_gpus: what the cluster (or the local machine) has.

    Raises:
        ValueError: a trial holds neither CPU nor GPU, or a count is negative.
    """
    if isinstance(resources_per_trial, Mapping):
        cpu, gpu = float(resources_per_trial.get("cpu", 1.0)), float(resources_per_trial.get("gpu", 0.0))
    else:
        cpu, gpu = resources_per_trial.cpu, resources_per_trial.gpu
    if min(cpu, gpu, cluster_cpus, cluster_gpus) < 0:
        raise ValueError(f"resources must be >= 0, got per trial cpu={cpu}, gpu={gpu}; "
                         f"cluster cpus={cluster_cpus}, gpus={cluster_gpus}")  # fmt: skip
    if cpu == 0 and gpu == 0:
        raise ValueError("a trial must hold some CPU or GPU (else concurrency is unbounded): cpu=0, gpu=0")
    # The small epsilon keeps 1.0 / 0.1 from flooring to 9 (it is 9.999... in floating point).
    pairs = ((cluster_cpus, cpu), (cluster_gpus, gpu))
    limits = [math.floor(have / need + 1e-9) for have, need in pairs if need > 0]
    return max(1, min(limits))


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
            rows.append((s.name, "-", "-", label, str(s.optuna.base_config["seed"]), "search at run time"))
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
