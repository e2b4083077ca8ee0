"""Every registered stage kind is whole: its spec model, its place in the spec's JSON Schema, its rules of
``from:``, how its trials run and what the report reads. Parametrized over the registry, so a new kind
is checked without editing this file."""

from __future__ import annotations

import json
import typing

import pytest

from nas_service.spec import ExperimentSpec, schema_text
from nas_service.stage_kinds import STAGE_KINDS, get_stage_kind, list_stage_kinds
from trainers.recipes import get_recipe, list_recipes


@pytest.mark.parametrize("name", list_stage_kinds())
def test_a_kind_s_spec_model_names_it_and_the_schema_has_it(name: str) -> None:
    kind = get_stage_kind(name)
    assert typing.get_args(kind.spec_model.model_fields["kind"].annotation) == (name,)
    schema = json.loads(schema_text())
    assert kind.spec_model.__name__ in schema["$defs"]
    assert ExperimentSpec.model_json_schema() == {k: v for k, v in schema.items() if not k.startswith("$s") and k != "$id"}


@pytest.mark.parametrize("name", list_stage_kinds())
def test_a_kind_runs_one_way_and_reports_columns_of_the_trials_table(name: str) -> None:
    kind = get_stage_kind(name)
    assert (kind.run_trial is None) != (kind.run_in_driver is None)
    for column in (kind.select_metric, kind.headline_metric):
        assert column is None or column.startswith("best.")
    if kind.run_trial is not None:  # trials of Tune: a best epoch is chosen by a metric, a result feeds later stages
        assert kind.epoch_metric is not None and kind.upstream is not None
    if kind.recipe_kind is not None:
        assert any(get_recipe(r).kind == kind.recipe_kind for r in list_recipes())


@pytest.mark.parametrize("name", list_stage_kinds())
def test_what_a_kind_consumes_some_kind_produces(name: str) -> None:
    kind = get_stage_kind(name)
    for thing in kind.consumes:
        assert any(thing in other.produces for _, other in STAGE_KINDS.items()), thing
    assert set(STAGE_KINDS.upstream_kinds(name)) == {
        other for other, k in STAGE_KINDS.items() if set(k.produces) & set(kind.consumes)
    }
