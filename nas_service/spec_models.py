"""The shared pieces of experiment specs: errors, the pydantic base model, the value models that several
stage kinds use (resources, ``from:`` references, inline genotypes and paths), the base of every stage
model, and the rules that build and check a training stage's config.

The stage models themselves live with their stage kinds (:mod:`nas_service.stage_kinds`); the experiment
model that holds them is :class:`nas_service.spec.ExperimentSpec`. Every problem becomes one
:class:`Issue`: ``<path>: <rule> (got <value>)``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from search_spaces.genotypes import Genotype, GenotypeError, list_published
from search_spaces.paths import HYPERCUBOID_OPS, HyperCuboidPath, PathError, list_published_paths
from trainers.config import ConfigError, TrainConfig, config_to_dict, with_overrides
from trainers.recipes import get_recipe, list_recipes

from .location import NAME_RE, is_uri, name_problem

if TYPE_CHECKING:
    from .spec import ExperimentSpec

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
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]


def _folder_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# Experiment and stage names name folders: the one rule of names (nas_service.location), which the results store
# checks too, so `validate`, `plan` and `run` accept and refuse the same names.
Name = Annotated[str, Field(json_schema_extra={"pattern": NAME_RE.pattern}), AfterValidator(_folder_name)]


def _in_range(high: int, shown: str, why: str) -> AfterValidator:
    """An integer in ``[0, high]``, refused with a message that says why (pydantic's ``le`` would not)."""

    def check(value: int) -> int:
        if not 0 <= value <= high:
            raise ValueError(f"must be in [0, {shown}] ({why})")
        return value

    return AfterValidator(check)


# A trial's seed seeds torch (torch.manual_seed takes up to 2**64 - 1) and the results store keeps it as a
# non-negative 64-bit integer; trainers.config refuses a config's seed outside the same range. The data order and
# augmentation seeds are hashed from it (trainers.data.seed_for), so they take any of these.
SEED_MAX = 2**63 - 1
Seed = Annotated[
    int, Strict(), Field(json_schema_extra={"minimum": 0, "maximum": SEED_MAX}),
    _in_range(SEED_MAX, "2**63 - 1", "torch seeds from it and the results store keeps it as a non-negative 64-bit "
                                     "integer"),
]  # fmt: skip
# Optuna's samplers seed numpy's RandomState with it, which takes 0..2**32 - 1.
OPTUNA_SEED_MAX = 2**32 - 1
OptunaSeed = Annotated[
    int, Strict(), Field(json_schema_extra={"minimum": 0, "maximum": OPTUNA_SEED_MAX}),
    _in_range(OPTUNA_SEED_MAX, "2**32 - 1", "Optuna seeds numpy's RandomState with it, which takes 32 bits"),
]  # fmt: skip

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
        if len(self.issues) == 1:  # one problem, one line (the CLI prints errors as one line)
            super().__init__(f"invalid experiment spec{where}: {self.issues[0]}")
            return
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"invalid experiment spec{where} ({len(self.issues)} problem(s)):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) with its issues intact
        return (type(self), (self.issues, self.source))


def show(value: Any, limit: int = 160) -> str:
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


def issues_from_validation(err: ValidationError) -> list[Issue]:
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
            issues.append(Issue(_join(*loc, ctx["field"]), e["msg"], show(ctx["value"])))
            continue
        if kind == "stage_kind":
            value = e["input"].get("kind") if isinstance(e["input"], dict) else e["input"]
            path = _join(*loc, "kind") if isinstance(e["input"], dict) else _join(*loc)
            issues.append(Issue(path, e["msg"], show(value)))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if kind == "missing":
            issues.append(Issue(_join(*loc), "required field is missing", "nothing"))
        else:
            issues.append(Issue(_join(*loc), msg[:1].lower() + msg[1:], show(e["input"])))
    return issues


# ---------------------------------------------------------------------------------------------------------
# Shape: the pydantic models


class SpecModel(BaseModel):
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


def resolve_local(value: str | None, info: ValidationInfo) -> str | None:
    """A local path made absolute against the spec's folder (``context["base_dir"]``); URIs unchanged."""
    if value is None or is_uri(value):
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return os.path.normpath(path) if (path.is_absolute() or base is not None) else value


class DataDefaults(SpecModel):
    """Data defaults applied to every training stage's config (``data.dataset``, ``data.root``)."""

    dataset: str | None = Field(None, description="a registered data set: digits, cifar10, imagenet")
    root: str | None = Field(
        None, description="folder with the data set's files; relative: against the spec file's folder"
    )

    @field_validator("root")
    @classmethod
    def _resolve_root(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_local(v, info)


# A memory size as Kubernetes and Ray write them: K/M/G/T are powers of 1000 (a trailing B is optional),
# Ki/Mi/Gi/Ti powers of 1024; a plain integer is bytes.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")  # also the schema's pattern
_SIZE_UNITS = {"": 1, **{u: 1000 ** (i + 1) for i, u in enumerate("kmgt")},
               **{f"{u}i": 1024 ** (i + 1) for i, u in enumerate("kmgt")}}  # fmt: skip
SIZE_RULE = "must be a size such as 512MiB, 4GiB or 2G (K/M/G/T: powers of 1000; Ki/Mi/Gi/Ti: of 1024) or bytes"


def parse_size(value: Any) -> int | None:
    """Bytes from a size as a spec writes it (``512MiB``, ``4GiB``, ``2G``, or an integer of bytes); None stays.

    Raises:
        ValueError: not a size, or not above 0 (the message is :data:`SIZE_RULE`).
    """
    if value is None:
        return None
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        size = int(float(match[1]) * _SIZE_UNITS[(match[2] or "").lower()])
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(SIZE_RULE)
    if size <= 0:
        raise ValueError("must be above 0 (leave it out to reserve none)")
    return size


MemorySize = Annotated[int | None, WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 1}, {"type": "string", "pattern": _SIZE_RE.pattern}, {"type": "null"}]})]


