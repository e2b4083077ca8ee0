"""Experiment specs: the YAML a user writes, validated into frozen, typed objects before anything runs.

A spec names an experiment, where its results go, the resources of one trial and a list of stages::

    name: quickstart
    storage: ../runs              # a local folder (relative: against this file's folder) or a URI
    data: {dataset: digits}       # defaults for every stage's data.dataset / data.root
    resources: {cpu: 1, gpu: 0}   # per trial
    retries: 2                    # retries from the last checkpoint for a failing trial
    stages:
      - name: search
        kind: cell_search         # cell_search | hypercuboid_search | grid | retrain | evaluate
        recipe: digits_search     # a named config from trainers.config.RECIPES of the matching kind
        overrides: {epochs: 3}    # config fields (nested or dotted); never axes, even when a value is a list
        sweep: {weighting: [scalar, max_w]}   # the explicit axes: dotted config field -> values
        seeds: [0, 1]             # an axis too
      - name: retrain
        kind: retrain
        recipe: digits_retrain
        from: {stage: search, take: best, parse: default}
        genotypes: [DARTS_V2]

Validation has two layers. The pydantic models check the shape (types, allowed values, unknown fields);
then :func:`check_spec` checks the meaning: recipes exist and match the stage kind, ``from:`` names an
earlier stage of a kind that produces what this stage consumes, and every override and sweep value builds
a valid training config (by actually building it with :func:`trainers.config.with_overrides`), so a bad
value is reported at the spec path where the user wrote it. Every problem becomes one line of
:class:`SpecError`: ``<path>: <rule> (got <value>)``.

Paths: a relative local ``storage`` and a relative ``data.root`` / evaluate ``root`` resolve against the
folder of the spec file (the current folder for spec text), so a spec means the same thing from any
working directory; ``~`` expands; URIs (``s3://...``, ``gs://...``, ``file://...``) are kept as given.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

import yaml
from pydantic import (
    StrictBool,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from search_spaces.genotypes import Genotype, GenotypeError, list_published
from search_spaces.paths import HYPERCUBOID_OPS, HyperCuboidPath, PathError, list_published_paths
from trainers.config import ConfigError, TrainConfig, get_recipe, list_recipes, with_overrides

__all__ = [
    "STAGE_KINDS",
    "RECIPE_KINDS",
    "UPSTREAM_KINDS",
    "RETRAIN_METRICS",
    "Issue",
    "SpecError",
    "DataDefaults",
    "Resources",
    "FromRef",
    "InlineGenotype",
    "InlinePath",
    "RandomPaths",
    "OptunaSpec",
    "AshaSpec",
    "CellSearchStage",
    "HyperCuboidSearchStage",
    "RetrainStage",
    "GridStage",
    "EvaluateStage",
    "Stage",
    "TrainStage",
    "ExperimentSpec",
    "load_spec",
    "check_spec",
    "stage_base_config",
    "sweep_points",
    "nest_dotted",
    "is_uri",
    "schema_text",
    "write_schema",
    "SCHEMA_PATH",
]

STAGE_KINDS = ("cell_search", "hypercuboid_search", "grid", "retrain", "evaluate")
# Which kind of trainers recipe each training stage takes (evaluate has no recipe).
RECIPE_KINDS: dict[str, str] = {
    "cell_search": "cell_search",
    "hypercuboid_search": "hypercuboid_search",
    "grid": "retrain",
    "retrain": "retrain",
}
# What a stage may take ``from:``: retraining needs an architecture (a genotype or a path), a grid stage a
# path, an evaluation a trained checkpoint.
UPSTREAM_KINDS: dict[str, tuple[str, ...]] = {
    "retrain": ("cell_search", "hypercuboid_search", "grid"),
    "grid": ("hypercuboid_search", "grid"),
    "evaluate": ("retrain", "grid"),
}
# Per-epoch metrics of a retrain / grid trial (trainers.retrain), for ASHA.
RETRAIN_METRICS = (
    "valid_top1", "valid_top5", "valid_loss", "test_top1", "test_top5", "test_loss",
    "train_top1", "train_loss",
)  # fmt: skip
# Config fields a spec must not set through overrides or sweep, and what to use instead.
_RESERVED_FIELDS = {
    "kind": "the stage's kind",
    "seed": "the stage's seeds: list",
    "genotype": "the stage's genotypes: / from:",
    "path": "the stage's paths: / candidates: / from:",
}
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "experiment.schema.json"

StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


# ---------------------------------------------------------------------------------------------------------
# Errors


class Issue(NamedTuple):
    """One problem: where (a spec path such as ``stages[1].sweep.weighting``), the rule, the value (repr)."""

    path: str
    rule: str
    value: str

    def __str__(self) -> str:
        return f"{self.path or '<spec>'}: {self.rule} (got {self.value})"


class SpecError(ValueError):
    """An invalid spec; the message lists each problem as ``<path>: <rule> (got <value>)``.

    Attributes:
        issues: the problems, in spec order.
        source: the spec file, when there is one.
    """

    def __init__(self, issues: Sequence[Issue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        where = f" {source}" if source else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid experiment spec{where} ({len(self.issues)} problem(s)):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) with its issues intact
        return (type(self), (self.issues, self.source))


def _show(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(*parts: str | int) -> str:
    """``("stages", 1, "sweep", "weighting") -> "stages[1].sweep.weighting"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out += f".{part}" if out else str(part)
    return out


