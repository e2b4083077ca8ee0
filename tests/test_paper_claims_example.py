"""examples/paper_claims.yaml validates and plans to what docs/paper_claims.md says it runs, and the claim
table's functions (benchmarks/paper_claims.py) compute what they say on a hand-built trials table."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "paper_claims.yaml"
SEEDS = [0, 1, 2, 3, 4]


def _claims_module() -> Any:
    spec = importlib.util.spec_from_file_location("paper_claims", REPO / "benchmarks" / "paper_claims.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    from nas_service.commands import validate

    assert validate.run(argparse.Namespace(spec=EXAMPLE)) == 0
    assert capsys.readouterr().out.strip().endswith("valid")


def test_the_example_plans_both_claims_over_five_seeds() -> None:
    from nas_service.planner import UpstreamResult, plan
    from nas_service.spec import load_spec
    from nas_service.spec_models import stage_base_config
    from search_spaces.paths import resolve_path
    from trainers.config import config_to_dict

    spec = load_spec(EXAMPLE)
    cells, sharper, dhgs, paths = spec.stages
    # (a) scalar vs Max-W cell searches, 8 ops per normal cell as in the paper, paired by seed, in the
    # sharpDARTS space and in the SharperDARTS space of the paper's no-hack genotypes.
    assert [s.kind for s in spec.stages] == ["cell_search", "cell_search", "hypercuboid_search", "grid"]
    for search in (cells, sharper, dhgs):
        assert search.sweep == {"weighting": ["scalar", "max_w"]} and search.seeds == SEEDS
    for stage, space in ((cells, "sharp_darts"), (sharper, "sharper_darts")):
        config = stage_base_config(spec, stage)
        assert (config.space, config.steps, config.epochs) == (space, 4, 3)
    # (b) the DHGS paths, the human path and random paths, on the DHGS grid, over the same seeds.
    assert (paths.from_.stage, paths.from_.take, paths.seeds, paths.baseline) == ("dhgs", "best", SEEDS, "path=human")
    search_grid = stage_base_config(spec, dhgs)
    assert (list(search_grid.channels), search_grid.layers, search_grid.head_channels) == \
        (paths.channels, paths.layers, paths.head_channels)  # fmt: skip

    first = {s.name: s for s in plan(spec).stages}
    assert [len(first[s].trials) for s in ("cell_search", "cell_search_sharper", "dhgs")] == [10, 10, 10]
    assert first["paths"].state == "waiting" and first["paths"].expected_trials == (10 + 1 + 3) * 5

    human = resolve_path("MULTI_CHANNEL_HANDMADE_PATH").to_dict()  # any path: the planner does not train it
    results = [UpstreamResult(t.trial_id, t.seed, config_to_dict(t.config), best=human, last=human, score=0.5)
               for t in first["dhgs"].trials]  # fmt: skip
    done = {s.name: s for s in plan(spec, upstream=lambda name: results if name == "dhgs" else []).stages}
    arms: dict[str, list[int]] = {}
    for trial in done["paths"].trials:
        arms.setdefault(trial.arm.label, []).append(trial.seed)
    assert sorted(arms["path=human"]) == SEEDS
    randoms = [label for label in arms if label.startswith("path=random#")]
    assert len(randoms) == 3 and all(sorted(arms[label]) == SEEDS for label in randoms)
    for weighting in ("scalar", "max_w"):  # each search's path over every seed: 5 searches x 5 seeds
        assert sorted(arms[f"from dhgs: weighting={weighting}"]) == sorted(SEEDS * 5)


# ---------------------------------------------------------------------------------------------------------
# The claim table's functions on a hand-built trials table

CONV, SKIP, POOL, NONE = "sep_conv_3x3", "skip_connect", "max_pool_3x3", "none"


def _search_row(weighting: str, seed: int, normal_ops: list[str]) -> dict[str, Any]:
    genotype = {"normal": [[op, i % 2] for i, op in enumerate(normal_ops)], "normal_concat": [4, 5],
                "reduce": [[CONV, 0]] * 8, "reduce_concat": [4, 5]}  # fmt: skip
    return {"stage": "cell_search", "stage_kind": "cell_search", "status": "finished", "trial_id": f"c-{weighting}-{seed}",
            "seed": seed, "config.weighting": weighting, "config.space": "sharp_darts",
            "finished_at": pd.Timestamp(seed, unit="s", tz="UTC"),
            "extra.arm_label": f"weighting={weighting}", "arm": f"cell_search:{weighting}", "lineage_trial_id": None,
            "path_json": None,
            "genotype_json": json.dumps(genotype), "best_epoch": 3,
            "extra.summary_json": json.dumps({"best_genotype_no_hack": genotype}),
            "best.param_free_share_no_hack": 0.5, "best.arch_entropy_normal": 0.8, "best.arch_entropy_reduce": 0.7,
            "best.valid_acc": 0.9}  # fmt: skip


def _path_row(label: str, path: str, seed: int, acc: float, parent: str | None = None) -> dict[str, Any]:
    return {"stage": "paths", "stage_kind": "grid", "status": "finished", "trial_id": f"p-{path}-{seed}", "seed": seed,
            "finished_at": pd.Timestamp(100 + seed, unit="s", tz="UTC"), "extra.arm_label": label, "arm": f"paths:{label}",
            "lineage_trial_id": parent, "path_json": path, "best.test_top1": acc, "params": 1000}  # fmt: skip


def _dhgs_row(weighting: str, seed: int) -> dict[str, Any]:
    return {"stage": "dhgs", "stage_kind": "hypercuboid_search", "status": "finished", "trial_id": f"d-{weighting}-{seed}",
            "seed": seed, "config.weighting": weighting, "finished_at": pd.Timestamp(50 + seed, unit="s", tz="UTC"),
            "extra.arm_label": f"weighting={weighting}", "arm": f"dhgs:{weighting}", "lineage_trial_id": None,
            "path_json": f"dhgs-{seed}",
            "best.arch_entropy_normalized": 0.8, "best.valid_acc": 0.9}  # fmt: skip


def _trials() -> pd.DataFrame:
    rows = []
    for seed, free in zip(range(3), (6, 5, 6)):  # scalar: 6, 5, 6 of 8 parameter-free (one 'none')
        rows.append(_search_row("scalar", seed, [SKIP] * (free - 1) + [NONE] + [CONV] * (8 - free)))
    for seed, free in zip(range(3), (2, 3, 2)):  # Max-W: 2, 3, 2 of 8
        rows.append(_search_row("max_w", seed, [POOL] * free + [CONV] * (8 - free)))
    human = {0: 0.90, 1: 0.92, 2: 0.91}
    rows += [_dhgs_row("scalar", s) for s in range(3)]
    for seed, acc in human.items():
        rows.append(_path_row("path=human", "human", seed, acc))
        rows.append(_path_row("path=random#1(seed=0)", "random1", seed, acc - 0.05))
        for search in range(3):  # each DHGS path: the human's accuracy + 0.01 * (search + 1)
            rows.append(_path_row("from dhgs: weighting=scalar", f"dhgs-{search}", seed, acc + 0.01 * (search + 1),
                                  parent=f"d-scalar-{search}"))  # fmt: skip
    return pd.DataFrame(rows)


def test_param_free_claim_pairs_max_w_with_scalar_by_seed() -> None:
    claims = _claims_module()
    cells = claims.normal_cell_rows(_trials())
    assert sorted(cells.loc[cells["weighting"] == "scalar", "param_free"]) == [5, 6, 6]
    assert set(cells["ops"]) == {8} and cells.loc[cells["weighting"] == "scalar", "none"].tolist() == [1, 1, 1]
    assert set(cells["param_free_reduce"]) == {0}  # the hand-built reduction cells are all convolutions
    assert set(cells["stage"]) == {"cell_search"} and set(cells["share_both"]) == {
        (f + 0) / 16 for f in (2, 3, 5, 6)}  # the reduction cells have no parameter-free op
    summaries, c = claims.param_free_claim(cells)
    assert summaries["scalar"].n == summaries["max_w"].n == 3
    assert math.isclose(summaries["scalar"].mean, 17 / 24) and math.isclose(summaries["max_w"].mean, 7 / 24)
    assert c.paired and c.n == 3 and math.isclose(c.difference, -10 / 24)  # (2-6, 3-5, 2-6) / 8 per seed
    assert c.ci_low < c.difference < c.ci_high < 0 and c.t_p < 0.05


def test_the_paper_reference_is_counted_from_its_no_hack_genotypes() -> None:
    paper = _claims_module().paper_reference()  # 6 of 8 'none' with scalar, 2 of 8 with Max-W
    assert (paper["scalar"]["none"], paper["max_w"]["none"]) == (6, 2)
    assert (paper["scalar"]["param_free"], paper["max_w"]["param_free"]) == (7, 4)  # with skip and pools
    assert paper["scalar"]["ops"] == paper["max_w"]["ops"] == 8


def test_path_claim_units_and_ranks() -> None:
    claims = _claims_module()
    rows = claims.path_rows(_trials())
    assert set(rows["group"]) == {"DHGS scalar", "human", "random#1(seed=0)"}
    assert sorted(rows.loc[rows["group"] == "DHGS scalar", "search_seed"].unique()) == [0, 1, 2]
    found = {g["group"]: g for g in claims.path_claim(rows)}
    dhgs = found["DHGS scalar"]  # one unit per search (its path's mean over 3 seeds), against 3 human seeds
    assert (dhgs["unit"], dhgs["paths"], dhgs["trials"], dhgs["summary"].n) == ("path", 3, 9, 3)
    assert not dhgs["vs_human"].paired and math.isclose(dhgs["vs_human"].difference, 0.02)
    assert dhgs["vs_human_by_seed"].paired and math.isclose(dhgs["vs_human_by_seed"].difference, 0.02)
    single = found["random#1(seed=0)"]  # one path: its seeds pair with the human path's
    assert single["unit"] == "seed" and single["vs_human"].paired and math.isclose(single["vs_human"].difference, -0.05)
    assert found["random (pooled)"]["paths"] == 1 and found["human"]["summary"].n == 3
    ranks = claims.path_ranks(rows)
    assert ranks["group"].tolist() == ["DHGS scalar"] * 3 + ["human", "random#1(seed=0)"]
    assert ranks["rank"].tolist() == [1, 2, 3, 4, 5] and ranks["search_seed"].iloc[0] == 2


def test_the_claim_table_renders_every_section() -> None:
    out = _claims_module().render(_trials())
    assert "## (a)" in out and "### cell_search (space sharp_darts)" in out and "## (b)" in out
    assert "## Search health" in out and "| 7 / 4 |" in out  # the paper's parameter-free ops
    assert "- DHGS scalar: ranks [1, 2, 3] of 5; 3 of 3 above the human path (rank 4)" in out
