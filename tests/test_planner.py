"""The planner: expansion counts, deterministic ids, arms, lineage, waiting stages, grids, Optuna, display."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas_service.planner import (
    Plan,
    PlanError,
    Trial,
    UpstreamResult,
    describe_plan,
    max_concurrent_trials,
    plan,
    trial_id_for,
)
from nas_service.spec import Resources, SpecError, load_spec
from search_spaces.genotypes import Genotype, get_published
from search_spaces.paths import HyperCuboidPath, resolve_path
from trainers.config import config_to_dict

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"

SEARCH = {"name": "search", "kind": "cell_search", "recipe": "digits_search", "overrides": {"epochs": 2},
          "sweep": {"weighting": ["scalar", "max_w"]}, "seeds": [0, 1]}  # fmt: skip
RETRAIN = {"name": "retrain", "kind": "retrain", "recipe": "digits_retrain", "from": {"stage": "search"},
           "genotypes": ["DARTS_V2"], "overrides": {"epochs": 2}}  # fmt: skip
DHGS = {"name": "dhgs", "kind": "hypercuboid_search", "recipe": "digits_hypercuboid_search",
        "overrides": {"epochs": 2}, "seeds": [0, 1]}  # fmt: skip


def spec_of(*stages: dict[str, Any], **top: Any) -> Any:
    data = {"name": "t", "storage": "/tmp/nas-planner-test", "data": {"dataset": "digits"}, **top,
            "stages": [copy.deepcopy(s) for s in stages]}  # fmt: skip
    return load_spec(yaml.safe_dump(data, sort_keys=False))


def ids(trials: tuple[Trial, ...] | list[Trial]) -> list[str]:
    return [t.trial_id for t in trials]


GENOTYPES = [get_published(n).genotype.to_dict() for n in ("SHARP_DARTS", "SHARP_DARTS_MAX_W", "SHARPER_SCALAR")]


def results_for(the_plan: Plan, stage: str, *, archs: list[dict] | None = None, **kw: Any) -> list[UpstreamResult]:
    """A finished result per planned trial of ``stage``; trial i chose ``archs[i % len(archs)]``."""
    archs = archs or GENOTYPES
    out = []
    for i, t in enumerate(the_plan.stage(stage).trials):
        arch = archs[i % len(archs)]
        out.append(UpstreamResult(t.trial_id, t.seed, config_to_dict(t.config), best=arch, last=arch, score=float(i),
                                  **kw))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------
# expansion


def test_quickstart_search_expands_to_weightings_times_seeds() -> None:
    p = plan(load_spec(QUICKSTART))
    search = p.stage("search")
    assert search.state == "ready" and len(search.trials) == 4
    combos = {(t.config.weighting, t.config.seed) for t in search.trials}
    assert combos == {("scalar", 0), ("scalar", 1), ("max_w", 0), ("max_w", 1)}
    for t in search.trials:
        assert t.kind == "cell_search" and t.config.kind == "cell_search"
        assert t.seed == t.config.seed and t.axes == {"weighting": t.config.weighting}
        assert t.config.space == "sharp_darts" and t.config.data.dataset == "digits"
        assert t.lineage.parent is None
        assert re.fullmatch(r"[0-9a-f]{12}", t.trial_id)
    assert len(set(ids(search.trials))) == 4


def test_config_is_the_typed_trainers_config() -> None:
    from trainers.config import TrainConfig, config_from_dict

    for t in plan(spec_of(SEARCH, DHGS)).trials:
        assert isinstance(t.config, TrainConfig)
        assert config_from_dict(config_to_dict(t.config)) == t.config
        json.dumps(config_to_dict(t.config))  # its dict form is JSON-able, for result rows


def test_sweep_is_a_grid_in_spec_order() -> None:
    stage = {**SEARCH, "sweep": {"weighting": ["scalar", "max_w"], "schedule.kind": ["cpa", "cosine"],
                                 "init_channels": [4, 8]}, "seeds": [3]}  # fmt: skip
    trials = plan(spec_of(stage)).stage("search").trials
    assert len(trials) == 8
    assert [t.axes for t in trials[:3]] == [
        {"weighting": "scalar", "schedule.kind": "cpa", "init_channels": 4},
        {"weighting": "scalar", "schedule.kind": "cpa", "init_channels": 8},
        {"weighting": "scalar", "schedule.kind": "cosine", "init_channels": 4},
    ]
    assert all(t.config.schedule.kind == t.axes["schedule.kind"] for t in trials)
    assert trials[0].arm.label == "weighting=scalar, schedule.kind=cpa, init_channels=4"


def test_lists_in_overrides_are_not_axes() -> None:
    one = plan(spec_of({**DHGS, "overrides": {"epochs": 2, "channels": [8, 16, 32]}, "seeds": [0]}))
    (trial,) = one.stage("dhgs").trials
    assert trial.config.channels == (8, 16, 32) and trial.axes == {}
    two = plan(spec_of({**DHGS, "sweep": {"channels": [[8, 16], [16, 32]]}, "seeds": [0]}))
    assert [t.config.channels for t in two.stage("dhgs").trials] == [(8, 16), (16, 32)]


# ---------------------------------------------------------------------------------------------------------
# ids


def test_ids_are_deterministic_within_a_process() -> None:
    a, b = plan(load_spec(QUICKSTART)), plan(load_spec(QUICKSTART))
    assert ids(a.trials) == ids(b.trials)
    assert [t.arm for t in a.trials] == [t.arm for t in b.trials]


def test_ids_are_stable_across_processes() -> None:
    code = (
        "import json, sys\n"
        "from nas_service.spec import load_spec\n"
        "from nas_service.planner import plan\n"
        f"p = plan(load_spec({str(QUICKSTART)!r}))\n"
        "print(json.dumps([[t.trial_id, t.arm.arm_id] for t in p.trials]))\n"
    )
    # A different hash seed would expose any dependence on set / dict iteration order of str hashes.
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    here = [[t.trial_id, t.arm.arm_id] for t in plan(load_spec(QUICKSTART)).trials]
    assert json.loads(out.stdout) == here


def test_id_is_the_hash_of_stage_kind_and_config() -> None:
    import hashlib

    t = plan(spec_of(SEARCH)).trials[0]
    payload = {"stage": t.stage, "kind": t.kind, "config": config_to_dict(t.config)}
    for field in ("root", "download", "num_workers"):  # location fields are not part of the identity
        payload["config"]["data"].pop(field)
    payload["config"].pop("activation_checkpointing")  # nor how memory is spent
    assert payload["config"]["data"].pop("random_shift") == 0  # fields added later, at their defaults
    assert payload["config"]["arch"].pop("warmup_epochs") == 0
    assert payload["config"].pop("precision") == "fp32"  # a field that replaced `amp`, spelt the old way
    payload["config"]["amp"] = False
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert t.trial_id == hashlib.sha256(text.encode()).hexdigest()[:12] == trial_id_for(t.stage, t.kind, t.config)


def test_changing_a_seed_changes_only_that_trials_id() -> None:
    before = plan(spec_of(SEARCH)).stage("search").trials
    after = plan(spec_of({**SEARCH, "seeds": [0, 2]})).stage("search").trials
    kept = {t.trial_id for t in before if t.seed == 0}
    assert kept == {t.trial_id for t in after if t.seed == 0}
    changed_before = {t.trial_id for t in before if t.seed == 1}
    changed_after = {t.trial_id for t in after if t.seed == 2}
    assert len(changed_after) == 2 and not changed_after & changed_before and not changed_after & kept


def test_added_seeds_and_sweep_values_add_trials_and_keep_the_rest() -> None:
    base = ids(plan(spec_of({**SEARCH, "sweep": {"weighting": ["scalar"]}, "seeds": [0]})).trials)
    more_seeds = ids(plan(spec_of({**SEARCH, "sweep": {"weighting": ["scalar"]}, "seeds": [0, 1]})).trials)
    more_values = ids(plan(spec_of({**SEARCH, "sweep": {"weighting": ["scalar", "max_w"]}, "seeds": [0, 1]})).trials)
    assert set(base) < set(more_seeds) < set(more_values)
    assert len(more_seeds) == 2 and len(more_values) == 4


def test_an_edited_stage_keeps_other_stages_ids() -> None:
    a = plan(spec_of(SEARCH, DHGS))
    b = plan(spec_of({**SEARCH, "overrides": {"epochs": 3}}, DHGS))
    assert ids(a.stage("dhgs").trials) == ids(b.stage("dhgs").trials)
    assert not set(ids(a.stage("search").trials)) & set(ids(b.stage("search").trials))


def test_the_stage_name_is_part_of_the_id() -> None:
    a = plan(spec_of(SEARCH)).trials
    b = plan(spec_of({**SEARCH, "name": "search2"})).trials
    assert not set(ids(a)) & set(ids(b))
    assert [t.config for t in a] == [t.config for t in b]


def test_where_the_data_lives_is_not_part_of_the_id() -> None:
    a = plan(spec_of(SEARCH, data={"dataset": "digits", "root": "/mnt/a"}))
    b = plan(spec_of(SEARCH, data={"dataset": "digits", "root": "/mnt/b"}))
    assert ids(a.trials) == ids(b.trials)
    assert a.trials[0].config.data.root == "/mnt/a"  # but the trial still gets its root


def test_trading_memory_for_time_is_not_part_of_the_id() -> None:
    lean = plan(spec_of({**SEARCH, "overrides": {**SEARCH.get("overrides", {}), "activation_checkpointing": True}}))
    plain = plan(spec_of(SEARCH))
    assert ids(lean.trials) == ids(plain.trials)
    assert [a.arm.arm_id for a in lean.trials] == [a.arm.arm_id for a in plain.trials]
    assert lean.trials[0].config.activation_checkpointing is True


# ---------------------------------------------------------------------------------------------------------
# arms


def test_arms_group_seeds_and_separate_sweep_values() -> None:
    trials = plan(spec_of(SEARCH)).stage("search").trials
    by_weighting: dict[str, set[str]] = {}
    for t in trials:
        by_weighting.setdefault(t.config.weighting, set()).add(t.arm.arm_id)
    assert all(len(arms) == 1 for arms in by_weighting.values())
    assert by_weighting["scalar"] != by_weighting["max_w"]
    assert {t.arm.label for t in trials} == {"weighting=scalar", "weighting=max_w"}


def test_a_stage_without_axes_has_one_base_arm() -> None:
    trials = plan(spec_of(DHGS)).trials
    assert len({t.arm for t in trials}) == 1 and trials[0].arm.label == "base"


# ---------------------------------------------------------------------------------------------------------
# dependent stages


def test_dependent_stage_waits_without_results() -> None:
    p = plan(spec_of(SEARCH, RETRAIN))
    retrain = p.stage("retrain")
    assert retrain.state == "waiting" and retrain.waiting_on == "search" and retrain.trials == ()
    assert retrain.expected_trials == 5  # 4 searches + DARTS_V2, one seed
    assert len(p.trials) == 4


def test_dependent_stage_waits_until_every_upstream_trial_finished() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    partial = results_for(first, "search")[:3]
    assert plan(spec, upstream=lambda name: partial).stage("retrain").state == "waiting"


def test_dependent_stage_expands_with_lineage_once_upstream_finished() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    results = results_for(first, "search")
    asked: list[str] = []

    def upstream(name: str) -> list[UpstreamResult]:
        asked.append(name)
        return results

    p = plan(spec, upstream=upstream)
    assert asked == ["search"]
    retrain = p.stage("retrain")
    assert retrain.state == "ready" and len(retrain.trials) == 5
    from_search, published = retrain.trials[:4], retrain.trials[4]
    search_ids = ids(first.stage("search").trials)
    assert [t.lineage.parent for t in from_search] == search_ids
    assert all(t.lineage.parent_stage == "search" for t in from_search)
    for t, r in zip(from_search, results):
        assert Genotype.from_json(t.config.genotype) == Genotype.from_dict(r.best)
        assert t.config.path is None and t.config.op_set == "sharp"  # sharp_darts is a 'sharp' space
        assert t.lineage.source == f"search/{r.trial_id}:best/default"
        assert t.config.epochs == 2 and t.config.seed == 0
    assert published.config.genotype == "DARTS_V2" and published.lineage.parent is None
    assert published.lineage.source == "published:DARTS_V2" and published.arm.label == "genotype=DARTS_V2"
    # Search trials keep their ids when the retrain expands.
    assert ids(p.stage("search").trials) == search_ids


def test_retrain_arms_pool_the_searches_of_one_arm() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    p = plan(spec, upstream=lambda name: results_for(first, name))
    search_arm = {t.trial_id: t.arm for t in first.stage("search").trials}
    arms: dict[str, set[str]] = {}
    for t in p.stage("retrain").trials[:4]:
        arms.setdefault(search_arm[t.lineage.parent].arm_id, set()).add(t.arm.arm_id)
        assert t.arm.label == f"from search: {search_arm[t.lineage.parent].label}"
    # Different genotypes (search seeds 0 and 1), same retrain arm per search arm; two search arms.
    assert len(arms) == 2 and all(len(a) == 1 for a in arms.values())


def test_two_searches_choosing_the_same_genotype_give_two_retrains() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    same = results_for(first, "search", archs=[GENOTYPES[0]])
    trials = plan(spec, upstream=lambda name: same).stage("retrain").trials
    assert len(trials) == 5 and len(set(ids(trials))) == 5
    assert len({t.config.genotype for t in trials[:4]}) == 1


def test_retrain_ids_are_stable_when_upstream_results_come_in_any_order() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    results = results_for(first, "search")
    a = plan(spec, upstream=lambda name: results)
    b = plan(spec, upstream=lambda name: list(reversed(results)))
    assert ids(a.trials) == ids(b.trials)


def test_results_of_trials_no_longer_in_the_spec_are_ignored() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    stale = UpstreamResult("0123456789ab", 7, config_to_dict(first.trials[0].config), best=GENOTYPES[2], last=GENOTYPES[2])
    p = plan(spec, upstream=lambda name: [*results_for(first, name), stale])
    assert "0123456789ab" not in {t.lineage.parent for t in p.trials}
    assert len(p.stage("retrain").trials) == 5


@pytest.mark.parametrize(
    ("take", "parse", "field"),
    [
        pytest.param("best", "default", "best", id="best-default"),
        pytest.param("last", "default", "last", id="last-default"),
        pytest.param("best", "no_hack", "best_no_hack", id="best-no-hack"),
        pytest.param("last", "no_hack", "last_no_hack", id="last-no-hack"),
    ],
)
def test_take_and_parse_choose_the_architecture(take: str, parse: str, field: str) -> None:
    spec = spec_of({**SEARCH, "sweep": {}, "seeds": [0]},
                   {**RETRAIN, "from": {"stage": "search", "take": take, "parse": parse}, "genotypes": []})  # fmt: skip
    (search,) = plan(spec).trials
    options = dict(zip(("best", "last", "best_no_hack", "last_no_hack"), GENOTYPES + [GENOTYPES[0]]))
    options["last_no_hack"] = get_published("SHARPER_MAX_W").genotype.to_dict()
    result = UpstreamResult(search.trial_id, 0, config_to_dict(search.config), **options)
    (trial,) = plan(spec, upstream=lambda name: [result]).stage("retrain").trials
    assert Genotype.from_json(trial.config.genotype) == Genotype.from_dict(options[field])
    assert trial.lineage.source.endswith(f":{take}/{parse}")


def test_diverged_upstream_trials_give_nothing_to_retrain() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    results = results_for(first, "search")
    results[1] = UpstreamResult(results[1].trial_id, results[1].seed, results[1].config, status="diverged")
    retrain = plan(spec, upstream=lambda name: results).stage("retrain")
    assert len(retrain.trials) == 4
    assert results[1].trial_id not in {t.lineage.parent for t in retrain.trials}
    assert any(results[1].trial_id in note and "diverged" in note for note in retrain.notes)


def test_top_keeps_the_best_scored_upstream_trials() -> None:
    spec = spec_of(SEARCH, {**RETRAIN, "from": {"stage": "search", "top": 2}, "genotypes": []})
    first = plan(spec)
    results = results_for(first, "search")  # scores 0, 1, 2, 3 in plan order
    trials = plan(spec, upstream=lambda name: results).stage("retrain").trials
    assert {t.lineage.parent for t in trials} == {results[2].trial_id, results[3].trial_id}


def test_an_explicit_op_set_wins_over_the_search_space() -> None:
    spec = spec_of(SEARCH, {**RETRAIN, "overrides": {"epochs": 2, "op_set": "sharp"}, "genotypes": []})
    first = plan(spec)
    trials = plan(spec, upstream=lambda name: results_for(first, name)).trials
    assert all(t.config.op_set == "sharp" for t in trials if t.kind == "retrain")


def test_an_unusable_upstream_architecture_is_a_plan_error() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    broken = [UpstreamResult(t.trial_id, t.seed, config_to_dict(t.config), best={"normal": [["x", 0]]}) for t in first.trials]
    with pytest.raises(PlanError, match="search/"):
        plan(spec, upstream=lambda name: broken)


def test_retraining_a_path_clears_the_recipes_genotype() -> None:
    retrain = {"name": "retrain", "kind": "retrain", "recipe": "digits_retrain", "from": {"stage": "dhgs"},
               "overrides": {"epochs": 2, "auxiliary": False}}  # fmt: skip
    spec = spec_of(DHGS, retrain)
    first = plan(spec)
    paths = [resolve_path("MULTI_CHANNEL_HANDMADE_PATH").to_dict(), resolve_path("MULTI_CHANNEL_SCALAR_PATH").to_dict()]
    trials = plan(spec, upstream=lambda name: results_for(first, name, archs=paths)).stage("retrain").trials
    assert len(trials) == 2
    for t, path in zip(trials, paths):
        assert t.config.genotype is None
        assert HyperCuboidPath.from_json(t.config.path) == HyperCuboidPath.from_dict(path)
        assert t.lineage.source == f"dhgs/{t.lineage.parent}:best"


def test_each_stage_kind_reads_its_trainers_summary_into_an_upstream_result() -> None:
    """As the runner does with a results row's summary (an unknown key, as rows may hold, is ignored)."""
    from nas_service.stage_kinds import get_stage_kind

    def upstream(kind: str, trial_id: str, summary: dict) -> Any:
        stage_kind = get_stage_kind(kind)
        return stage_kind.upstream(trial_id, stage_kind.summary_type.from_dict({**summary, "written_by": "x"}))

    g, h = GENOTYPES[0], GENOTYPES[1]
    search = {"kind": "cell_search", "config": {"seed": 3, "space": "sharp_darts"}, "best_genotype": g,
              "last_genotype": h, "best_genotype_no_hack": h, "best_valid_acc": 0.7,
              "history": [{"genotype_no_hack": g}]}  # fmt: skip
    r = upstream("cell_search", "abc", search)
    assert (r.seed, r.best, r.last, r.best_no_hack, r.last_no_hack, r.score) == (3, g, h, h, g, 0.7)
    path = resolve_path("MULTI_CHANNEL_HANDMADE_PATH").to_dict()
    retrain = {"kind": "retrain", "config": {"seed": 1}, "spec": {"model": "path", "path": path},
               "best_valid_top1": None, "test_top1_at_best": 0.5}  # fmt: skip
    r = upstream("retrain", "def", retrain)
    assert (r.best, r.last, r.score) == (path, path, 0.5)
    r = upstream("hypercuboid_search", "ghi", {"kind": "hypercuboid_search", "config": {"seed": 2},
                                               "best_path": path, "last_path": None, "best_valid_acc": 0.6})  # fmt: skip
    assert (r.seed, r.best, r.last, r.score) == (2, path, None, 0.6)


