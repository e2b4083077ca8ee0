"""The light commands (issue 13, item 5): ``nas-service --help``, ``validate``, ``plan``, ``status`` and
``schedule`` run without importing torch or Ray, each in a fresh interpreter; and the torch-free lists of
names they check against agree with the torch registries they stand in for.

Each command runs in a subprocess through ``cli.main`` in-process, then the wrapper prints which of the
heavy packages ended up in ``sys.modules``. No timings here: what is imported is what makes it slow.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"

# Packages whose import costs a noticeable part of a second (torch and Ray several times that).
HEAVY = ("torch", "ray", "pandas", "pyarrow", "scipy", "matplotlib", "numpy", "pydantic", "yaml")
NEVER = {"torch", "ray"}

WRAPPER = """
import json, sys
from nas_service.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as done:  # --help and argparse errors
    code = done.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'ray'})
print('LIGHT-CHECK ' + json.dumps({'code': code, 'torch_ray': heavy,
      'packages': sorted({m.split('.')[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)


def _run(*argv: str) -> dict:
    """Runs ``nas-service ARGV`` in a fresh interpreter; returns the exit code and what it imported."""
    result = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("LIGHT-CHECK ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    found = json.loads(lines[-1].removeprefix("LIGHT-CHECK "))
    found["out"], found["err"] = result.stdout, result.stderr
    return found


def _check(found: dict, *, allowed: set[str]) -> None:
    assert found["code"] == 0, found["out"][-2000:] + found["err"][-2000:]
    assert found["torch_ray"] == []
    assert set(found["packages"]) <= allowed, f"imported {sorted(set(found['packages']) - allowed)} as well"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart with its searches finished (a results store with trial rows and the kept spec), so
    `plan` and `status` read rows and plan the retrain stage from what the searches chose."""
    from nas_service.planner import plan
    from nas_service.results import ResultsStore
    from nas_service.spec import load_spec
    from search_spaces.genotypes import get_published
    from trainers.config import config_to_dict

    storage = tmp_path_factory.mktemp("storage")
    spec = load_spec(QUICKSTART)
    spec = spec.model_copy(update={"storage": str(storage)})
    store = ResultsStore(spec.storage, spec.name)
    store.write_experiment_record({"spec": spec.model_dump(mode="json", by_alias=True)})
    genotype = get_published("DARTS_V2").genotype.to_dict()
    for trial in plan(spec).stage("search").trials:
        config = config_to_dict(trial.config)
        summary = {"kind": "cell_search", "config": config, "best_genotype": genotype, "last_genotype": genotype,
                   "best_valid_acc": 0.5, "history_tail": []}  # fmt: skip
        store.write_trial(trial.trial_id, 0, {
            "stage": "search", "stage_kind": "cell_search", "status": "finished", "config": config,
            "seed": trial.seed, "best": {"valid_acc": 0.5}, "extra": {"summary_json": json.dumps(summary)},
        })  # fmt: skip
    return storage


def test_help_imports_only_what_the_parser_needs() -> None:
    found = _run("--help")
    _check(found, allowed=set())
    assert "usage: nas-service" in found["out"]


@pytest.mark.parametrize("spec", [QUICKSTART, REPO / "examples" / "cifar10" / "ablation.yaml"],
                         ids=lambda p: str(p.relative_to(REPO)))  # fmt: skip
def test_validate(spec: Path) -> None:
    # The CIFAR ablation has grid, retrain and evaluate stages: data set shapes are checked too.
    found = _run("validate", str(spec))
    _check(found, allowed={"numpy", "pydantic", "yaml"})
    assert found["out"].splitlines()[-2] == "valid"


def test_plan(experiment: Path) -> None:
    found = _run("plan", str(QUICKSTART), "--storage", str(experiment))
    # pandas and pyarrow read the results store (which trials are done, what the searches chose).
    _check(found, allowed={"numpy", "pydantic", "yaml", "pandas", "pyarrow"})
    assert "DARTS_V2" in found["out"] and "done" in found["out"]


def test_status(experiment: Path) -> None:
    found = _run("status", str(experiment / "quickstart"))
    _check(found, allowed={"numpy", "pydantic", "yaml", "pandas", "pyarrow"})
    assert "finished" in found["out"]


def test_schedule() -> None:
    found = _run("schedule", "cpa", "--epochs", "10", "--warmup", "2")
    _check(found, allowed={"numpy"})
    assert found["out"].startswith("1 ")


def test_the_wrapper_would_see_torch() -> None:
    # `genotypes` builds networks, so it does import torch: the check above is not vacuous.
    found = _run("genotypes", "DARTS_V2", "--no-madds")
    assert found["code"] == 0 and "torch" in {m.split(".")[0] for m in found["torch_ray"]}


def test_startup_benchmark_prints_each_command_beside_import_torch() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cli_startup.py"), "--repeats", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("  ")[0].strip() for line in done.stdout.splitlines() if line.endswith("x")}
    assert {"import torch", "--help", "validate", "schedule"} <= rows


# ---------------------------------------------------------------------------------------------------------
# The torch-free lists and the registries they stand in for: one list each, checked here.


def test_op_names_are_the_op_sets_ops() -> None:
    from search_spaces.names import OP_NAMES
    from search_spaces.ops import OP_SETS

    assert OP_NAMES.names() == OP_SETS.names()
    for name, op_set in OP_SETS.items():
        assert OP_NAMES.get(name) == tuple(op_set.names()), name


def test_weighting_names_are_the_weightings() -> None:
    from search_spaces.names import WEIGHTING_NAMES
    from search_spaces.weighting import WEIGHTINGS

    assert WEIGHTING_NAMES.names() == WEIGHTINGS.names()


def test_dataset_shapes_are_the_datasets() -> None:
    from trainers.dataset_shapes import DATASET_SHAPES
    from trainers.datasets import get_dataset_info, list_datasets

    assert DATASET_SHAPES.names() == list_datasets()
    for name, shape in DATASET_SHAPES.items():
        info = get_dataset_info(name)
        for field in dataclasses.fields(shape):
            assert getattr(shape, field.name) == getattr(info, field.name), (name, field.name)