def _issues_from_validation(err: ValidationError) -> list[Issue]:
    """pydantic's errors -> Issues with spec paths (union tags, which start with ``@``, are dropped)."""
    issues: list[Issue] = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("@"))]
        ctx = e.get("ctx") or {}
        kind = e["type"]
        if kind == "spec_rules":  # semantic problems collected by check_spec
            issues.extend(Issue(*issue) for issue in ctx["issues"])
            continue
        if kind == "unknown_field":
            issues.append(Issue(_join(*loc, ctx["field"]), e["msg"], _show(ctx["value"])))
            continue
        if kind == "stage_kind":
            value = e["input"].get("kind") if isinstance(e["input"], dict) else e["input"]
            path = _join(*loc, "kind") if isinstance(e["input"], dict) else _join(*loc)
            issues.append(Issue(path, e["msg"], _show(value)))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if kind == "missing":
            issues.append(Issue(_join(*loc), "required field is missing", "nothing"))
        else:
            issues.append(Issue(_join(*loc), msg[:1].lower() + msg[1:], _show(e["input"])))
    return issues


# ---------------------------------------------------------------------------------------------------------
# Shape: the pydantic models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        # pydantic's own "extra fields not permitted" does not say which fields exist; a typo deserves that.
        if isinstance(data, dict):
            known = [f.alias or name for name, f in cls.model_fields.items()]
            for key, value in data.items():
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_field", "unknown field; known fields: {known}",
                        {"field": str(key), "known": known, "value": value},
                    )  # fmt: skip
        return data


def _resolve_local(value: str | None, info: ValidationInfo) -> str | None:
    """A local path made absolute against the spec's folder (``context["base_dir"]``); URIs unchanged."""
    if value is None or is_uri(value):
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return os.path.normpath(path) if (path.is_absolute() or base is not None) else value


def is_uri(text: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, file, ...) rather than a local path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.replace("+", "").isalnum()


class DataDefaults(_Model):
    """Data defaults applied to every training stage's config (``data.dataset``, ``data.root``)."""

    dataset: str | None = Field(None, description="a registered data set: digits, cifar10, imagenet")
    root: str | None = Field(
        None, description="folder with the data set's files; relative: against the spec file's folder"
    )

    @field_validator("root")
    @classmethod
    def _resolve_root(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve_local(v, info)


class Resources(_Model):
    """What one trial holds while it runs; concurrency follows (see ``planner.max_concurrent_trials``)."""

    cpu: StrictFloat = Field(1.0, ge=0, description="CPUs per trial")
    gpu: StrictFloat = Field(0.0, ge=0, description="GPUs per trial (fractions below 1 share a GPU)")

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("must be a whole number above 1 (Ray shares a GPU only in fractions below 1)")
        return v

    @model_validator(mode="after")
    def _holds_something(self) -> Resources:
        if self.cpu == 0 and self.gpu == 0:
            raise ValueError("a trial must hold some CPU or GPU, else concurrency would be unbounded")
        return self


class FromRef(_Model):
    """Which earlier stage's results a stage consumes, and which of each trial's results it takes."""

    stage: str = Field(description="the name of an earlier stage")
    take: Literal["best", "last"] = Field(
        "best", description="a search's architecture at its best search-validation epoch, or at its last"
    )
    parse: Literal["default", "no_hack"] = Field(
        "default", description="cell searches: the DARTS parse (excludes 'none') or the no-hack parse"
    )
    top: PositiveInt | None = Field(
        None, description="only the top N upstream trials by their score (e.g. the best Optuna trials)"
    )


class InlineGenotype(_Model):
    """A genotype written out: two ``[op, input]`` edges per node for the normal and reduction cells."""

    normal: list[tuple[str, StrictInt]] = Field(min_length=2)
    reduce: list[tuple[str, StrictInt]] = Field(min_length=2)
    normal_concat: list[StrictInt] | None = None
    reduce_concat: list[StrictInt] | None = None


_HyperCuboidOp = Literal[HYPERCUBOID_OPS]  # type: ignore[valid-type]


class InlinePath(_Model):
    """A HyperCuboid path written out: the stem width, then ``[stride, c_in, c_out, op]`` per stage."""

    stem_channels: PositiveInt
    stages: list[tuple[Literal[1, 2], PositiveInt, PositiveInt, _HyperCuboidOp]] = Field(min_length=2)
    head_channels: PositiveInt = 768


class RandomPaths(_Model):
    """``N`` uniformly random paths on the grid stage's ``channels`` x ``layers``, drawn from ``seed``."""

    random: PositiveInt = Field(description="how many random paths")
    seed: StrictInt = Field(0, description="the draw's seed: the same seed gives the same paths")


class OptunaSpec(_Model):
    """An Optuna search over the grid stage's HyperCuboid grid: stem width, and width and op per stage."""

    trials: PositiveInt
    seed: StrictInt = 0


class AshaSpec(_Model):
    """ASHA early stopping for a grid stage; the mode follows the metric (losses: min, accuracies: max)."""

    grace_period: PositiveInt = Field(1, description="epochs every trial runs before it can be stopped")
    reduction_factor: StrictFloat = Field(4.0, gt=1)
    metric: Literal[RETRAIN_METRICS] = "valid_top1"  # type: ignore[valid-type]

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric.endswith("loss") else "max"


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"must be distinct; {v!r} appears twice")
        seen.append(v)
    return values


