"""Experiment specs: the YAML a user writes, validated into frozen, typed objects before anything runs.

A spec names an experiment, where its results go, the resources of one trial and a list of stages::

    name: quickstart
    storage: ../runs              # a local folder (relative: against this file's folder) or a URI
    data: {dataset: digits}       # defaults for every stage's data.dataset / data.root
    resources: {cpu: 1, gpu: 0}   # per trial
    retries: 2                    # retries from the last checkpoint for a failing trial
    stages:
      - name: search
        kind: cell_search         # a registered stage kind: nas_service.stage_kinds
        recipe: digits_search     # a named config from trainers.recipes.RECIPES of the matching kind
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

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, GetCoreSchemaHandler, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .spec_models import (  # noqa: F401  (Resources, SpecError, stage_base_config: re-exported)
    DataDefaults, Issue, Name, Resources, SpecError, SpecModel, StrictInt, article, data_overrides_issues,
    issues_from_validation, resolve_local, show, stage_base_config,
)  # fmt: skip
from .stage_kinds import STAGE_KINDS

__all__ = ["ExperimentSpec", "Stage", "SpecError", "load_spec", "load_yaml", "check_spec", "storage_issue",
           "stage_base_config", "schema_text", "write_schema", "SCHEMA_PATH"]  # fmt: skip

SCHEMA_PATH = Path(__file__).parent / "schemas" / "experiment.schema.json"


class Stage:
    """A stage of any registered kind: pydantic picks the kind's ``spec_model`` by the ``kind`` field.

    The union is built from :data:`~nas_service.stage_kinds.STAGE_KINDS` whenever the experiment model is
    built, and rebuilt when a kind is registered, so a new kind validates with no change here.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        from typing import Annotated, Union

        from pydantic import Discriminator, Tag

        members = tuple(Annotated[kind.spec_model, Tag(f"@{name}")] for name, kind in STAGE_KINDS.items())

        def tag(v: Any) -> str | None:
            kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
            return f"@{kind}" if kind in STAGE_KINDS else None

        union = Annotated[Union[members], Discriminator(  # type: ignore[valid-type]
            tag, custom_error_type="stage_kind", custom_error_message=f"must be one of {STAGE_KINDS.names()}")]
        return handler.generate_schema(union)


class ExperimentSpec(SpecModel):
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
        return resolve_local(v, info) or v

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

    @property
    def location(self) -> Any:
        """Where the experiment's files live (:class:`~nas_service.location.ExperimentLocation`)."""
        from .location import ExperimentLocation

        return ExperimentLocation(self.storage, self.name)


STAGE_KINDS.on_change(lambda: ExperimentSpec.model_rebuild(force=True))


# ---------------------------------------------------------------------------------------------------------
# Meaning: the rules that span stages; each kind's own rules are its registry entry's ``check``


def check_spec(spec: ExperimentSpec) -> list[Issue]:
    """Every problem of meaning in a shape-valid spec (empty when it is valid). Called by validation."""
    issues: list[Issue] = []
    index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        if stage.name in index:
            rule = f"must be unique; stages[{index[stage.name]}] has the same name"
            issues.append(Issue(f"stages[{i}].name", rule, show(stage.name)))
        else:
            index[stage.name] = i
    issues.extend(data_overrides_issues(spec))
    for i, stage in enumerate(spec.stages):
        upstream = _check_from(spec, i, stage, index, issues)
        issues.extend(STAGE_KINDS.get(stage.kind).check(spec, stage, f"stages[{i}]", upstream))
    # A bad data default shows up once per stage that uses it; say it once.
    return list(dict.fromkeys(issues))


