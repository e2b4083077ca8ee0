"""Trial and arm ids of every example spec are pinned: a refactor must not turn finished trials into new ones.

Each example is planned stage by stage; every ready stage's trials get a synthetic finished result (the same
published genotype or path for every trial, plus a score), so the stages that take ``from:`` them expand too.
The expected ids were recorded from the code before the stage-kind registry refactor
(``tests/data/pinned_trial_ids.json``); regenerate only for a change that is meant to change ids:
``python tests/test_trial_ids_pinned.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "data" / "pinned_trial_ids.json"
EXAMPLES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").rglob("*.yaml"))


def _arch_for(trial: Any) -> dict[str, Any]:
    from search_spaces.genotypes import get_published
    from search_spaces.paths import resolve_path

    if trial.kind == "cell_search":
        return get_published("SHARP_DARTS").genotype.to_dict()
    if trial.kind == "hypercuboid_search":
        return resolve_path("MULTI_CHANNEL_HANDMADE_PATH").to_dict()
    path = getattr(trial.config, "path", None)
    if path:
        return resolve_path(json.loads(path) if path.startswith("{") else path).to_dict()
    return {}


def plan_ids(example: str) -> dict[str, list[list[str]]]:
    """``{stage: [[trial_id, arm_id, lineage source], ...]}`` once every stage has expanded."""
    from nas_service.planner import UpstreamResult, plan
    from nas_service.spec import load_spec
    from trainers.config import config_to_dict

    spec = load_spec(REPO / example)
    results: dict[str, list[Any]] = {}

    def upstream(stage: str) -> list[Any]:
        return results.get(stage, [])

    for _ in range(len(spec.stages) + 1):
        current = plan(spec, upstream=upstream)
        for stage in current.stages:
            if stage.state == "ready" and stage.name not in results:
                results[stage.name] = [
                    UpstreamResult(t.trial_id, t.seed, config_to_dict(t.config), best=_arch_for(t), last=_arch_for(t),
                                   best_no_hack=_arch_for(t), last_no_hack=_arch_for(t), score=float(i))
                    for i, t in enumerate(stage.trials)
                ]  # fmt: skip
    out = {s.name: [[t.trial_id, t.arm.arm_id, t.lineage.source] for t in s.trials] for s in current.stages}
    for s in current.stages:
        if s.optuna is not None:  # an Optuna stage's trials exist at run time: pin the first suggestion's
            t = s.optuna.trial({k: v[0] for k, v in s.optuna.space().items()})
            out[s.name] = [[t.trial_id, t.arm.arm_id, t.lineage.source]]
    return out


@pytest.mark.parametrize("example", EXAMPLES)
def test_trial_and_arm_ids_of_the_examples_are_unchanged(example: str) -> None:
    pinned = json.loads(PINNED.read_text())
    assert example in pinned, f"{example} has no pinned ids; run python {Path(__file__).name} --write"
    assert plan_ids(example) == pinned[example]


def test_every_example_is_pinned_and_plans_trials() -> None:
    pinned = json.loads(PINNED.read_text())
    assert sorted(pinned) == EXAMPLES
    assert all(any(stage for stage in stages.values()) for stages in pinned.values())


if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(REPO))
    PINNED.write_text(json.dumps({e: plan_ids(e) for e in EXAMPLES}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