class _StageBase(_Model):
    name: Name = Field(description="unique within the experiment; names the stage's folder")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError("must not be '.' or '..' (it names a folder)")
        return v


class _TrainStageBase(_StageBase):
    recipe: str = Field(description="a named config of trainers.config whose kind matches the stage")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="config fields, nested or dotted (data.batch_size); lists here are values, never axes",
    )
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="the axes: dotted config field -> list of values (a grid over all)"
    )
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1, description="an axis")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        return _unique(v)


class CellSearchStage(_TrainStageBase):
    """A differentiable cell search; each trial chooses a genotype."""

    kind: Literal["cell_search"]


class HyperCuboidSearchStage(_TrainStageBase):
    """DHGS over the HyperCuboid; each trial extracts a path."""

    kind: Literal["hypercuboid_search"]


_GenotypeRef = Annotated[
    Union[Annotated[str, Tag("@name")], Annotated[InlineGenotype, Tag("@inline")]],
    Discriminator(lambda v: "@name" if isinstance(v, str) else "@inline"),
]
_PathRef = Annotated[
    Union[Annotated[str, Tag("@name")], Annotated[InlinePath, Tag("@inline")]],
    Discriminator(lambda v: "@name" if isinstance(v, str) else "@inline"),
]


def _candidate_tag(v: Any) -> str:
    if isinstance(v, str):
        return "@name"
    return "@random" if isinstance(v, dict) and "random" in v else "@inline"


_Candidate = Annotated[
    Union[
        Annotated[str, Tag("@name")],
        Annotated[InlinePath, Tag("@inline")],
        Annotated[RandomPaths, Tag("@random")],
    ],
    Discriminator(_candidate_tag),
]


class RetrainStage(_TrainStageBase):
    """Trains genotypes or paths from scratch: those an earlier stage chose, published or inline ones.

    With ``workers`` >= 2 each trial is a DDP run on Ray Train: its Tune trial drives ``workers`` workers
    holding ``resources_per_worker`` each, and ``data.batch_size`` is the global batch they split.
    """

    kind: Literal["retrain"]
    from_: FromRef | None = Field(None, alias="from")
    genotypes: list[_GenotypeRef] = Field(default_factory=list, description="published names or inline")
    paths: list[_PathRef] = Field(default_factory=list, description="published path names or inline paths")
    workers: PositiveInt = Field(
        1, description="DDP workers per trial (Ray Train); 1 trains in the trial's own process"
    )  # fmt: skip
    resources_per_worker: Resources = Field(
        default_factory=Resources, description="what each DDP worker holds (with workers >= 2)"
    )  # fmt: skip
    worker_retries: StrictInt = Field(
        2, ge=0, description="restarts of a DDP worker group from its last checkpoint after a lost worker or node"
    )  # fmt: skip
    sync_batchnorm: StrictBool = Field(
        True,
        description="DDP batch norm uses the global batch's statistics (as one process would; then the worker "
        "count does not change results); false: each worker's own, faster on CPU, and part of the trial's identity",
    )  # fmt: skip