def _check_from(spec: ExperimentSpec, i: int, stage: Any, index: dict[str, int], issues: list[Issue]) -> Any:
    ref = getattr(stage, "from_", None)
    if ref is None:
        return None
    at = f"stages[{i}].from.stage"
    names = [s.name for s in spec.stages]
    if ref.stage not in index:
        issues.append(Issue(at, f"must name an earlier stage of {stage.name!r}; no stage has that name "
                                f"(stages: {names})", show(ref.stage)))  # fmt: skip
        return None
    j = index[ref.stage]
    if j >= i:
        rule = (f"must name an earlier stage: stage {stage.name!r} (stages[{i}]) refers to {ref.stage!r} "
                f"(stages[{j}]), which {'is itself' if j == i else 'comes later'}")  # fmt: skip
        issues.append(Issue(at, rule, show(ref.stage)))
        return None
    upstream = spec.stages[j]
    allowed = STAGE_KINDS.upstream_kinds(stage.kind)
    if upstream.kind not in allowed:
        issues.append(Issue(at, f"{article(stage.kind)} stage takes results of {allowed} stages; "
                                f"{ref.stage!r} is {article(upstream.kind)} stage", show(ref.stage)))  # fmt: skip
        return None
    if ref.parse not in STAGE_KINDS.get(upstream.kind).parses:
        parsers = [name for name, kind in STAGE_KINDS.items() if ref.parse in kind.parses]
        rule = f"applies to stages of kind {parsers}; {ref.stage!r} is {article(upstream.kind)} stage"
        issues.append(Issue(f"stages[{i}].from.parse", rule, show(ref.parse)))
    return upstream


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
        data = load_yaml(text)
    except SpecError as err:
        raise SpecError(err.issues, origin) from None
    if not isinstance(data, dict):
        raise SpecError([Issue("<spec>", "must be a mapping with name, stages, ...", show(data))], origin)
    folder = Path(base_dir) if base_dir is not None else (Path(origin).parent if origin else Path.cwd())
    try:
        spec = ExperimentSpec.model_validate(data, context={"base_dir": str(folder.absolute())})
    except ValidationError as err:
        raise SpecError(issues_from_validation(err), origin) from None
    storage_problem = storage_issue(spec)
    if storage_problem is not None:
        raise SpecError([storage_problem], origin)
    return spec


def storage_issue(spec: ExperimentSpec) -> Issue | None:
    """A local storage that cannot hold the experiment's folder (it, or a path above it, is a file):
    `validate`, `plan` and `run` refuse it before anything starts, not a trial once Ray runs."""
    from .location import folder_problem

    base = spec.location.local_base
    problem = None if base is None else folder_problem(base / spec.name)
    if problem is None:
        return None
    rule = f"must be a folder (or a path one can be made at): {problem}; the results go under <storage>/{spec.name}/"
    return Issue("storage", rule, show(spec.storage))


# ---------------------------------------------------------------------------------------------------------
# YAML: the one reader of spec text (files, `run env:VAR`, `train --set` values)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects), reading numbers in scientific notation as numbers."""


# PyYAML follows YAML 1.1, which reads a float only with a dot and a signed exponent (1.0e-3): 1e-3, 1E5 and
# 2.5e3 were text, refused as "must be a number". YAML 1.2 and JSON read them as numbers, and so do we.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """YAML text as plain data, safely, with two changes from ``yaml.safe_load``: numbers in scientific
    notation (``1e-3``) are numbers, and a key written twice in one mapping is refused (YAML would keep the
    last silently, so an edit above a forgotten line would do nothing).

    Raises:
        SpecError: the text does not parse, or repeats a key (each repeat: its spec path and both lines).
    """
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        repeated = _repeated_keys(loader, node, "", set()) if node is not None else []
        if repeated:
            raise SpecError(repeated)
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise SpecError([Issue("<yaml>", f"does not parse: {err}".replace("\n", " "), "the text")]) from None
    finally:
        loader.dispose()


def _repeated_keys(loader: yaml.SafeLoader, node: yaml.Node, path: str, seen: set[int]) -> list[Issue]:
    """The keys written twice in a mapping anywhere under ``node`` (whose spec path is ``path``)."""
    if id(node) in seen:  # an alias of a node already walked
        return []
    seen.add(id(node))
    issues: list[Issue] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues += _repeated_keys(loader, item, f"{path}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: its keys may be overridden
                continue
            key = loader.construct_object(key_node, deep=True)
            at, line = (f"{path}.{key}" if path else str(key)), key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: construction refuses it with its own message
                continue
            if first is None:
                lines[key] = line
            else:
                rule = (f"is written twice (lines {first} and {line}); YAML would keep only the last: "
                        f"write it once")  # fmt: skip
                issues.append(Issue(at, rule, show(key)))
            issues += _repeated_keys(loader, value_node, at, seen)
    return issues


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

