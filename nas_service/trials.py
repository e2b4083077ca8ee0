"""Planned trials and what they carry: ids, arms, lineage, upstream results, and the expansion helpers.

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

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from search_spaces.genotypes import Genotype
from search_spaces.paths import HYPERCUBOID_OPS, HyperCuboidPath, PathStage, random_path, resolve_path
from search_spaces.spaces import get_search_space
from trainers.config import ConfigError, TrainConfig, config_to_dict, with_overrides
from trainers.identity import without_result_neutral_fields

from .digests import canonical_json, digest
from .spec_models import AshaSpec, InlineGenotype, InlinePath, RandomPaths, Resources, nest_dotted

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
        config: the resolved config, typed and frozen: a ``trainers.config`` config for the kinds that train a
            recipe, the kind's own dataclass otherwise (``evaluate``'s ``EvaluateConfig``). Its dict form
            (``config_to_dict``) is what the id hashes and the results row stores.
        seed: the config's seed (for evaluate: the scored trial's seed).
        axes: the stage's sweep values of this trial (``{"weighting": "max_w"}``); the seed is not in it.
        arm: the trial's arm.
        lineage: where its architecture came from.
    """

    stage: str
    kind: str
    trial_id: str
    config: Any
    seed: int
    axes: dict[str, Any]
    arm: Arm
    lineage: Lineage = field(default_factory=Lineage)
    # How the trial runs, attached by the runner: a DDP retrain's {"workers", "resources_per_worker",
    # "retries", "sync_batchnorm"}; None trains in the Tune trial's own process. Not part of the id.
    ddp: Mapping[str, Any] | None = None

    def __hash__(self) -> int:  # the axes are a dict; the id already is the content hash
        return hash(self.trial_id)

    @property
    def epochs(self) -> int | None:
        """The epochs the trial trains (None for a kind whose config has none, such as ``evaluate``)."""
        return getattr(self.config, "epochs", None)


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


# ---------------------------------------------------------------------------------------------------------
# Hashing


def identity_config(config: Any, drop: Sequence[str] = ()) -> dict[str, Any]:
    """The dict form of a config (typed, or already a dict) without result-neutral fields (and without the
    top-level fields in ``drop``)."""
    out = without_result_neutral_fields(config if isinstance(config, Mapping) else config_to_dict(config),
                                        extra=_EVALUATION_ROOT)  # fmt: skip
    for key in drop:
        out.pop(key, None)
    return out