class GridStage(_TrainStageBase):
    """Plain training of fixed HyperCuboid paths (human, random, listed), or an Optuna search of the grid."""

    kind: Literal["grid"]
    from_: FromRef | None = Field(None, alias="from")
    candidates: list[_Candidate] = Field(default_factory=list)
    paths: list[_PathRef] = Field(default_factory=list)
    channels: list[PositiveInt] | None = Field(None, min_length=1, description="the grid's widths")
    layers: PositiveInt | None = Field(None, description="the grid's HyperCuboid layers (2 stages each)")
    head_channels: PositiveInt = Field(768, description="width of the final SharpSepConv of grid paths")
    optuna: OptunaSpec | None = None
    asha: AshaSpec | None = None

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else _unique(v)


class EvaluateStage(_StageBase):
    """Scores the chosen checkpoint of every trial of an earlier retrain or grid stage on held-out sets."""

    kind: Literal["evaluate"]
    from_: FromRef = Field(alias="from")
    datasets: list[str] = Field(min_length=1, description="test sets, e.g. [cifar10, cifar10.1]")
    checkpoint: Literal["best", "last"] = "best"
    root: str | None = Field(None, description="folder of the test sets; default: each data set's default")

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, v: list[str]) -> list[str]:
        return _unique(v)

    @field_validator("root")
    @classmethod
    def _resolve_root(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve_local(v, info)


def _stage_tag(v: Any) -> str | None:
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    return f"@{kind}" if kind in STAGE_KINDS else None


Stage = Annotated[
    Union[
        Annotated[CellSearchStage, Tag("@cell_search")],
        Annotated[HyperCuboidSearchStage, Tag("@hypercuboid_search")],
        Annotated[GridStage, Tag("@grid")],
        Annotated[RetrainStage, Tag("@retrain")],
        Annotated[EvaluateStage, Tag("@evaluate")],
    ],
    Discriminator(
        _stage_tag, custom_error_type="stage_kind",
        custom_error_message=f"must be one of {list(STAGE_KINDS)}",
    ),
]  # fmt: skip
TrainStage = Union[CellSearchStage, HyperCuboidSearchStage, GridStage, RetrainStage]


class ExperimentSpec(_Model):
    """A whole experiment. Build with :func:`load_spec`; the JSON Schema is ``model_json_schema()``."""

    name: Name = Field(description="the experiment's name; results go to <storage>/<name>/")
    description: str | None = None
    storage: str = Field(
        "runs", validate_default=True,
        description="a local folder (relative: against the spec file's folder) or a URI (s3://, gs://)",
    )  # fmt: skip
    data: DataDefaults = Field(default_factory=DataDefaults)
    resources: Resources = Field(default_factory=Resources)
    retries: StrictInt = Field(2, ge=0, description="retries from the last checkpoint for a failing trial")
    stages: list[Stage] = Field(min_length=1)

    @field_validator("storage")
    @classmethod
    def _resolve_storage(cls, v: str, info: ValidationInfo) -> str:
        return _resolve_local(v, info) or v

    @model_validator(mode="after")
    def _meaning(self) -> ExperimentSpec:
        issues = check_spec(self)
        if issues:
            context = {"count": len(issues), "issues": [tuple(i) for i in issues]}
            raise PydanticCustomError("spec_rules", "{count} problem(s)", context)
        return self

    # -- lookups ------------------------------------------------------------------------------------------
    def stage(self, name: str) -> Any:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def stage_index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)


# ---------------------------------------------------------------------------------------------------------
# Meaning: recipes, references, configs


def nest_dotted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``{"schedule.kind": "cpa", "data": {"root": x}} -> {"schedule": {"kind": "cpa"}, "data": {...}}``.

    Raises:
        ValueError: two keys set the same field (``schedule`` and ``schedule.kind``, say).
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{key}: conflicts with {part!r} set to a value")
            node = child
        leaf = parts[-1]
        if leaf in node and (isinstance(node[leaf], dict) or isinstance(value, dict)):
            merged = dict(node[leaf]) if isinstance(node[leaf], dict) else None
            if merged is None or not isinstance(value, dict):
                raise ValueError(f"{key}: set twice")
            merged.update(nest_dotted(value))
            node[leaf] = merged
        elif leaf in node:
            raise ValueError(f"{key}: set twice")
        else:
            node[leaf] = nest_dotted(value) if isinstance(value, dict) else value
    return out


