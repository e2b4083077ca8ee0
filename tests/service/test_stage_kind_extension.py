"""docs/extending.md's recipe for a stage kind, end to end: a kind registered from this test module only
validates, plans, runs on local Ray, reports, and feeds a retrain stage, with no change to nas_service/.

The toy kind, ``random_genotype``, is random search without training: each trial draws uniformly random
architecture weights for a search space from its seed and parses them into a genotype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import Field

from nas_service.planner import plan
from nas_service.report import arm_table
from nas_service.results import ResultsStore
from nas_service.spec import SpecError, load_spec
from nas_service.spec_models import Issue, StageBase, StrictInt, show
from nas_service.stage_kinds import STAGE_KINDS, StageKind, register_stage_kind
from nas_service.trials import Lineage, StagePlan, Trial, UpstreamResult, make_arm, trial_id_for
from search_spaces.genotypes import parse_genotype
from search_spaces.spaces import get_search_space, list_search_spaces
from trainers.config import config_to_dict
from trainers.summary import RunSummary

REPO = Path(__file__).resolve().parents[2]


class RandomGenotypeStage(StageBase):
    """Random search without weight sharing: a random genotype per seed."""

    kind: Literal["random_genotype"]
    space: str = "darts"
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)


def _check(spec: Any, stage: RandomGenotypeStage, where: str, upstream_stage: Any) -> list[Issue]:
    if stage.space not in list_search_spaces():
        return [Issue(f"{where}.space", f"must be a registered search space; known: {list_search_spaces()}",
                      show(stage.space))]  # fmt: skip
    return []


@dataclass(frozen=True)
class RandomGenotypeConfig:
    """What one trial computes: its id hashes this (as ``config_to_dict`` spells it)."""

    space: str
    seed: int
    epochs: int = 1
    kind: str = "random_genotype"


def _plan(spec: Any, stage: RandomGenotypeStage, done: Any, upstream: Any) -> StagePlan:
    trials = []
    for seed in stage.seeds:
        config = RandomGenotypeConfig(stage.space, seed)
        trials.append(Trial(stage=stage.name, kind=stage.kind, trial_id=trial_id_for(stage.name, stage.kind, config),
                            config=config, seed=seed, axes={},
                            arm=make_arm(stage.name, stage.kind, config, [f"space={stage.space}"]),
                            lineage=Lineage()))  # fmt: skip
    return StagePlan(stage.name, stage.kind, "ready", tuple(trials), expected_trials=len(trials), epochs=1)


@dataclass(frozen=True, kw_only=True)
class RandomGenotypeSummary(RunSummary):
    """A trial's summary: the genotype it drew (also the results row's architecture column)."""

    genotype: dict[str, Any]

    def architecture(self) -> dict[str, Any]:
        return {"genotype": self.genotype}


def _run_trial(trial: Trial, workdir: Path, hooks: Any) -> RandomGenotypeSummary:
    primitives = [p for p in get_search_space(trial.config.space).primitives if p != "none"]
    generator = torch.Generator().manual_seed(trial.config.seed)
    weights = [torch.rand(14, len(primitives), generator=generator) for _ in range(2)]
    genotype = parse_genotype(*weights, primitives, skip_primitive=None).to_dict()
    free = sum(op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") for op, _ in genotype["normal"])
    metrics = {"epoch": 1, "parameter_free_share": free / len(genotype["normal"])}
    hooks.report(metrics, None)
    return RandomGenotypeSummary(kind="random_genotype", config=config_to_dict(trial.config), history=[metrics],
                                 best_epoch=1, epochs_run=1, finished=True, genotype=genotype)  # fmt: skip


def _upstream(trial_id: str, summary: RandomGenotypeSummary) -> UpstreamResult:
    return UpstreamResult(trial_id, summary.config["seed"], summary.config, best=summary.genotype,
                          last=summary.genotype)  # fmt: skip


RANDOM_GENOTYPE = StageKind(
    name="random_genotype", spec_model=RandomGenotypeStage, plan=_plan, check=_check, produces=("genotype",),
    run_trial=_run_trial, summary_type=RandomGenotypeSummary, epoch_metric="parameter_free_share",
    select_metric="best.parameter_free_share", upstream=_upstream,
)  # fmt: skip


@pytest.fixture
def random_genotype_kind() -> Iterator[StageKind]:
    register_stage_kind(RANDOM_GENOTYPE)
    try:
        yield RANDOM_GENOTYPE
    finally:  # the shipped JSON Schema and the other tests know only the built-in kinds
        STAGE_KINDS.unregister("random_genotype")


def spec_text(storage: Path, space: str = "darts") -> str:
    return f"""\
