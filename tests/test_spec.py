"""Experiment specs: shape and meaning, error paths, path resolution, the shipped JSON Schema, `validate`."""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nas_service.commands import validate
from nas_service.spec import (
    SCHEMA_PATH, ExperimentSpec, SpecError, load_spec, schema_text, stage_base_config, write_schema,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))

BASE: dict[str, Any] = {
    "name": "t",
    "storage": "runs",
    "data": {"dataset": "digits"},
    "stages": [
        {"name": "search", "kind": "cell_search", "recipe": "digits_search", "overrides": {"epochs": 2},
         "sweep": {"weighting": ["scalar", "max_w"]}, "seeds": [0, 1]},
        {"name": "retrain", "kind": "retrain", "recipe": "digits_retrain", "from": {"stage": "search"},
         "genotypes": ["DARTS_V2"]},
    ],
}  # fmt: skip


def spec_text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def mutated(**changes: Any) -> dict[str, Any]:
    """BASE with ``changes``: keys are dotted paths (``stages.0.sweep``); a value of ... deletes."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(leaf) if leaf.isdigit() else leaf
        if value is ...:
            del node[key]
        elif isinstance(node, list) and key == len(node):
            node.append(value)
        else:
            node[key] = value
    return data


def problems(data: dict[str, Any] | str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(data if isinstance(data, str) else spec_text(data))
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------
# valid specs


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(REPO / "examples"))) for p in EXAMPLES])
def test_every_example_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(spec=path)
    assert validate.run(args) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("valid")
    spec = load_spec(path)
    for stage in spec.stages:
        assert stage.name in out


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(REPO / "examples"))) for p in EXAMPLES])
def test_the_spec_kept_with_the_results_validates_back_to_the_same_spec(path) -> None:
    spec = load_spec(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when a union member serializes as the wrong one
        kept = spec.model_dump(mode="json", by_alias=True)  # as experiment_runner keeps it
    assert ExperimentSpec.model_validate(kept) == spec


def test_examples_exist_for_each_issue_item() -> None:
    names = {str(p.relative_to(REPO / "examples")) for p in EXAMPLES}
    for base in ("quickstart.yaml", "darts_vs_human.yaml", "ablation.yaml"):
        assert base in names and f"cifar10/{base}" in names


def test_quickstart_is_the_issue_recipe() -> None:
    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    search, retrain = spec.stages
    assert (search.kind, search.recipe, search.seeds) == ("cell_search", "digits_search", [0, 1])
    assert search.sweep == {"weighting": ["scalar", "max_w"]}
    assert stage_base_config(spec, search).space == "sharp_darts"
    assert "epochs" in search.overrides and "epochs" in retrain.overrides  # costs visible in the file
    assert (retrain.from_.stage, retrain.from_.take, retrain.from_.parse) == ("search", "best", "default")
    assert retrain.genotypes == ["DARTS_V2"] and retrain.seeds == [0]


def test_spec_objects_are_frozen() -> None:
    spec = load_spec(spec_text(BASE))
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(Exception):
        spec.stages[0].recipe = "x"  # type: ignore[misc]


def test_dotted_and_nested_overrides_are_the_same() -> None:
    nested = load_spec(spec_text(mutated(stages__0__overrides={"epochs": 2, "schedule": {"kind": "cosine"}})))
    dotted = load_spec(spec_text(mutated(stages__0__overrides={"epochs": 2, "schedule.kind": "cosine"})))
    a, b = (stage_base_config(s, s.stages[0]) for s in (nested, dotted))
    assert a == b and a.schedule.kind == "cosine"


def test_data_defaults_apply_to_every_stage() -> None:
    spec = load_spec(spec_text(mutated(data={"dataset": "digits", "root": "/data/x"})))
    for stage in spec.stages:
        config = stage_base_config(spec, stage)
        assert (config.data.dataset, config.data.root) == ("digits", "/data/x")


# ---------------------------------------------------------------------------------------------------------
# path resolution


def test_relative_storage_and_root_resolve_against_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "e.yaml").write_text(spec_text(mutated(storage="../out", data={"dataset": "digits", "root": "d"})))
    monkeypatch.chdir(tmp_path.parent)  # a different working folder must not matter
    spec = load_spec(folder / "e.yaml")
    assert spec.storage == str(tmp_path / "out")
    assert spec.data.root == str(folder / "d")
    assert load_spec(str(folder / "e.yaml")).storage == spec.storage  # a str path is a file too


@pytest.mark.parametrize("storage", ["s3://bucket/prefix", "gs://b/p", "file:///tmp/x", "/abs/olute"])
def test_uris_and_absolute_paths_are_kept(storage: str) -> None:
    assert load_spec(spec_text(mutated(storage=storage))).storage == storage


def test_text_resolves_against_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec_text(BASE)).storage == str(tmp_path / "runs")
    assert load_spec(spec_text(BASE), base_dir="/elsewhere").storage == "/elsewhere/runs"


def test_home_expands() -> None:
    assert load_spec(spec_text(mutated(storage="~/r"))).storage == os.path.expanduser("~/r")


# ---------------------------------------------------------------------------------------------------------
# invalid specs: every message names the path, the rule and the value

INVALID = [
    pytest.param(mutated(stages__0__sweep={"weighting": ["scalar", "maxw"]}),
                 ["stages[0].sweep.weighting", "scalar", "'maxw'"], id="bad-sweep-value"),
    pytest.param(mutated(stages__0__recipe="digits_serch"),
                 ["stages[0].recipe", "digits_search", "darts_search_60", "'digits_serch'"], id="unknown-recipe"),
    pytest.param(mutated(stages__0__recipe="digits_retrain"),
                 ["stages[0].recipe", "cell_search", "retrain recipe", "'digits_retrain'"], id="kind-recipe-mismatch"),
    pytest.param(mutated(stages__1__kind="grid", stages__1__recipe="digits_search", stages__1__from=...,
                         stages__1__genotypes=..., stages__1__candidates=["MULTI_CHANNEL_HANDMADE_PATH"]),
                 ["stages[1].recipe", "grid stage needs a retrain recipe"], id="grid-needs-retrain-recipe"),
    pytest.param(mutated(stages__1__name="search"), ["stages[1].name", "unique", "stages[0]", "'search'"],
                 id="duplicate-stage-names"),
    pytest.param(mutated(stages__1__from={"stage": "later"},
                         stages__2={"name": "later", "kind": "cell_search", "recipe": "digits_search"}),
                 ["stages[1].from.stage", "'retrain'", "'later'", "stages[2]", "earlier"], id="forward-from"),
    pytest.param(mutated(stages__1__from={"stage": "nowhere"}), ["stages[1].from.stage", "'nowhere'", "search"],
                 id="unknown-from"),
    pytest.param(mutated(stages__1__from={"stage": "retrain"}), ["stages[1].from.stage", "itself"], id="self-from"),
    pytest.param(mutated(stages__0__overrides={"epochs": "three"}),
                 ["stages[0].overrides.epochs", "integer", "'three'"], id="override-wrong-type"),
    pytest.param(mutated(stages__0__overrides={"data": {"batch_size": 0}}),
                 ["stages[0].overrides.data.batch_size", ">= 1", "0"], id="override-bad-value"),
    pytest.param(mutated(stages__0__overrides={"epochz": 3}),
                 ["stages[0].overrides.epochz", "unknown field", "epochs"], id="override-unknown-field"),
    pytest.param(mutated(stages__0__overrides={"seed": 3}), ["stages[0].overrides.seed", "seeds"],
                 id="override-reserved"),
    pytest.param(mutated(stages__0__sweep={"seed": [1, 2]}), ["stages[0].sweep.seed", "seeds"], id="sweep-seed"),
    pytest.param(mutated(stages__0__sweep={"widht": [1, 2]}), ["stages[0].sweep.widht", "unknown field"],
                 id="sweep-unknown-field"),
    pytest.param(mutated(stages__0__sweep={"space": ["darts", "nope"]}),
                 ["stages[0].sweep.space[1]", "sharp_darts", "'nope'"], id="sweep-unknown-space"),
    pytest.param(mutated(stages__0__sweep={"weighting": "max_w"}), ["stages[0].sweep.weighting", "list"],
                 id="sweep-not-a-list"),
    pytest.param(mutated(stages__0__sweep={"weighting": ["max_w", "max_w"]}), ["stages[0].sweep", "distinct"],
                 id="sweep-duplicate-value"),
    pytest.param(mutated(stages__0__seedz=[1]), ["stages[0].seedz", "unknown field", "seeds"], id="unknown-stage-field"),
    pytest.param(mutated(nmae="x"), ["nmae", "unknown field", "name"], id="unknown-top-field"),
    pytest.param(mutated(stages__0__kind="cell_serch"), ["stages[0].kind", "cell_search", "'cell_serch'"],
                 id="unknown-kind"),
    pytest.param(mutated(stages__0__seeds=[0, 0]), ["stages[0].seeds", "distinct"], id="duplicate-seeds"),
    pytest.param(mutated(stages__0__seeds=[True]), ["stages[0].seeds[0]", "integer"], id="bool-seed"),
    pytest.param(mutated(name="bad name"), ["name", "pattern", "'bad name'"], id="bad-experiment-name"),
    pytest.param(mutated(stages__0__name=".."), ["stages[0].name", ".."], id="dot-dot-stage-name"),
    pytest.param(mutated(stages=[]), ["stages", "at least 1"], id="no-stages"),
    pytest.param(mutated(name=...), ["name", "required"], id="missing-name"),
    pytest.param(mutated(data={"dataset": "mnist"}), ["data.dataset", "digits", "'mnist'"], id="unknown-dataset"),
    pytest.param(mutated(data={"dataset": "cifar10.1"}), ["data.dataset", "test-only"], id="test-only-dataset"),
    pytest.param(mutated(resources={"cpu": 0}), ["resources", "CPU or GPU"], id="no-resources"),
    pytest.param(mutated(resources={"gpu": 1.5}), ["resources.gpu", "whole number", "1.5"], id="gpu-fraction"),
    pytest.param(mutated(retries=-1), ["retries", "greater than or equal to 0", "-1"], id="negative-retries"),
    pytest.param(mutated(stages__1__genotypes=["DARTS_V9"]), ["stages[1].genotypes[0]", "DARTS_V2", "'DARTS_V9'"],
                 id="unknown-published-genotype"),
    pytest.param(mutated(stages__1__genotypes=[{"normal": [["sep_conv_3x3", 0], ["bogus_op", 1]],
                                                "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]]}]),
                 ["stages[1].genotypes[0]", "bogus_op"], id="inline-genotype-unknown-op"),
    pytest.param(mutated(stages__1__from=..., stages__1__genotypes=...), ["stages[1]", "from:, genotypes: or paths:"],
                 id="retrain-without-architecture"),
    pytest.param(mutated(stages__1__from={"stage": "search", "parse": "no-hack"}),
                 ["stages[1].from.parse", "'no-hack'"], id="bad-parse"),
    pytest.param(mutated(stages__1__overrides={"genotype": "DARTS_V1"}), ["stages[1].overrides.genotype", "genotypes:"],
                 id="override-genotype"),
    pytest.param(mutated(stages__2={"name": "ev", "kind": "evaluate", "from": {"stage": "search"},
                                    "datasets": ["digits"]}),
                 ["stages[2].from.stage", "retrain", "cell_search"], id="evaluate-from-search"),
    pytest.param(mutated(stages__2={"name": "ev", "kind": "evaluate", "from": {"stage": "retrain"},
                                    "datasets": ["imagenet"]}),
                 ["stages[2].datasets[0]", "1000", "'imagenet'"], id="evaluate-incompatible-dataset"),
    pytest.param(mutated(stages__2={"name": "ev", "kind": "evaluate", "from": {"stage": "retrain"},
                                    "datasets": ["digits"], "seeds": [1]}),
                 ["stages[2].seeds", "unknown field"], id="evaluate-has-no-seeds"),
]  # fmt: skip

_GRID = {"name": "grid", "kind": "grid", "recipe": "digits_retrain", "overrides": {"epochs": 3}}
INVALID += [
    pytest.param(mutated(stages__2={**_GRID, "candidates": [{"random": 2}]}),
                 ["stages[2].channels", "required"], id="random-without-grid"),
    pytest.param(mutated(stages__2={**_GRID, "channels": [8], "layers": 1, "candidates": ["MULTI_CHANNEL_HANDMADE_PATH"],
                                    "optuna": {"trials": 2}}),
                 ["stages[2].optuna", "candidates"], id="optuna-and-candidates"),
    pytest.param(mutated(stages__2={**_GRID, "channels": [8], "layers": 1, "optuna": {"trials": 2}, "seeds": [0, 1]}),
                 ["stages[2].seeds", "one seed"], id="optuna-many-seeds"),
    pytest.param(mutated(stages__2={**_GRID, "channels": [8], "layers": 1, "optuna": {"trials": 2},
                                    "asha": {"grace_period": 9}}),
                 ["stages[2].asha.grace_period", "<= the stage's epochs (3)", "9"], id="asha-grace-beyond-epochs"),
    pytest.param(mutated(stages__2={**_GRID, "candidates": ["MULTI_CHANNEL_HANDMADE_PATH"],
                                    "asha": {"metric": "accuracy"}}),
                 ["stages[2].asha.metric", "valid_top1", "'accuracy'"], id="asha-unknown-metric"),
    pytest.param(mutated(stages__2={**_GRID, "candidates": [{"stem_channels": 8, "stages": [[1, 8, 16, "SharpSepConv"],
                                                                                          [2, 8, 16, "ResizablePool"]]}]}),
                 ["stages[2].candidates[0]", "channel consistency"], id="inline-path-inconsistent"),
    pytest.param(mutated(stages__2={**_GRID, "candidates": [{"stem_channels": 8, "stages": [[1, 8, 8, "Conv"],
                                                                                          [2, 8, 8, "ResizablePool"]]}]}),
                 ["stages[2].candidates[0].stages[0][3]", "'Conv'"], id="inline-path-unknown-op"),
    pytest.param(mutated(stages__2={**_GRID, "from": {"stage": "search"}}), ["stages[2].from.stage", "cell_search"],
                 id="grid-from-cell-search"),
    pytest.param(mutated(stages__2={**_GRID}), ["stages[2]", "candidates:, paths:, from: or optuna:"],
                 id="grid-without-candidates"),
    pytest.param(mutated(stages__2={**_GRID, "channels": [8, 16, 8], "layers": 1, "optuna": {"trials": 2}}),
                 ["stages[2].channels", "distinct", "8 appears twice"], id="grid-duplicate-channels"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), INVALID)
def test_invalid_specs_name_path_rule_and_value(data: dict[str, Any], expected: list[str]) -> None:
    message = problems(data)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    # Each problem is one line `<path>: <rule> (got <value>)`.
    for line in message.splitlines()[1:]:
        assert line.startswith("  ") and ": " in line and "(got " in line, line


def test_every_problem_is_reported_at_once() -> None:
    data = mutated(stages__0__recipe="nope", stages__1__genotypes=["NOPE"])
    with pytest.raises(SpecError) as info:
        load_spec(spec_text(data))
    paths = [issue.path for issue in info.value.issues]
    assert paths == ["stages[0].recipe", "stages[1].genotypes[0]"]


def test_spec_error_pickles_with_its_issues() -> None:
    import pickle

    with pytest.raises(SpecError) as info:
        load_spec(spec_text(mutated(stages__0__recipe="nope")))
    copy_ = pickle.loads(pickle.dumps(info.value))
    assert copy_.issues == info.value.issues and str(copy_) == str(info.value)


def test_sweep_values_are_checked_in_combination() -> None:
    # Alone, epochs=1 is fine (with the cosine override) and so is cpa (with 2 epochs); together they break
    # CPA's rule warmup_epochs (1) < epochs.
    data = mutated(stages__0__overrides={"epochs": 2, "schedule.kind": "cosine"},
                   stages__0__sweep={"epochs": [1, 2], "schedule.kind": ["cosine", "cpa"]})  # fmt: skip
    with pytest.raises(SpecError) as info:
        load_spec(spec_text(data))
    (issue,) = info.value.issues
    assert issue.path == "stages[0].sweep" and "combination" in issue.rule and "warmup_epochs" in issue.rule
    assert "'epochs': 1" in issue.value and "'schedule.kind': 'cpa'" in issue.value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("name: [unclosed\n", "does not parse", id="yaml-syntax"),
        pytest.param("- a\n- b\n", "must be a mapping", id="not-a-mapping"),
    ],
)
def test_unreadable_yaml(text: str, fragment: str) -> None:
    assert fragment in problems(text)


def test_yaml_is_loaded_safely() -> None:
    assert "could not determine a constructor" in problems("name: !!python/object/apply:os.system [echo hi]\n")


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_spec(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------------------------
# `nas-service validate`


def test_validate_exits_2_with_the_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(spec_text(mutated(stages__0__sweep={"weighting": ["scalar", "maxw"]})))
    assert validate.run(argparse.Namespace(spec=path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "stages[0].sweep.weighting[1]: must be one of ['scalar', 'max_w'] (got 'maxw')" in captured.err
    assert str(path) in captured.err
    assert validate.run(argparse.Namespace(spec=tmp_path / "missing.yaml")) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_validate_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(spec_text(BASE))
    assert validate.run(argparse.Namespace(spec=path)) == 0
    out = capsys.readouterr().out
    search_line = next(line for line in out.splitlines() if line.strip().startswith("search"))
    assert "4 (weighting x 2, seeds x 2)" in search_line
    retrain_line = next(line for line in out.splitlines() if line.strip().startswith("retrain"))
    assert "5 once search has finished" in retrain_line


def test_validate_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from nas_service import cli

    if "validate" not in cli.COMMAND_MODULES:  # until the lead registers the command
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "validate"))
    path = tmp_path / "ok.yaml"
    path.write_text(spec_text(BASE))
    assert cli.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("valid")
    path.write_text(spec_text(mutated(stages__0__recipe="x")))
    assert cli.main(["validate", str(path)]) == 2
    assert "stages[0].recipe" in capsys.readouterr().err


def test_validate_never_imports_ray() -> None:
    code = (
        "import sys, argparse\n"
        "from nas_service.commands import validate\n"
        f"rc = validate.run(argparse.Namespace(spec={str(EXAMPLES[0])!r}))\n"
        "assert rc == 0, rc\n"
        "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------------------
# JSON Schema


def test_shipped_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "nas_service/schemas/experiment.schema.json is stale: run `python -m nas_service.spec`"
    )


def test_write_schema(tmp_path: Path) -> None:
    target = write_schema(tmp_path / "s.json")
    assert json.loads(target.read_text()) == json.loads(schema_text())


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(REPO / "examples"))) for p in EXAMPLES])
def test_schema_accepts_the_examples(path: Path, schema_validator: jsonschema.Draft202012Validator) -> None:
    errors = [e.message for e in schema_validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(mutated(stages__0__seedz=[1]), id="unknown-stage-field"),
        pytest.param(mutated(stages__0__kind="cell_serch"), id="unknown-kind"),
        pytest.param(mutated(stages__1__from={"stage": "search", "take": "first"}), id="bad-take"),
        pytest.param(mutated(retries="two"), id="retries-not-int"),
        pytest.param(mutated(stages=[]), id="no-stages"),
    ],
)
def test_schema_rejects_shape_errors(data: dict[str, Any], schema_validator: jsonschema.Draft202012Validator) -> None:
    assert list(schema_validator.iter_errors(data))