def sweep_points(stage: Any) -> list[dict[str, Any]]:
    """The grid of a stage's ``sweep`` axes in spec order (the last axis varies fastest); ``[{}]`` if none."""
    sweep = getattr(stage, "sweep", {}) or {}
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def _config_issue(err: ConfigError, path: str, value: Any = None, *, field: str | None = None) -> Issue:
    """A ConfigError (``<field>: must be <rule>, got <value>``) located at the spec ``path``.

    ``field``: the config field the spec path sets; when the error names another field (a cross-field
    rule), that field is kept in the rule so the message still says what broke.
    """
    msg = str(err)
    head, sep, rest = msg.partition(": ")
    if not sep or " " in head:
        return Issue(path, msg, _show(value))
    rule, got_sep, got = rest.rpartition(", got ")
    if not got_sep:
        rule, got = rest, _show(value)
    if field is None:
        path = f"{path}.{head}" if path else head
        if not got_sep:
            rule, got = rest, _show(_dig(value, head))
    elif head != field:
        rule = f"{head}: {rule}"
    return Issue(path, rule, got)


def _dig(value: Any, dotted: str) -> Any:
    """``value["a"]["b"]`` for ``"a.b"`` where it exists, else ``value``."""
    node = value
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    return node


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _recipe_issue(stage: Any, where: str) -> Issue | None:
    wanted = RECIPE_KINDS[stage.kind]
    matching = [n for n in list_recipes() if get_recipe(n).kind == wanted]
    if stage.recipe not in list_recipes():
        return Issue(f"{where}.recipe", f"must be a registered {wanted} recipe; known: {matching}",
                     _show(stage.recipe))  # fmt: skip
    actual = get_recipe(stage.recipe).kind
    if actual != wanted:
        return Issue(
            f"{where}.recipe",
            f"{_a(stage.kind)} stage needs {_a(wanted)} recipe, this one is {_a(actual)} recipe; "
            f"{wanted} recipes: {matching}",
            _show(stage.recipe),
        )
    return None


def _data_overrides(spec: ExperimentSpec) -> dict[str, Any]:
    data = {k: v for k, v in (("dataset", spec.data.dataset), ("root", spec.data.root)) if v is not None}
    return {"data": data} if data else {}


def stage_base_config(spec: ExperimentSpec, stage: Any) -> TrainConfig:
    """The stage's recipe with the spec's data defaults and the stage's overrides applied (no axes, no seed).

    Raises:
        SpecError: the recipe or an override is invalid (a validated spec never raises).
    """
    config, issues = _base_config(spec, stage, f"stages[{spec.stage_index(stage.name)}]")
    if config is None:
        raise SpecError(issues)
    return config


def _base_config(spec: ExperimentSpec, stage: Any, where: str) -> tuple[TrainConfig | None, list[Issue]]:
    config = get_recipe(stage.recipe)
    data = _data_overrides(spec)
    if data:
        try:
            config = with_overrides(config, data)
        except ConfigError as err:
            return None, [_config_issue(err, "", data)]
    try:
        overrides = nest_dotted(stage.overrides)
    except ValueError as err:
        return None, [Issue(f"{where}.overrides", str(err), _show(stage.overrides))]
    reserved = [k for k in overrides if k in _RESERVED_FIELDS]
    if reserved:
        key = reserved[0]
        rule = f"is not set through overrides; use {_RESERVED_FIELDS[key]}"
        return None, [Issue(f"{where}.overrides.{key}", rule, _show(overrides[key]))]
    try:
        config = with_overrides(config, overrides)
    except ConfigError as err:
        return None, [_config_issue(err, f"{where}.overrides", overrides)]
    issues = []
    for field, rule, value in _registered_names(config):
        # A name the stage did not set came from the spec's data defaults (or the recipe).
        set_here = _dig(overrides, field) is not overrides
        if set_here:
            at = f"{where}.overrides.{field}"
        else:
            at = field if field.startswith("data.") else f"{where}.recipe"
        issues.append(Issue(at, rule, value))
    return (config if not issues else None), issues


def _registered_names(config: TrainConfig) -> list[tuple[str, str, str]]:
    """Names the config types cannot check themselves: the search space, the data set, the op set."""
    from search_spaces.ops import OP_SETS
    from search_spaces.spaces import list_search_spaces
    from trainers.data import get_dataset_info, list_datasets

    out = []
    if config.data.dataset not in list_datasets():
        out.append(("data.dataset", f"must be a registered data set; known: {list_datasets()}",
                    _show(config.data.dataset)))  # fmt: skip
    elif get_dataset_info(config.data.dataset).test_only:
        trainable = [d for d in list_datasets() if not get_dataset_info(d).test_only]
        out.append(("data.dataset", f"is test-only (no training split); training data sets: {trainable}",
                    _show(config.data.dataset)))  # fmt: skip
    if config.kind == "cell_search" and config.space not in list_search_spaces():
        known = list_search_spaces()
        out.append(("space", f"must be a registered search space; known: {known}", _show(config.space)))
    if config.kind == "retrain" and config.op_set is not None and config.op_set not in OP_SETS:
        out.append(("op_set", f"must be a registered op set; known: {OP_SETS.names()}", _show(config.op_set)))
    return out


