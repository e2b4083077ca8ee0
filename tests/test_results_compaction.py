"""Compaction of the results store: per trial when it ends, per table when the experiment is complete
(`nas-service compact`). The tables read the same before and after, and after a SIGKILL at any point of a
compaction followed by a rerun: no row lost or duplicated."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import warnings
import sys

import pandas as pd
import pandas.testing as pdt
import pytest

from nas_service.results import COMPACTED, ResultsStore
from tests.helpers import ROOT


def _fill(store: ResultsStore, trials: int = 6, epochs: int = 4) -> None:
    """Trials of two stages whose metrics differ (so the parts' columns differ), one of them resumed."""
    for i in range(trials):
        trial, stage = f"t{i:03d}", "search" if i % 2 else "retrain"
        metric = {"valid_acc": 0.5 + i / 100} if stage == "search" else {"valid_top1": 0.4 + i / 100, "test_top1": 0.3}
        for epoch in range(1, epochs + 1):
            store.write_epoch(trial, 0, {"stage": stage, "seed": i, "epoch": epoch, **metric})
        if i == 1:  # resumed from its epoch-2 checkpoint: epochs 3.. again as attempt 2, with other values
            for epoch in range(3, epochs + 1):
                store.write_epoch(trial, 2, {"stage": stage, "seed": i, "epoch": epoch, "valid_acc": 0.99})
            store.write_trial(trial, 0, {"stage": stage, "status": "errored", "seed": i, "config": {"seed": i}})
        store.write_trial(trial, 2 if i == 1 else 0, {"stage": stage, "status": "finished", "seed": i,
                                                      "config": {"seed": i, "stage_only": stage},
                                                      "best": metric, "params": 100 + i})  # fmt: skip


def _tables(store: ResultsStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    return store.epochs(), store.trials()


def _same(a: tuple[pd.DataFrame, pd.DataFrame], b: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    for x, y in zip(a, b):
        pdt.assert_frame_equal(x.reset_index(drop=True), y[x.columns].reset_index(drop=True))


def test_a_trial_compacts_into_one_part_per_table_and_reads_the_same(tmp_path) -> None:
    store = ResultsStore(tmp_path, "exp")
    _fill(store)
    before = _tables(store)
    assert store.compact_trial("t001") == 6 + 2  # epochs: 4 + 2 resumed; trials: 2 attempts
    folder = tmp_path / "exp" / "results"
    assert [p.name for p in (folder / "epochs" / "trial=t001").iterdir()] == [COMPACTED]
    assert [p.name for p in (folder / "trials" / "trial=t001").iterdir()] == [COMPACTED]
    _same(before, _tables(store))
    assert store.compact_trial("t001") == 0  # nothing left to do
    assert store.epochs(trial_ids=["t001"])["valid_acc"].tolist() == [0.51, 0.51, 0.99, 0.99]


def test_the_table_compacts_into_one_file_that_plain_pandas_reads_whole(tmp_path) -> None:
    store = ResultsStore(tmp_path, "exp")
    _fill(store)
    store.compact_trial("t003")
    before = _tables(store)
    assert store.compact() == {"epochs": 4 * 6 + 2 - 3, "trials": 7}  # t003: 4 epoch parts were already 1
    results = tmp_path / "exp" / "results"
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*.parquet")) == [
        f"epochs/{COMPACTED}", f"trials/{COMPACTED}"]
    _same(before, _tables(store))
    for table, frame in zip(("epochs", "trials"), before):
        plain = pd.read_parquet(results / table)
        assert set(frame.columns) <= set(plain.columns) and len(plain) == len(frame)
    # filtered reads take the asked trials' rows out of the table-wide file
    assert store.trials(trial_ids=["t004"])["trial_id"].tolist() == ["t004"]
    # rows written after a compaction are read beside it, a later attempt winning, and compact again
    store.write_epoch("t000", 5, {"stage": "retrain", "seed": 0, "epoch": 4, "valid_top1": 0.77})
    assert store.epochs(trial_ids=["t000"])["valid_top1"].tolist()[-1] == 0.77
    store.compact()
    assert store.epochs(trial_ids=["t000"])["valid_top1"].tolist()[-1] == 0.77
    assert len(list(results.rglob("*.parquet"))) == 2


# Compacts every trial, then the tables, through a file system that SIGKILLs this process just before its
# KILL_AT-th write, rename or delete (0: never; the count of such operations goes to stdout at the end).
_COMPACT_ALL = """
import os, signal, sys
from nas_service.results import ResultsStore

import pyarrow.fs as pafs

# A handler behind pafs.PyFileSystem (pyarrow.dataset takes only real file systems) that delegates.
class KillingHandler(pafs.FileSystemHandler):
    def __init__(self, fs, kill_at):
        self._fs, self._kill_at, self.ops = fs, kill_at, 0
    def _tick(self):
        self.ops += 1
        if self.ops == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    def open_output_stream(self, path, metadata):
        self._tick(); return self._fs.open_output_stream(path, metadata=metadata)
    def move(self, src, dest):
        self._tick(); return self._fs.move(src, dest)
    def delete_file(self, path):
        self._tick(); return self._fs.delete_file(path)
    def get_type_name(self): return "killing"
    def equals(self, other): return other is self
    def normalize_path(self, path): return self._fs.normalize_path(path)
    def get_file_info(self, paths): return self._fs.get_file_info(paths)
    def get_file_info_selector(self, selector): return self._fs.get_file_info(selector)
    def create_dir(self, path, recursive): return self._fs.create_dir(path, recursive=recursive)
    def delete_dir(self, path): return self._fs.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False):
        return self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)
    def delete_root_dir_contents(self): raise NotImplementedError
    def copy_file(self, src, dest): return self._fs.copy_file(src, dest)
    def open_input_stream(self, path): return self._fs.open_input_stream(path)
    def open_input_file(self, path): return self._fs.open_input_file(path)
    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path, metadata=metadata)

store = ResultsStore(sys.argv[1], "exp")
handler = KillingHandler(store.filesystem, int(sys.argv[2]))
store.filesystem = pafs.PyFileSystem(handler)
for trial in sorted({p.rsplit("trial=", 1)[1].split("/")[0] for p in store.part_paths("epochs") if "trial=" in p}):
    store.compact_trial(trial)
store.compact()
print(handler.ops)
"""


def _compact(folder, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _COMPACT_ALL, str(folder), str(kill_at)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_a_compaction_killed_at_random_points_loses_and_duplicates_nothing(tmp_path) -> None:
    reference = ResultsStore(tmp_path / "reference", "exp")
    _fill(reference, trials=12, epochs=5)
    expected = _tables(reference)
    dry = tmp_path / "dry"
    shutil.copytree(tmp_path / "reference", dry)
    done = _compact(dry, 0)
    assert done.returncode == 0, done.stderr
    operations = int(done.stdout.split()[-1])  # 12 trials x 2 tables x (write, rename, deletes) + the tables'
    assert operations > 100
    rng = random.Random(0)
    points = sorted(rng.sample(range(1, operations + 1), 10)) + [operations]  # the last one: the final delete
    for kill_at in points:
        work = tmp_path / f"kill{kill_at}"
        shutil.copytree(tmp_path / "reference", work)
        killed = _compact(work, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr)
        store = ResultsStore(work, "exp")
        _same(expected, _tables(store))  # readable and equal half-way
        assert _compact(work, 0).returncode == 0  # the rerun
        _same(expected, _tables(store))
        assert len(list((work / "exp" / "results").rglob("*.parquet"))) == 2


def test_a_read_that_races_a_compaction_lists_again_instead_of_losing_rows(tmp_path) -> None:
    store = ResultsStore(tmp_path, "exp")
    _fill(store)
    expected = store.epochs()
    stale = store.part_paths("epochs")  # what a reader listed just before a compaction ran
    store.compact()
    real, calls = store.part_paths, []

    def listing(table, trial_ids=None):
        calls.append(table)
        return stale if len(calls) == 1 else real(table, trial_ids=trial_ids)

    store.part_paths = listing  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping unreadable part": the parts are gone, not damaged
        got = store.epochs()
    pdt.assert_frame_equal(expected, got)
    assert calls == ["epochs", "epochs"]


@pytest.mark.parametrize("compacted", [False, True], ids=["parts", "compacted"])
def test_trial_and_stage_filters_read_only_the_asked_rows(tmp_path, compacted) -> None:
    store = ResultsStore(tmp_path, "exp")
    _fill(store)
    if compacted:
        store.compact()
    everything = store.epochs()
    search = store.epochs(stages=["search"])
    pdt.assert_frame_equal(search.reset_index(drop=True),
                           everything[everything["stage"] == "search"][search.columns].reset_index(drop=True))
    assert set(store.trials(stages=["retrain"])["trial_id"]) == {"t000", "t002", "t004"}
    assert store.trials(trial_ids=["t001"], stages=["retrain"]).empty  # t001 is a search trial
    # the filter reaches pyarrow.dataset: the raw table holds only t003's rows, even from a table-wide file
    raw = store.read_table("epochs", trial_ids=["t003"])
    assert set(raw.column("trial_id").to_pylist()) == {"t003"} and raw.num_rows == 4