# ---------------------------------------------------------------------------------------------------------
# grid stages

GRID = {"name": "grid", "kind": "grid", "recipe": "digits_retrain", "overrides": {"epochs": 2, "auxiliary": False},
        "channels": [8, 16], "layers": 2, "head_channels": 64}  # fmt: skip
INLINE = {"stem_channels": 8, "head_channels": 64,
          "stages": [[1, 8, 8, "SharpSepConv"], [2, 8, 16, "ResizablePool"], [1, 16, 16, "SharpSepConv"],
                     [2, 16, 16, "ResizablePool"]]}  # fmt: skip


def test_grid_candidates_are_path_retrains() -> None:
    stage = {**GRID, "candidates": ["MULTI_CHANNEL_HANDMADE_PATH", INLINE, {"random": 3, "seed": 5}], "seeds": [0, 1],
             "off_grid": "allow"}  # the published human path is on the CIFAR grid, not this one
    trials = plan(spec_of(stage)).stage("grid").trials
    assert len(trials) == 5 * 2
    assert all(t.kind == "grid" and t.config.genotype is None for t in trials)
    assert trials[0].config.path == "MULTI_CHANNEL_HANDMADE_PATH"
    assert HyperCuboidPath.from_json(trials[2].config.path) == HyperCuboidPath.from_dict(INLINE)
    sources = [t.lineage.source for t in trials[::2]]
    assert sources == ["published:MULTI_CHANNEL_HANDMADE_PATH", "inline:candidates[1]", "random#1(seed=5)",
                       "random#2(seed=5)", "random#3(seed=5)"]  # fmt: skip
    for t in trials[4:]:
        path = HyperCuboidPath.from_json(t.config.path)
        assert path.layers == 2 and path.head_channels == 64
        assert {path.stem_channels} | {s.c_out for s in path.stages} <= {8, 16}