def _sweep_issues(config: TrainConfig, stage: Any, where: str) -> list[Issue]:
    issues: list[Issue] = []
    for key, values in stage.sweep.items():
        at = f"{where}.sweep.{key}"
        try:
            _unique(values)
        except ValueError as err:
            issues.append(Issue(at, str(err), _show(values)))
            continue
        if key.split(".")[0] in _RESERVED_FIELDS:
            first = key.split(".")[0]
            issues.append(Issue(at, f"is not an axis; use {_RESERVED_FIELDS[first]}", _show(values)))
            continue
        for j, value in enumerate(values):
            try:
                axis_config = with_overrides(config, nest_dotted({key: value}))
            except ConfigError as err:
                if "unknown field" in str(err):  # one line per unknown key, not one per value
                    issues.append(_config_issue(err, at, values, field=key))
                    break
                issues.append(_config_issue(err, f"{at}[{j}]" if len(values) > 1 else at, value, field=key))
                continue
            issues.extend(Issue(f"{at}[{j}]" if len(values) > 1 else at, r, v)
                          for p, r, v in _registered_names(axis_config) if p == key)  # fmt: skip
    if issues or len(stage.sweep) < 2:
        return issues
    for point in sweep_points(stage):  # each value is fine alone; combinations may still clash
        try:
            with_overrides(config, nest_dotted(point))
        except ConfigError as err:
            issues.append(Issue(f"{where}.sweep", f"the combination {point} is invalid: {err}", _show(point)))
    return issues


def _arch_name_issues(stage: Any, where: str, config: TrainConfig | None) -> list[Issue]:
    from search_spaces.genotypes import get_published

    issues: list[Issue] = []
    op_set = getattr(config, "op_set", None) if config is not None else None
    for j, ref in enumerate(getattr(stage, "genotypes", [])):
        at = f"{where}.genotypes[{j}]"
        if isinstance(ref, str):
            if ref not in list_published():
                rule = f"must be a published genotype; known: {list_published()}"
                issues.append(Issue(at, rule, _show(ref)))
            elif op_set is not None:
                try:
                    get_published(ref).genotype.validate(op_set)
                except GenotypeError as err:
                    issues.append(Issue(at, f"op_set {op_set!r}: {err}", _show(ref)))
            continue
        try:
            # Inline genotypes train with the stage's op_set, else the 'sharp' ops (as trainers.retrain).
            Genotype.from_dict(ref.model_dump(exclude_none=True)).validate(op_set or "sharp")
        except GenotypeError as err:
            issues.append(Issue(at, str(err), _show(ref.model_dump(exclude_none=True))))
    refs = [(f"paths[{j}]", r) for j, r in enumerate(getattr(stage, "paths", []))]
    refs += [(f"candidates[{j}]", r) for j, r in enumerate(getattr(stage, "candidates", []))]
    for field_name, ref in refs:
        at = f"{where}.{field_name}"
        if isinstance(ref, str):
            if ref not in list_published_paths():
                rule = f"must be a published path; known: {list_published_paths()}"
                issues.append(Issue(at, rule, _show(ref)))
        elif isinstance(ref, InlinePath):
            try:
                HyperCuboidPath.from_dict(ref.model_dump())
            except PathError as err:
                issues.append(Issue(at, str(err), _show(ref.model_dump())))
    return issues


def check_spec(spec: ExperimentSpec) -> list[Issue]:
    """Every problem of meaning in a shape-valid spec (empty when it is valid). Called by validation."""
    issues: list[Issue] = []
    index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        if stage.name in index:
            rule = f"must be unique; stages[{index[stage.name]}] has the same name"
            issues.append(Issue(f"stages[{i}].name", rule, _show(stage.name)))
        else:
            index[stage.name] = i
    if spec.data.dataset is not None:
        from trainers.data import list_datasets

        if spec.data.dataset not in list_datasets():
            issues.append(Issue("data.dataset", f"must be a registered data set; known: {list_datasets()}",
                                _show(spec.data.dataset)))  # fmt: skip
    for i, stage in enumerate(spec.stages):
        issues.extend(_check_stage(spec, i, stage, index))
    # A bad data default shows up once per stage that uses it; say it once.
    return list(dict.fromkeys(issues))