def trial_id_for(stage: str, kind: str, config: Any, parent: str | None = None,
                 execution: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The deterministic id of a trial (see the module docstring).

    ``execution``: how the trial runs, where that changes its results (see :func:`execution_identity`).
    """
    payload: dict[str, Any] = {"stage": stage, "kind": kind, "config": identity_config(config)}
    if parent is not None:
        payload["lineage"] = parent
    if execution:
        payload["execution"] = dict(execution)
    return digest(payload, ID_LENGTH)


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


def make_arm(stage: str, kind: str, config: Any, label_parts: Sequence[str], *,
         from_arm: Arm | None = None, drop: Sequence[str] = ("seed",),
         execution: Mapping[str, Any] | None = None) -> Arm:  # fmt: skip
    payload: dict[str, Any] = {"stage": stage, "kind": kind, "config": identity_config(config, drop)}
    if execution:
        payload["execution"] = dict(execution)
    if from_arm is not None:
        payload["from_arm"] = from_arm.arm_id
    label = ", ".join(p for p in label_parts if p) or "base"
    return Arm(digest(payload, ARM_ID_LENGTH), label)


def axis_label(axes: Mapping[str, Any]) -> list[str]:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else canonical_json(v)

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
    base_config: Any  # the stage's RetrainConfig (seed set), before the path

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
        config = with_overrides(self.base_config, {"genotype": None, "path": path.to_json()})
        return Trial(
            stage=self.stage, kind="grid", trial_id=trial_id_for(self.stage, "grid", config), config=config,
            seed=config.seed, axes={}, arm=make_arm(self.stage, "grid", config, ["path=optuna"]),
            lineage=Lineage(source="optuna"),
        )  # fmt: skip

    def owns(self, config: Mapping[str, Any]) -> bool:
        """Whether a finished trial's config belongs to this search (same base, any path)."""
        mine = identity_config(self.base_config, ("genotype", "path"))
        return identity_config(config, ("genotype", "path")) == mine


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
class Architecture:
    """One architecture a retrain / grid stage trains."""

    field: Literal["genotype", "path"]
    value: str  # a published name or canonical JSON
    source: str  # lineage source label
    label: str  # arm label part
    op_set: str | None = None
    parent: str | None = None
    parent_stage: str | None = None
    from_arm: Arm | None = None


def make_trial(stage: Any, base: TrainConfig, arch: Architecture | None, axes: dict[str, Any], seed: int) -> Trial:
    """The trial of ``stage`` that trains ``base`` with the sweep point ``axes``, ``seed`` and ``arch``."""
    overrides: dict[str, Any] = nest_dotted(axes) if axes else {}
    if arch is not None:
        overrides["genotype"] = arch.value if arch.field == "genotype" else None
        overrides["path"] = arch.value if arch.field == "path" else None
        if arch.op_set is not None:
            overrides["op_set"] = arch.op_set
    overrides["seed"] = seed
    try:
        config = with_overrides(base, overrides)
    except ConfigError as err:
        raise PlanError(f"stage {stage.name!r}: {arch.source if arch else 'trial'} with {axes or 'no axes'}, "
                        f"seed {seed}: {err}") from None  # fmt: skip
    parent = arch.parent if arch is not None else None
    label = ([arch.label] if arch is not None else []) + axis_label(axes)
    drop = ("seed",) + (_ARCH_FIELDS if arch is not None and arch.from_arm is not None else ())
    execution = execution_identity(stage)
    if execution:
        label.append(f"{execution['local_batchnorm_workers']} workers, local BN")
    return Trial(
        stage=stage.name, kind=stage.kind, trial_id=trial_id_for(stage.name, stage.kind, config, parent, execution),
        config=config, seed=seed, axes=dict(axes),
        arm=make_arm(stage.name, stage.kind, config, label, from_arm=arch.from_arm if arch else None, drop=drop,
                 execution=execution),
        lineage=Lineage(parent, arch.parent_stage if arch else None, arch.source if arch else "recipe"),
    )  # fmt: skip


def static_architectures(stage: Any) -> list[Architecture]:
    """The architectures a retrain / grid stage names itself, in spec order."""
    out: list[Architecture] = []
    for j, ref in enumerate(getattr(stage, "genotypes", [])):
        if isinstance(ref, InlineGenotype):
            text = Genotype.from_dict(ref.model_dump(exclude_none=True)).to_json()
            out.append(Architecture("genotype", text, f"inline:genotypes[{j}]", f"genotype=genotypes[{j}]"))
        else:
            out.append(Architecture("genotype", ref, f"published:{ref}", f"genotype={ref}"))
    for field_name in ("candidates", "paths"):
        for j, ref in enumerate(getattr(stage, field_name, [])):
            if isinstance(ref, str):
                out.append(Architecture("path", ref, f"published:{ref}", f"path={ref}"))
            elif isinstance(ref, InlinePath):
                name = ref.label or f"{field_name}[{j}]"
                out.append(Architecture("path", ref.path().to_json(), f"inline:{field_name}[{j}]", f"path={name}"))
            elif isinstance(ref, RandomPaths):
                # One generator per entry, drawn in order: raising N keeps the first paths.
                rng = random.Random(ref.seed)
                for k in range(ref.random):
                    path = random_path(stage.channels, stage.layers, rng, head_channels=stage.head_channels)
                    name = f"random#{k + 1}(seed={ref.seed})"
                    out.append(Architecture("path", path.to_json(), name, f"path={name}"))
    return out


def expected_trials(parent: StagePlan | None, top: int | None) -> int | None:
    if parent is None or parent.expected_trials is None:
        return None
    return parent.expected_trials if top is None else min(top, parent.expected_trials)


def finished_upstream(parent: StagePlan | None, upstream: Upstream | None) -> list[UpstreamResult] | None:
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


def upstream_arm(parent: StagePlan, result: UpstreamResult) -> Arm:
    for trial in parent.trials:
        if trial.trial_id == result.trial_id:
            return trial.arm
    return make_arm(parent.name, parent.kind, result.config, ["path=optuna"])  # an Optuna trial


def upstream_architectures(stage: Any, ref: Any, parent: StagePlan, results: list[UpstreamResult],
                           base: TrainConfig, *, genotypes: bool) -> tuple[list[Architecture], list[str]]:  # fmt: skip
    """The architectures ``stage`` trains from ``parent``'s results (``ref``: its ``from:``), and notes on
    the results that gave none. ``genotypes``: the parent produces genotypes (else HyperCuboid paths)."""
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
    base_op_set = getattr(base, "op_set", None)
    for r, arch in usable:
        source = f"{parent.name}/{r.trial_id}:{ref.take}"
        if genotypes:
            source += f"/{ref.parse}"
        up_arm = upstream_arm(parent, r)
        label = f"from {parent.name}: {up_arm.label}"
        try:
            if genotypes:
                space = r.config.get("space")
                op_set = base_op_set or (None if space is None else get_search_space(space).op_set)
                genotype = Genotype.from_dict(dict(arch)).validate(op_set or "sharp")
                value = genotype.to_json()
                out.append(Architecture("genotype", value, source, label, op_set, r.trial_id, parent.name, up_arm))
            else:
                value = path_json(arch)
                out.append(Architecture("path", value, source, label, None, r.trial_id, parent.name, up_arm))
        except (ValueError, KeyError, TypeError) as err:
            raise PlanError(
                f"stage {stage.name!r}: the result of {source} is not a usable architecture: {err}"
            ) from None
    return out, notes


def path_json(arch: Any) -> str:
    return resolve_path(arch if not isinstance(arch, Mapping) else dict(arch)).to_json()