def test_a_path_off_the_stage_grid_is_refused_unless_allowed() -> None:
    with pytest.raises(SpecError) as err:
        spec_of({**GRID, "candidates": ["MULTI_CHANNEL_HANDMADE_PATH", INLINE], "seeds": [0]})
    assert [i.path for i in err.value.issues] == ["stages[0].candidates[0]"]
    message = str(err.value)
    assert "widths [32, 64, 128, 256] not in channels [8, 16]" in message and "head 768, the grid's is 64" in message
    assert "8 stages, the grid has 4 (2 layers)" in message and "off_grid: allow" in message


def test_a_grid_taking_dhgs_paths_must_be_the_search_grid() -> None:
    search = {"name": "dhgs", "kind": "hypercuboid_search", "recipe": "digits_hypercuboid_search", "seeds": [0]}
    on_grid = {**GRID, "from": {"stage": "dhgs"}, "candidates": [INLINE], "seeds": [0]}
    spec_of(search, on_grid)  # the digits recipe's grid is [8, 16] x 2 layers, head 64
    with pytest.raises(SpecError, match=r"stages\[1\]\.from: takes paths from 'dhgs', whose grid is channels "
                                        r"\[8, 16\], layers 2, head 64, but this stage's grid is channels \[8, 16, 32\]"):
        spec_of(search, {**on_grid, "channels": [8, 16, 32]})
    spec_of(search, {**on_grid, "channels": [8, 16, 32], "off_grid": "allow"})