def _check_stage(spec: ExperimentSpec, i: int, stage: Any, index: dict[str, int]) -> list[Issue]:
    where = f"stages[{i}]"
    issues: list[Issue] = []
    upstream = _check_from(spec, i, stage, index, issues)
    if stage.kind == "evaluate":
        issues.extend(_check_evaluate(spec, stage, where, upstream))
        return issues
    recipe_issue = _recipe_issue(stage, where)
    if recipe_issue is not None:
        return issues + [recipe_issue]
    config, config_issues = _base_config(spec, stage, where)
    issues.extend(config_issues)
    if config is not None:
        issues.extend(_sweep_issues(config, stage, where))
    if stage.kind in ("retrain", "grid"):
        issues.extend(_arch_name_issues(stage, where, config))
    if stage.kind == "retrain" and not (stage.from_ or stage.genotypes or stage.paths):
        default = getattr(config, "genotype", None) or getattr(config, "path", None) if config else None
        issues.append(Issue(where, "a retrain stage names what it trains: from:, genotypes: or paths: "
                                   f"(the recipe's default is {default!r})", _show(stage.name)))  # fmt: skip
    if stage.kind == "grid":
        issues.extend(_check_grid(stage, where, config))
    if stage.kind == "retrain" and stage.workers > 1 and config is not None:
        issues.extend(_check_workers(stage, where, config))
    return issues


def _check_workers(stage: RetrainStage, where: str, config: TrainConfig) -> list[Issue]:
    """The global batch of every sweep point must split evenly over the stage's DDP workers."""
    issues: list[Issue] = []
    for point in sweep_points(stage):
        try:
            batch = with_overrides(config, nest_dotted(point)).data.batch_size
        except ConfigError:
            continue  # reported by _sweep_issues
        if batch % stage.workers:
            swept = "data.batch_size" in point
            rule = (f"data.batch_size is the global batch and must split evenly over the {stage.workers} workers "
                    f"(a multiple of {stage.workers})")  # fmt: skip
            issues.append(Issue(f"{where}.sweep.data.batch_size" if swept else f"{where}.workers", rule,
                                f"data.batch_size {batch} over workers {stage.workers}"))  # fmt: skip
    return list(dict.fromkeys(issues))


def _check_from(spec: ExperimentSpec, i: int, stage: Any, index: dict[str, int], issues: list[Issue]) -> Any:
    ref = getattr(stage, "from_", None)
    if ref is None:
        return None
    at = f"stages[{i}].from.stage"
    names = [s.name for s in spec.stages]
    if ref.stage not in index:
        issues.append(Issue(at, f"must name an earlier stage of {stage.name!r}; no stage has that name "
                                f"(stages: {names})", _show(ref.stage)))  # fmt: skip
        return None
    j = index[ref.stage]
    if j >= i:
        rule = (f"must name an earlier stage: stage {stage.name!r} (stages[{i}]) refers to {ref.stage!r} "
                f"(stages[{j}]), which {'is itself' if j == i else 'comes later'}")  # fmt: skip
        issues.append(Issue(at, rule, _show(ref.stage)))
        return None
    upstream = spec.stages[j]
    allowed = UPSTREAM_KINDS[stage.kind]
    if upstream.kind not in allowed:
        issues.append(Issue(at, f"{_a(stage.kind)} stage takes results of {list(allowed)} stages; "
                                f"{ref.stage!r} is a {upstream.kind} stage", _show(ref.stage)))  # fmt: skip
        return None
    if ref.parse == "no_hack" and upstream.kind != "cell_search":
        rule = f"applies to cell searches; {ref.stage!r} is {_a(upstream.kind)} stage"
        issues.append(Issue(f"stages[{i}].from.parse", rule, _show(ref.parse)))
    return upstream