class Resources(SpecModel):
    """What one trial holds while it runs; concurrency follows (see ``planner.max_concurrent_trials``)."""

    cpu: StrictFloat = Field(1.0, ge=0, description="CPUs per trial")
    gpu: StrictFloat = Field(0.0, ge=0, description="GPUs per trial (fractions below 1 share a GPU)")
    memory: MemorySize = Field(
        None, description="memory Ray reserves per trial (per worker in resources_per_worker), e.g. 4GiB, 512MiB, "
        "2G or bytes: Ray places no more trials on a node than its memory holds (a reservation, not a limit)",
    )  # fmt: skip

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int | None:
        return parse_size(v)

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


class FromRef(SpecModel):
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


class InlineGenotype(SpecModel):
    """A genotype written out: two ``[op, input]`` edges per node for the normal and reduction cells."""

    normal: list[tuple[str, StrictInt]] = Field(min_length=2)
    reduce: list[tuple[str, StrictInt]] = Field(min_length=2)
    normal_concat: list[StrictInt] | None = None
    reduce_concat: list[StrictInt] | None = None


_HyperCuboidOp = Literal[HYPERCUBOID_OPS]  # type: ignore[valid-type]


class InlinePath(SpecModel):
    """A HyperCuboid path written out: the stem width, then ``[stride, c_in, c_out, op]`` per stage."""

    stem_channels: PositiveInt
    stages: list[tuple[Literal[1, 2], PositiveInt, PositiveInt, _HyperCuboidOp]] = Field(min_length=2)
    head_channels: PositiveInt = 768
    label: str | None = Field(None, min_length=1, pattern=r"^[^\s=]+$",
                              description="the path's name in plans and reports (path=<label>); not part of the path")

    def path(self) -> HyperCuboidPath:
        """The path itself (the label is only its name)."""
        return HyperCuboidPath.from_dict(self.model_dump(exclude={"label"}))


class RandomPaths(SpecModel):
    """``N`` uniformly random paths on the grid stage's ``channels`` x ``layers``, drawn from ``seed``."""

    random: PositiveInt = Field(description="how many random paths")
    seed: Seed = Field(0, description="the draw's seed: the same seed gives the same paths")


class OptunaSpec(SpecModel):
    """An Optuna search over the grid stage's HyperCuboid grid: stem width, and width and op per stage."""

    trials: PositiveInt
    seed: OptunaSeed = 0


class AshaSpec(SpecModel):
    """ASHA early stopping for a grid stage; the mode follows the metric (losses: min, accuracies: max)."""

    grace_period: PositiveInt = Field(1, description="epochs every trial runs before it can be stopped")
    reduction_factor: StrictFloat = Field(4.0, gt=1)
    metric: Literal[RETRAIN_METRICS] = "valid_top1"  # type: ignore[valid-type]

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric.endswith("loss") else "max"


def unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"must be distinct; {v!r} appears twice")
        seen.append(v)
    return values


class StageBase(SpecModel):
    name: Name = Field(description="unique within the experiment; names the stage's folder")