def test_an_inline_path_label_names_its_arm_but_not_its_trial() -> None:
    plain = plan(spec_of({**GRID, "candidates": [INLINE], "seeds": [0]})).stage("grid").trials[0]
    named = plan(spec_of({**GRID, "candidates": [{**INLINE, "label": "human"}], "seeds": [0]})).stage("grid").trials[0]
    assert named.arm.label == "path=human" and plain.arm.label == "path=candidates[0]"
    assert named.trial_id == plain.trial_id and named.config == plain.config
    with pytest.raises(SpecError, match="label"):
        spec_of({**GRID, "candidates": [{**INLINE, "label": "has space"}], "seeds": [0]})


def test_random_paths_are_deterministic_and_grow_by_appending() -> None:
    def random_paths(n: int, seed: int) -> list[str]:
        stage = {**GRID, "candidates": [{"random": n, "seed": seed}], "seeds": [0]}
        return [t.config.path for t in plan(spec_of(stage)).trials]

    assert random_paths(3, 0) == random_paths(3, 0)
    assert random_paths(4, 0)[:3] == random_paths(3, 0)
    assert random_paths(3, 0) != random_paths(3, 1)


def test_duplicate_candidates_are_trained_once() -> None:
    stage = {**GRID, "candidates": [INLINE, INLINE], "seeds": [0]}
    grid = plan(spec_of(stage)).stage("grid")
    assert len(grid.trials) == 1 and any("same trial" in n for n in grid.notes)