name: toy
storage: {storage}
data: {{dataset: digits}}
stages:
  - {{name: draw, kind: random_genotype, space: {space}, seeds: [0, 1]}}
  - name: retrain
    kind: retrain
    recipe: digits_retrain
    from: {{stage: draw}}
    overrides: {{epochs: 2}}
"""


def test_an_unregistered_kind_is_refused_with_the_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"stages\[0\].kind: must be one of \['cell_search'.*'evaluate'\]"):
        load_spec(spec_text(tmp_path))


def test_a_registered_kind_validates_and_its_own_rules_apply(tmp_path: Path, random_genotype_kind) -> None:
    spec = load_spec(spec_text(tmp_path))
    assert spec.stages[0].kind == "random_genotype"
    with pytest.raises(SpecError, match=r"stages\[0\].space: must be a registered search space"):
        load_spec(spec_text(tmp_path, space="nope"))
    assert STAGE_KINDS.upstream_kinds("retrain")[-1] == "random_genotype"  # it produces genotypes


def run_as_a_driver_script(spec: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python <this file> SPEC``: a user's script that registers the kind and runs the spec on a local Ray
    of its own (its own HOME and temp dir, no cluster address or token from the environment)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": f"/tmp/nk{os.getpid() % 10000}{tmp_path.name[-6:]}",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}  # fmt: skip
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return subprocess.run([sys.executable, __file__, str(spec)], env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.ray
@pytest.mark.slow
def test_a_kind_registered_in_a_script_runs_on_local_ray_and_reports(tmp_path: Path, random_genotype_kind) -> None:
    from nas_service.experiment_runner import upstream_from_store

    full = spec_text(tmp_path / "runs")
    spec = load_spec(full)
    first = plan(spec)
    assert first.stage("draw").state == "ready" and len(first.stage("draw").trials) == 2
    assert first.stage("retrain").state == "waiting"
    # Only the toy stage runs on Ray here (a retrain is slow and covered elsewhere): a spec of its own.
    draw_only = tmp_path / "draw.yaml"
    draw_only.write_text("\n".join(full.splitlines()[:5]) + "\n")
    done = run_as_a_driver_script(draw_only, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = ResultsStore(str(tmp_path / "runs"), "toy")
    trials = store.trials()
    assert sorted(trials["stage_kind"]) == ["random_genotype"] * 2
    assert set(trials["status"]) == {"finished"}
    assert sorted(int(e) for e in store.epochs()["epoch"]) == [1, 1]
    genotypes = [json.loads(g) for g in trials["genotype_json"]]
    assert all(len(g["normal"]) == 8 for g in genotypes) and genotypes[0] != genotypes[1]
    assert "== draw (random_genotype) ==" in done.stdout  # run's closing report
    table = arm_table(trials)
    assert list(table["kind"]) == ["random_genotype"] and table["runs"].iloc[0] == 2
    assert "select (parameter_free_share)" in table.columns
    # The retrain stage takes the drawn genotypes from the store like any search's.
    after = plan(spec, upstream=upstream_from_store(store))
    retrain = after.stage("retrain")
    assert retrain.state == "ready" and len(retrain.trials) == 2
    assert {t.lineage.parent for t in retrain.trials} == set(trials["trial_id"])
    assert all(json.loads(t.config.genotype) in genotypes for t in retrain.trials)


if __name__ == "__main__":  # the driver script of the test above: register the kind, then `nas-service run`
    from nas_service.cli import main

    register_stage_kind(RANDOM_GENOTYPE)
    sys.exit(main(["run", sys.argv[1], "--num-cpus", "2"]))