class TrainStageBase(StageBase):
    recipe: str = Field(description="a named config of trainers.config whose kind matches the stage")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="config fields, nested or dotted (data.batch_size); lists here are values, never axes",
    )
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="the axes: dotted config field -> list of values (a grid over all)"
    )
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, description="an axis")
    baseline: str | None = Field(
        None, description="the arm the report compares the stage's other arms with: its label as `plan` shows "
        "it (e.g. genotype=DARTS_V2) or its arm id; `report --baseline` overrides it",
    )  # fmt: skip

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        return unique(v)



GenotypeRef = Annotated[
    Union[Annotated[str, Tag("@name")], Annotated[InlineGenotype, Tag("@inline")]],
    Discriminator(lambda v: "@name" if isinstance(v, str) else "@inline"),
]
PathRef = Annotated[
    Union[Annotated[str, Tag("@name")], Annotated[InlinePath, Tag("@inline")]],
    Discriminator(lambda v: "@name" if isinstance(v, str) else "@inline"),
]


def _candidate_tag(v: Any) -> str:
    # Raw input when validating, the model itself when serializing (the spec kept with the results).
    if isinstance(v, str):
        return "@name"
    return "@random" if isinstance(v, RandomPaths) or isinstance(v, dict) and "random" in v else "@inline"


Candidate = Annotated[
    Union[
        Annotated[str, Tag("@name")],
        Annotated[InlinePath, Tag("@inline")],
        Annotated[RandomPaths, Tag("@random")],
    ],
    Discriminator(_candidate_tag),
]


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


def config_issue(err: ConfigError, path: str, value: Any = None, *, field: str | None = None) -> Issue:
    """A ConfigError located at the spec ``path`` (``value``: what the spec wrote there).

    ``field``: the config field the spec path sets; when the error names another field (a cross-field
    rule), that field is kept in the rule so the message still says what broke.
    """
    if " " in err.path:  # a rule over several fields ("learning rates"): the message says it all
        return Issue(path, str(err), show(value))
    rule = err.rule
    if field is None:
        path = f"{path}.{err.path}" if path else err.path
        got = err.got if err.got is not None else show(_dig(value, err.path))
    else:
        got = err.got if err.got is not None else show(value)
        if err.path != field:
            rule = f"{err.path}: {rule}"
    return Issue(path, rule, got)


def _dig(value: Any, dotted: str) -> Any:
    """``value["a"]["b"]`` for ``"a.b"`` where it exists, else ``value``."""
    node = value
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    return node