def test_optuna_grid_is_searched_at_run_time() -> None:
    stage = {**GRID, "optuna": {"trials": 4, "seed": 3}, "asha": {"grace_period": 1, "metric": "valid_loss"},
             "seeds": [7]}  # fmt: skip
    grid = plan(spec_of(stage)).stage("grid")
    assert grid.state == "search" and grid.trials == () and grid.expected_trials == 4
    assert grid.asha is not None and grid.asha.mode == "min" and grid.epochs == 2
    optuna = grid.optuna
    assert optuna is not None and (optuna.trials, optuna.seed) == (4, 3)
    space = optuna.space()
    assert list(space) == ["stem", "c_out_0", "op_0", "c_out_1", "op_1", "c_out_2", "op_2", "c_out_3", "op_3"]
    assert space["stem"] == [8, 16] and space["op_0"] == ["SharpSepConv", "ResizablePool"]
    params = {"stem": 16, **{f"c_out_{t}": 8 for t in range(4)}, **{f"op_{t}": "SharpSepConv" for t in range(4)}}
    trial = optuna.trial(params)
    assert trial.trial_id == optuna.trial(dict(params)).trial_id and trial.seed == 7
    path = HyperCuboidPath.from_json(trial.config.path)
    assert path.stem_channels == 16 and [s.c_in for s in path.stages] == [16, 8, 8, 8]
    assert optuna.owns(trial.config)
    other = optuna.trial({**params, "op_3": "ResizablePool"})
    assert other.trial_id != trial.trial_id and other.arm != trial.arm
    with pytest.raises(PlanError, match="c_out_3"):
        optuna.path_for({k: v for k, v in params.items() if k != "c_out_3"})