def _check_grid(stage: GridStage, where: str, config: TrainConfig | None) -> list[Issue]:
    issues: list[Issue] = []
    needs_grid = stage.optuna is not None or any(isinstance(c, RandomPaths) for c in stage.candidates)
    if needs_grid and (stage.channels is None or stage.layers is None):
        missing = [f for f in ("channels", "layers") if getattr(stage, f) is None]
        rule = "random candidates and optuna draw from the stage's grid, so channels and layers are required"
        issues.append(Issue(f"{where}.{missing[0]}", rule, "nothing"))
    if stage.optuna is not None:
        fixed = [f for f in ("candidates", "paths") if getattr(stage, f)] + (["from"] if stage.from_ else [])
        if fixed:
            rule = f"searches the grid instead of fixed candidates; remove {fixed} or use a second grid stage"
            issues.append(Issue(f"{where}.optuna", rule, _show(stage.optuna.model_dump())))
        if stage.sweep:
            issues.append(Issue(f"{where}.sweep", "is not combined with optuna (one search per stage)",
                                _show(stage.sweep)))  # fmt: skip
        if len(stage.seeds) != 1:
            rule = ("an optuna stage trains each suggested path once (one seed); retrain the best over seeds "
                    "with a retrain stage `from: {stage: <this>, top: K}`")  # fmt: skip
            issues.append(Issue(f"{where}.seeds", rule, _show(stage.seeds)))
    elif not (stage.candidates or stage.paths or stage.from_):
        rule = "a grid stage needs candidates:, paths:, from: or optuna:"
        issues.append(Issue(where, rule, _show(stage.name)))
    if stage.asha is not None and config is not None and stage.asha.grace_period > config.epochs:
        issues.append(Issue(f"{where}.asha.grace_period", f"must be <= the stage's epochs ({config.epochs})",
                            _show(stage.asha.grace_period)))  # fmt: skip
    return issues


def _check_evaluate(spec: ExperimentSpec, stage: EvaluateStage, where: str, upstream: Any) -> list[Issue]:
    from trainers.data import get_dataset_info, list_datasets

    issues: list[Issue] = []
    trained_on = None
    if upstream is not None and upstream.kind != "evaluate" and _recipe_issue(upstream, "") is None:
        config, _ = _base_config(spec, upstream, "")
        trained_on = config.data.dataset if config is not None else None
    for j, name in enumerate(stage.datasets):
        at = f"{where}.datasets[{j}]"
        if name not in list_datasets():
            issues.append(Issue(at, f"must be a registered data set; known: {list_datasets()}", _show(name)))
            continue
        if trained_on in list_datasets():
            a, b = get_dataset_info(name), get_dataset_info(trained_on)
            if (a.in_channels, a.num_classes) != (b.in_channels, b.num_classes):
                rule = (f"must match the images and classes of {trained_on!r}, which stage {upstream.name!r} "
                        f"trains on ({b.in_channels} channels, {b.num_classes} classes; this one has "
                        f"{a.in_channels}, {a.num_classes})")  # fmt: skip
                issues.append(Issue(at, rule, _show(name)))
    return issues


# ---------------------------------------------------------------------------------------------------------
# Loading and the JSON Schema


def load_spec(
    source: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None
) -> ExperimentSpec:
    """Reads and validates a spec: a YAML file path, or YAML text (anything containing a newline or ``:``).

    Args:
        source: a ``.yaml`` / ``.yml`` / ``.json`` file, or the YAML text itself.
        base_dir: the folder relative local paths resolve against; default: the file's folder, or the
            current folder for text.

    Returns:
        The frozen, validated :class:`ExperimentSpec`.

    Raises:
        SpecError: the YAML does not parse, or the spec breaks a rule (every problem listed).
        FileNotFoundError: ``source`` looks like a file path and there is no such file.
    """
    text, origin = _read_source(source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = Issue("<yaml>", f"does not parse: {err}".replace("\n", " "), "the text")
        raise SpecError([problem], origin) from None
    if not isinstance(data, dict):
        raise SpecError([Issue("<spec>", "must be a mapping with name, stages, ...", _show(data))], origin)
    folder = Path(base_dir) if base_dir is not None else (Path(origin).parent if origin else Path.cwd())
    try:
        return ExperimentSpec.model_validate(data, context={"base_dir": str(folder.absolute())})
    except ValidationError as err:
        raise SpecError(_issues_from_validation(err), origin) from None


def _read_source(source: str | os.PathLike[str]) -> tuple[str, str | None]:
    """(text, file name or None): a path-like or a one-line ``*.yaml|yml|json`` string is a file."""
    text = os.fspath(source)
    is_file = isinstance(source, os.PathLike) or (
        "\n" not in text and (text.endswith((".yaml", ".yml", ".json")) or Path(text).is_file())
    )
    if not is_file:
        return text, None
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"spec file {text!r} does not exist")
    return path.read_text(encoding="utf-8"), text


def schema_text() -> str:
    """The JSON Schema of :class:`ExperimentSpec`, as shipped in ``nas_service/schemas/``."""
    schema = ExperimentSpec.model_json_schema()
    header = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "experiment.schema.json"}
    schema = {**header, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> Path:
    """Writes :func:`schema_text` to ``path`` (default: the shipped file): ``python -m nas_service.spec``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(schema_text(), encoding="utf-8")
    return target


if __name__ == "__main__":  # pragma: no cover
    print(write_schema(sys.argv[1] if len(sys.argv) > 1 else SCHEMA_PATH))