def article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def recipe_issue(stage: Any, where: str, wanted: str) -> Issue | None:
    """The stage's recipe must exist and be a ``wanted`` config (a stage kind's ``recipe_kind``)."""
    matching = [n for n in list_recipes() if get_recipe(n).kind == wanted]
    if stage.recipe not in list_recipes():
        return Issue(f"{where}.recipe", f"must be a registered {wanted} recipe; known: {matching}",
                     show(stage.recipe))  # fmt: skip
    actual = get_recipe(stage.recipe).kind
    if actual != wanted:
        return Issue(
            f"{where}.recipe",
            f"{article(stage.kind)} stage needs {article(wanted)} recipe, this one is {article(actual)} recipe; "
            f"{wanted} recipes: {matching}",
            show(stage.recipe),
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
    config, issues = base_config(spec, stage, f"stages[{spec.stage_index(stage.name)}]")
    if config is None:
        raise SpecError(issues)
    return config


def base_config(spec: ExperimentSpec, stage: Any, where: str) -> tuple[TrainConfig | None, list[Issue]]:
    config = get_recipe(stage.recipe)
    data = _data_overrides(spec)
    if data:
        try:
            config = with_overrides(config, data)
        except ConfigError as err:
            return None, [config_issue(err, "", data)]
    try:
        overrides = nest_dotted(stage.overrides)
    except ValueError as err:
        return None, [Issue(f"{where}.overrides", str(err), show(stage.overrides))]
    reserved = [k for k in overrides if k in _RESERVED_FIELDS]
    if reserved:
        key = reserved[0]
        rule = f"is not set through overrides; use {_RESERVED_FIELDS[key]}"
        return None, [Issue(f"{where}.overrides.{key}", rule, show(overrides[key]))]
    try:
        config = with_overrides(config, overrides)
    except ConfigError as err:
        return None, [_override_issue(err, config, overrides, f"{where}.overrides", _origin(spec, stage))]
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


def _origin(spec: ExperimentSpec, stage: Any, overrides: Mapping[str, Any] | None = None,
            where: str = "") -> Callable[[str], str]:  # fmt: skip
    """Where a config field's value came from, in words: the stage's overrides, the spec's data defaults, or
    the recipe."""

    def origin(field: str) -> str:
        if overrides is not None and _dig(overrides, field) is not overrides:
            return f"{where}.overrides"
        if field in ("data.dataset", "data.root") and getattr(spec.data, field[len("data."):]) is not None:
            return "the spec's data defaults"
        return f"recipe {stage.recipe}"

    return origin


def _conflict(err: ConfigError, config: TrainConfig, origin: Callable[[str], str]) -> str:
    """The rule of a cross-field ``err`` (CPA's ``schedule.warmup_epochs < epochs``) told from the side of the
    other field, which the user wrote: ``err.path`` names the field the user did not write."""
    current = _dig(config_to_dict(config), err.path)
    return (f"conflicts with {err.path} ({current!r}, from {origin(err.path)}): {err.path} {err.rule}; "
            f"set {err.path} too, or choose another value")  # fmt: skip


def _leaves(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"schedule": {"kind": "cpa"}, "epochs": 3}`` -> ``[("schedule.kind", "cpa"), ("epochs", 3)]``."""
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        out.extend(_leaves(value, f"{dotted}.") if isinstance(value, dict) and value else [(dotted, value)])
    return out


def _override_issue(err: ConfigError, before: TrainConfig, overrides: dict[str, Any], at: str,
                    origin: Callable[[str], str]) -> Issue:  # fmt: skip
    """A ConfigError from applying ``overrides`` to ``before``, located at a field the user wrote.

    A rule over two fields names one of them (``schedule.warmup_epochs: must be < epochs``). When the user did
    not write that one (it came from the recipe), the issue goes to the override that breaks the rule
    (``overrides.epochs``) and says where the other value came from.
    """
    if " " in err.path or _dig(overrides, err.path) is not overrides:
        return config_issue(err, at, overrides)  # the user wrote the field (or a rule over several fields)
    for leaf, value in _leaves(overrides):
        try:
            with_overrides(before, nest_dotted({leaf: value}))
        except ConfigError as alone:
            if alone.path == err.path:
                return Issue(f"{at}.{leaf}", _conflict(err, before, origin), show(value))
    # Only the overrides together break it: say so at the overrides, with the value from the recipe.
    return Issue(at, f"together {_conflict(err, before, origin)}", show(overrides))


def _registered_names(config: TrainConfig) -> list[tuple[str, str, str]]:
    """Names the config types cannot check themselves: the search space, the data set, the op set."""
    from search_spaces.names import OP_NAMES
    from search_spaces.spaces import list_search_spaces
    from trainers.dataset_shapes import DATASET_SHAPES

    out = []
    if config.data.dataset not in DATASET_SHAPES:
        out.append(("data.dataset", f"must be a registered data set; known: {DATASET_SHAPES.names()}",
                    show(config.data.dataset)))  # fmt: skip
    elif DATASET_SHAPES.get(config.data.dataset).test_only:
        trainable = [name for name, shape in DATASET_SHAPES.items() if not shape.test_only]
        out.append(("data.dataset", f"is test-only (no training split); training data sets: {trainable}",
                    show(config.data.dataset)))  # fmt: skip
    if config.kind == "cell_search" and config.space not in list_search_spaces():
        known = list_search_spaces()
        out.append(("space", f"must be a registered search space; known: {known}", show(config.space)))
    if config.kind == "retrain" and config.op_set is not None and config.op_set not in OP_NAMES:
        out.append(("op_set", f"must be a registered op set; known: {OP_NAMES.names()}", show(config.op_set)))
    return out


def sweep_issues(config: TrainConfig, stage: Any, where: str,
                 origin: Callable[[str], str] | None = None) -> list[Issue]:  # fmt: skip
    """Every sweep value must build a config, alone and in combination; ``origin`` (see :func:`_origin`) says
    where a field the axis conflicts with got its value."""
    issues: list[Issue] = []
    for key, values in stage.sweep.items():
        at = f"{where}.sweep.{key}"
        try:
            unique(values)
        except ValueError as err:
            issues.append(Issue(at, str(err), show(values)))
            continue
        if key.split(".")[0] in _RESERVED_FIELDS:
            first = key.split(".")[0]
            issues.append(Issue(at, f"is not an axis; use {_RESERVED_FIELDS[first]}", show(values)))
            continue
        for j, value in enumerate(values):
            try:
                axis_config = with_overrides(config, nest_dotted({key: value}))
            except ConfigError as err:
                if "unknown field" in str(err):  # one line per unknown key, not one per value
                    issues.append(config_issue(err, at, values, field=key))
                    break
                at_value = f"{at}[{j}]" if len(values) > 1 else at
                inside = err.path == key or err.path.startswith(f"{key}.")
                if origin is not None and " " not in err.path and not inside:
                    # a rule over this axis and a field the stage does not sweep (CPA's warmup vs epochs)
                    issues.append(Issue(at_value, _conflict(err, config, origin), show(value)))
                else:
                    issues.append(config_issue(err, at_value, value, field=key))
                continue
            issues.extend(Issue(f"{at}[{j}]" if len(values) > 1 else at, r, v)
                          for p, r, v in _registered_names(axis_config) if p == key)  # fmt: skip
    if issues or len(stage.sweep) < 2:
        return issues
    for point in sweep_points(stage):  # each value is fine alone; combinations may still clash
        try:
            with_overrides(config, nest_dotted(point))
        except ConfigError as err:
            issues.append(Issue(f"{where}.sweep", f"the combination {point} is invalid: {err}", show(point)))
    return issues


def path_refs(stage: Any) -> list[tuple[str, Any]]:
    """The paths a stage names itself, by field: ``("paths[0]", ref)``, ``("candidates[2]", ref)``, ..."""
    refs = [(f"paths[{j}]", r) for j, r in enumerate(getattr(stage, "paths", []))]
    return refs + [(f"candidates[{j}]", r) for j, r in enumerate(getattr(stage, "candidates", []))]


def arch_name_issues(stage: Any, where: str, config: TrainConfig | None) -> list[Issue]:
    from search_spaces.genotypes import get_published

    issues: list[Issue] = []
    op_set = getattr(config, "op_set", None) if config is not None else None
    for j, ref in enumerate(getattr(stage, "genotypes", [])):
        at = f"{where}.genotypes[{j}]"
        if isinstance(ref, str):
            if ref not in list_published():
                rule = f"must be a published genotype; known: {list_published()}"
                issues.append(Issue(at, rule, show(ref)))
            elif op_set is not None:
                try:
                    get_published(ref).genotype.validate(op_set)
                except GenotypeError as err:
                    issues.append(Issue(at, f"op_set {op_set!r}: {err}", show(ref)))
            continue
        try:
            # Inline genotypes train with the stage's op_set, else the 'sharp' ops (as trainers.retrain).
            Genotype.from_dict(ref.model_dump(exclude_none=True)).validate(op_set or "sharp")
        except GenotypeError as err:
            issues.append(Issue(at, str(err), show(ref.model_dump(exclude_none=True))))
    for field_name, ref in path_refs(stage):
        at = f"{where}.{field_name}"
        if isinstance(ref, str):
            if ref not in list_published_paths():
                rule = f"must be a published path; known: {list_published_paths()}"
                issues.append(Issue(at, rule, show(ref)))
        elif isinstance(ref, InlinePath):
            try:
                ref.path()
            except PathError as err:
                issues.append(Issue(at, str(err), show(ref.model_dump(exclude_none=True))))
    return issues




def train_stage_config(spec: ExperimentSpec, stage: Any, where: str,
                       recipe_kind: str) -> tuple[TrainConfig | None, list[Issue], bool]:  # fmt: skip
    """The common rules of a stage that trains a recipe: the recipe, its overrides and every sweep value.

    Returns:
        ``(config, issues, recipe_ok)``: the stage's base config (None when it does not build), the
        problems found, and whether the recipe itself is usable (kind rules that need it stop otherwise).
    """
    problem = recipe_issue(stage, where, recipe_kind)
    if problem is not None:
        return None, [problem], False
    config, issues = base_config(spec, stage, where)
    if config is not None:
        origin = _origin(spec, stage, nest_dotted(stage.overrides), where)
        issues.extend(sweep_issues(config, stage, where, origin))
    return config, issues, True


def data_overrides_issues(spec: ExperimentSpec) -> list[Issue]:
    """The spec-wide ``data:`` defaults must name a registered data set."""
    from trainers.dataset_shapes import DATASET_SHAPES

    if spec.data.dataset is None or spec.data.dataset in DATASET_SHAPES:
        return []
    known = DATASET_SHAPES.names()
    return [Issue("data.dataset", f"must be a registered data set; known: {known}", show(spec.data.dataset))]