def test_retrain_from_optuna_takes_the_top_trials() -> None:
    optuna_stage = {**GRID, "name": "optuna", "optuna": {"trials": 3}}
    retrain = {"name": "best", "kind": "retrain", "recipe": "digits_retrain", "from": {"stage": "optuna", "top": 1},
               "overrides": {"epochs": 2}, "seeds": [0, 1]}  # fmt: skip
    spec = spec_of(optuna_stage, retrain)
    optuna = plan(spec).stage("optuna").optuna
    assert optuna is not None and plan(spec).stage("best").state == "waiting"
    trials = []
    for stem, width in [(8, 8), (16, 8), (8, 16)]:  # three different paths
        params = {"stem": stem, **{f"c_out_{t}": width for t in range(4)}, **{f"op_{t}": "SharpSepConv" for t in range(4)}}
        trials.append(optuna.trial(params))
    assert len(set(ids(trials))) == 3
    results = [UpstreamResult(t.trial_id, t.seed, config_to_dict(t.config), best=json.loads(t.config.path),
                              last=json.loads(t.config.path), score=s) for t, s in zip(trials, (0.1, 0.9, 0.5))]
    assert plan(spec, upstream=lambda name: results[:2]).stage("best").state == "waiting"  # 2 of 3 trials
    best = plan(spec, upstream=lambda name: results).stage("best")
    assert [t.lineage.parent for t in best.trials] == [trials[1].trial_id] * 2
    assert [t.seed for t in best.trials] == [0, 1]


