"""docs/results_schema.md's recipes run as written: the DuckDB queries on DuckDB and the pyarrow snippet,
on a store with a resumed trial (a duplicate epoch from two attempts) and parts whose columns differ."""

from __future__ import annotations

import re

import duckdb
import pandas as pd
import pytest

from nas_service.results import ResultsStore
from tests.helpers import ROOT

DOC = (ROOT / "docs" / "results_schema.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path / "runs", "exp")
    for trial, arm, seed, acc in (("t1", "search:a", 0, 0.8), ("t2", "search:a", 1, 0.9), ("t3", "search:b", 0, 0.7)):
        # only t3 records a second metric: its parts have a column the others lack
        extra = {"only_t3": 1.0} if trial == "t3" else {}
        for epoch in (1, 2):
            store.write_epoch(trial, 0, {"stage": "search", "seed": seed, "epoch": epoch, "valid_acc": acc - 0.1, **extra})
        store.write_trial(trial, 0, {"stage": "search", "stage_kind": "cell_search", "status": "finished", "seed": seed,
                                     "arm": arm, "config": {"seed": seed}, "best": {"valid_acc": acc, **extra}})  # fmt: skip
    # t1 resumed from its epoch-1 checkpoint (attempt 1) and redid epoch 2 with a different value
    store.write_epoch("t1", 1, {"stage": "search", "seed": 0, "epoch": 2, "valid_acc": 0.75})
    return store


def test_the_duckdb_queries_run_as_written_and_agree_with_the_store(store) -> None:
    queries = [q.replace("<storage>/<exp>", store.root.rsplit("/", 1)[0]) for q in _blocks("sql")[0].split(";") if q.strip()]
    assert len(queries) == 2
    epochs = duckdb.sql(queries[0]).df()
    ours = store.epochs()
    assert len(epochs) == len(ours) == 6
    assert epochs.loc[(epochs["trial_id"] == "t1") & (epochs["epoch"] == 2), "valid_acc"].item() == 0.75
    per_arm = duckdb.sql(queries[1]).df().set_index("arm")
    assert per_arm.loc["search:a", "seeds"] == 2 and per_arm.loc["search:a", "mean_acc"] == pytest.approx(0.85)


def test_the_pyarrow_recipe_reads_every_column_of_every_part(store) -> None:
    snippet = next(b for b in _blocks("python") if "unify_schemas" in b)
    scope: dict = {}
    exec(snippet.replace('"runs/quickstart/results/epochs"', repr(store.root + "/epochs")), scope)
    epochs = scope["epochs"]
    ours = store.epochs()
    assert "only_t3" in epochs.columns and set(ours.columns) <= set(epochs.columns) and len(epochs) == len(ours)
    assert epochs.loc[(epochs["trial_id"] == "t1") & (epochs["epoch"] == 2), "valid_acc"].item() == 0.75
    # what the doc warns about: pandas alone keeps the first part's columns
    assert "only_t3" not in pd.read_parquet(store.root + "/epochs").columns


def test_a_compacted_store_reads_whole_with_the_plain_pandas_line(store) -> None:
    store.compact()
    line = next(b for b in _blocks("python") if "pd.read_parquet(" in b and "unify" not in b)
    scope: dict = {}
    exec(line.replace('"runs/quickstart/results/trials"', repr(store.root + "/trials")), scope)
    trials = scope["trials"]
    assert "best.only_t3" in trials.columns and len(trials) == 3 and set(store.trials().columns) <= set(trials.columns)