# ---------------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_scores_every_retrain() -> None:
    evaluate = {"name": "eval", "kind": "evaluate", "from": {"stage": "retrain"}, "datasets": ["digits"],
                "checkpoint": "last"}  # fmt: skip
    spec = spec_of(SEARCH, RETRAIN, evaluate)
    first = plan(spec)
    assert first.stage("eval").waiting_on == "retrain" and first.stage("eval").expected_trials == 5
    second = plan(spec, upstream=lambda name: results_for(first, name))
    assert second.stage("eval").state == "waiting"  # the retrains have not finished yet

    def upstream(name: str) -> list[UpstreamResult]:
        return results_for(first if name == "search" else second, name)

    third = plan(spec, upstream=upstream)
    evals = third.stage("eval").trials
    retrains = third.stage("retrain").trials
    assert [t.lineage.parent for t in evals] == ids(retrains)
    assert all(t.config.checkpoint == "last" and t.config.datasets == ("digits",) for t in evals)
    assert [t.arm.label for t in evals] == [f"of retrain: {t.arm.label}" for t in retrains]
    assert ids(third.stage("retrain").trials) == ids(second.stage("retrain").trials)


# ---------------------------------------------------------------------------------------------------------
# concurrency


@pytest.mark.parametrize(
    ("per_trial", "cpus", "gpus", "expected"),
    [
        pytest.param({"cpu": 1, "gpu": 0}, 2, 0, 2, id="cpu-only"),
        pytest.param({"cpu": 1, "gpu": 0}, 2.5, 0, 2, id="fractional-cluster"),
        pytest.param({"cpu": 0.1, "gpu": 0}, 1, 0, 10, id="float-rounding"),
        pytest.param({"cpu": 4, "gpu": 1}, 32, 2, 2, id="gpu-bound"),
        pytest.param({"cpu": 8, "gpu": 0.5}, 16, 4, 2, id="cpu-bound-with-gpus"),
        pytest.param({"cpu": 1, "gpu": 0.25}, 16, 1, 4, id="shared-gpu"),
        pytest.param({"cpu": 4, "gpu": 0}, 2, 0, 1, id="at-least-one"),
        pytest.param({"cpu": 1, "gpu": 1}, 8, 0, 1, id="no-gpu-at-least-one"),
        pytest.param(Resources(cpu=2, gpu=0), 5, 0, 2, id="resources-object"),
    ],
)
def test_max_concurrent_trials(per_trial: Any, cpus: float, gpus: float, expected: int) -> None:
    assert max_concurrent_trials(per_trial, cpus, gpus) == expected


def test_max_concurrent_trials_refuses_empty_trials() -> None:
    with pytest.raises(ValueError, match="cpu=0, gpu=0"):
        max_concurrent_trials({"cpu": 0, "gpu": 0}, 4, 0)
    with pytest.raises(ValueError, match=">= 0"):
        max_concurrent_trials({"cpu": 1}, -1, 0)


# ---------------------------------------------------------------------------------------------------------
# describe_plan


def test_describe_plan_marks_done_pending_and_waiting() -> None:
    spec = spec_of(SEARCH, RETRAIN, {**GRID, "optuna": {"trials": 2}})
    p = plan(spec)
    done = {p.trials[0].trial_id}
    text = describe_plan(p, done)
    lines = text.splitlines()
    assert lines[0].split() == ["STAGE", "TRIAL", "ARM", "LABEL", "SEED", "STATE"]
    rows = {line.split()[1]: line for line in lines[1:] if line.startswith("search")}
    assert rows[p.trials[0].trial_id].rstrip().endswith("done")
    assert all(rows[t.trial_id].rstrip().endswith("pending") for t in p.trials[1:])
    assert all(t.arm.arm_id in rows[t.trial_id] and t.arm.label in rows[t.trial_id] for t in p.trials)
    retrain_line = next(line for line in lines if line.startswith("retrain"))
    assert "waiting on search" in retrain_line and "(5 trials)" in retrain_line
    assert any(line.startswith("grid") and "optuna: 2 trials" in line for line in lines)
    assert lines[-1] == "t: 4 trials known, 1 done, 3 pending; waiting: retrain"


def test_describe_plan_of_an_expanded_plan() -> None:
    spec = spec_of(SEARCH, RETRAIN)
    first = plan(spec)
    p = plan(spec, upstream=lambda name: results_for(first, name))
    text = describe_plan(p, set(ids(first.trials)))
    states = [line.split()[-1] for line in text.splitlines()[1:-1]]
    assert "waiting" not in text and states.count("done") == 4 and states.count("pending") == 5
    assert "from search: weighting=max_w" in text and "genotype=DARTS_V2" in text
