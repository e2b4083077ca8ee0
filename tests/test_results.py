"""The Parquet results store: round trips, dedup by key across attempts, crash leftovers, differing columns,
URIs and object-store-like file systems (no rename), exports, config flattening, schema version."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from nas_service import result_values as RV
from nas_service import results as R
from nas_service.results import (
    RESULTS_SCHEMA_VERSION,
    ResultsError,
    ResultsSchemaError,
    ResultsStore,
    ResultsWarning,
    arm_id,
    best_and_last,
    epoch_columns,
    flatten_config,
    hardware_description,
    package_versions,
    read_epochs,
    read_trials,
    trial_columns,
)
from search_spaces.genotypes import get_published


def _epoch(stage: str = "search", epoch: int = 0, **metrics) -> dict:
    return {"stage": stage, "seed": 0, "epoch": epoch, **metrics}


def _trial(stage: str = "search", status: str = "finished", **fields) -> dict:
    return {"stage": stage, "status": status, "config": {"seed": 0, "weighting": "max_w"}, **fields}


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    return ResultsStore(tmp_path, "exp")


# ---------------------------------------------------------------------------------------------------------
# Round trip, ordering, empty store


def test_write_and_read_back(store, tmp_path):
    genotype = get_published("DARTS_V2").genotype
    # Written out of order, over two stages, so the reader's sort is exercised.
    store.write_epoch("b2", 0, _epoch("retrain", 1, valid_acc=0.7, train_loss=np.float32(0.5)))
    store.write_epoch("b2", 0, _epoch("retrain", 0, valid_acc=0.6, train_loss=0.9))
    store.write_epoch("a1", 0, _epoch("search", 0, valid_acc=0.5, genotype=genotype, lr=np.float64(0.1),
                                      steps=7, diverged=np.bool_(False)))  # fmt: skip
    store.write_trial("a1", 0, _trial(
        stage_kind="cell_search", genotype=genotype, params=1234, best_epoch=0, best_metric="valid_acc",
        best={"valid_acc": 0.5}, last={"valid_acc": 0.5}, wall_seconds=1.5, cpu_seconds=3.0, protocol="darts",
    ))  # fmt: skip

    epochs = read_epochs(tmp_path, "exp")
    assert list(epochs.columns[: len(epoch_columns())]) == epoch_columns()
    assert list(epochs.columns[len(epoch_columns()):]) == sorted(epochs.columns[len(epoch_columns()):])
    assert list(zip(epochs["stage"], epochs["trial_id"], epochs["epoch"])) == [
        ("retrain", "b2", 0), ("retrain", "b2", 1), ("search", "a1", 0)]  # sorted by stage, trial, epoch
    first = epochs[epochs["trial_id"] == "a1"].iloc[0]
    assert first["experiment"] == "exp" and first["attempt"] == 0 and first["seed"] == 0
    assert first["valid_acc"] == 0.5 and first["lr"] == 0.1 and first["steps"] == 7.0
    assert epochs["steps"].dtype == np.float64  # numbers are float64, even ints
    assert epochs["diverged"].dtype == "boolean" and not first["diverged"]  # bools stay bools
    assert json.loads(first["genotype"]) == json.loads(genotype.to_json())  # dict metrics: JSON text
    assert math.isnan(first["train_loss"])  # a metric absent in this part is null, not dropped
    assert epochs["written_at"].dt.tz is not None

    trials = read_trials(tmp_path, "exp")
    assert list(trials.columns[: len(trial_columns())]) == trial_columns()
    row = trials.iloc[0]
    assert (row["trial_id"], row["status"], row["stage_kind"]) == ("a1", "finished", "cell_search")
    assert row["params"] == 1234 and row["protocol"] == "darts" and row["wall_seconds"] == 1.5
    assert json.loads(row["genotype_json"]) == genotype.to_dict()
    assert row["best.valid_acc"] == 0.5 and row["last.valid_acc"] == 0.5 and row["best_epoch"] == 0
    assert row["config.weighting"] == "max_w" and row["seed"] == 0  # seed from config
    assert json.loads(row["config_json"]) == {"seed": 0, "weighting": "max_w"}
    assert row["version.python"] and row["hardware"].startswith("cpu:")
    assert row["finished_at"].tzinfo is not None
    assert pd.isna(row["lineage_trial_id"]) and pd.isna(row["path_json"]) and pd.isna(row["error"])


def test_empty_store_gives_empty_frames_with_the_schema_columns(store):
    assert store.epochs().empty and list(store.epochs().columns) == epoch_columns()
    assert store.trials().empty and list(store.trials().columns) == trial_columns()
    assert store.finished_trial_ids() == set()


def test_layout_on_disk_is_key_derived(store, tmp_path):
    path = store.write_epoch("t1", 2, _epoch(epoch=3, valid_acc=1.0))
    assert path == f"{tmp_path}/exp/results/epochs/trial=t1/epoch=00003-attempt=2.parquet"
    path = store.write_trial("t1", 2, _trial())
    assert path == f"{tmp_path}/exp/results/trials/trial=t1/attempt=2.parquet"
    # No temp file is left behind after a successful write.
    assert sorted(os.listdir(tmp_path / "exp/results/epochs/trial=t1")) == ["epoch=00003-attempt=2.parquet"]


# ---------------------------------------------------------------------------------------------------------
# Dedup by key


def test_higher_attempt_replaces_an_epoch_and_nothing_is_lost_or_duplicated(store):
    for epoch in range(4):
        store.write_epoch("t1", 1, _epoch(epoch=epoch, valid_acc=0.1 * epoch))
    # The trial resumes from its epoch-2 checkpoint as attempt 2 and redoes epochs 3 and 4.
    store.write_epoch("t1", 2, _epoch(epoch=3, valid_acc=0.99))
    store.write_epoch("t1", 2, _epoch(epoch=4, valid_acc=0.98))
    # A straggler of an older attempt writing late must not win either.
    store.write_epoch("t1", 0, _epoch(epoch=3, valid_acc=-1.0))
    epochs = store.epochs()
    assert list(epochs["epoch"]) == [0, 1, 2, 3, 4]
    assert list(epochs["attempt"]) == [1, 1, 1, 2, 2]
    assert epochs.set_index("epoch").loc[3, "valid_acc"] == 0.99
    assert len(store.read_table("epochs")) == 7  # the raw parts are all still there


def test_writing_the_same_key_twice_is_harmless(store):
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_trial("t1", 0, _trial())
    store.write_trial("t1", 0, _trial())
    assert len(store.epochs()) == 1 and len(store.trials()) == 1


def test_trial_rows_dedup_by_trial_and_terminal_states(store):
    store.write_trial("done", 0, _trial())
    store.write_trial("nan", 0, _trial(status="diverged", error="loss is NaN at epoch 3"))
    store.write_trial("crash", 0, _trial(status="errored", error="RuntimeError: boom"))
    store.write_trial("retried", 0, _trial(status="errored"))
    store.write_trial("retried", 1, _trial(status="finished"))
    trials = store.trials()
    assert list(trials["trial_id"]) == ["crash", "done", "nan", "retried"]
    assert trials.set_index("trial_id").loc["retried", "attempt"] == 1
    assert store.trial_statuses() == {"crash": "errored", "done": "finished", "nan": "diverged",
                                      "retried": "finished"}  # fmt: skip
    assert store.finished_trial_ids() == {"done", "nan", "retried"}  # errored trials resume: not done
    assert set(store.trials(trial_ids=["done", "nan"])["trial_id"]) == {"done", "nan"}


# ---------------------------------------------------------------------------------------------------------
# Crashes and leftovers


def test_crash_leftovers_are_ignored_by_readers(store, tmp_path):
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_trial("t1", 0, _trial())
    folder = tmp_path / "exp/results/epochs/trial=t1"
    good = (folder / "epoch=00000-attempt=0.parquet").read_bytes()
    # A writer killed between write and rename leaves its hidden temp file, possibly half written.
    (folder / ".epoch=00001-attempt=0.parquet.0123abcd.tmp").write_bytes(good[: len(good) // 2])
    # A partial file with a leading '.' and a full one with a leading '_' (e.g. a marker) are hidden too.
    (folder / ".epoch=00002-attempt=0.parquet").write_bytes(good[:10])
    (folder / "_epoch=00003-attempt=0.parquet").write_bytes(good)
    (tmp_path / "exp/results/trials/trial=t1/.attempt=1.parquet").write_bytes(b"PAR1")
    with _no_results_warnings():
        assert list(store.epochs()["epoch"]) == [0]
        assert list(store.trials()["attempt"]) == [0]


def test_a_truncated_visible_part_is_skipped_with_a_warning_or_raises(store, tmp_path):
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    # Only possible on a file system with neither atomic rename nor atomic PUT; readers must survive it.
    (tmp_path / "exp/results/epochs/trial=t1/epoch=00001-attempt=0.parquet").write_bytes(b"PAR1\x00\x01")
    with pytest.warns(ResultsWarning, match="epoch=00001-attempt=0.parquet"):
        assert list(store.epochs()["epoch"]) == [0]
    with pytest.raises(ResultsError, match="readable Parquet"):
        store.read_table("epochs", on_bad_part="raise")


class _no_results_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", ResultsWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ---------------------------------------------------------------------------------------------------------
# Differing columns across parts


def test_parts_with_different_metric_columns_and_types_read_as_one_table(store):
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5, note=None, flag=True))
    store.write_epoch("t1", 0, _epoch(epoch=1, valid_acc=0.6, health_skip=2, note="warm"))
    store.write_epoch("t2", 0, _epoch(epoch=0, test_acc=0.4, flag="maybe"))
    epochs = store.epochs()
    assert {"valid_acc", "health_skip", "note", "test_acc", "flag"} <= set(epochs.columns)
    by_key = epochs.set_index(["trial_id", "epoch"])
    assert math.isnan(by_key.loc[("t2", 0), "valid_acc"]) and by_key.loc[("t1", 1), "health_skip"] == 2.0
    assert by_key.loc[("t1", 1), "note"] == "warm" and pd.isna(by_key.loc[("t1", 0), "note"])
    # bool in one part and text in another: the column becomes text and keeps both values readable.
    assert list(by_key["flag"].fillna("-")) == ["true", "-", "maybe"]


def test_config_columns_with_int_and_float_values_unify(store):
    store.write_trial("t1", 0, _trial(config={"lr": 1, "data": {"batch_size": 2}}))
    store.write_trial("t2", 0, _trial(config={"lr": 0.025, "extra_knob": None}))
    trials = store.trials().set_index("trial_id")
    assert trials["config.lr"].dtype == np.float64 and trials.loc["t1", "config.lr"] == 1.0
    assert trials.loc["t1", "config.data.batch_size"] == 2
    assert pd.isna(trials.loc["t2", "config.data.batch_size"])
    assert pd.isna(trials.loc["t1", "config.extra_knob"])


# ---------------------------------------------------------------------------------------------------------
# Locations and file systems


def test_file_uri_and_from_experiment_path(tmp_path):
    uri = f"file://{tmp_path}/storage"
    store = ResultsStore(uri, "exp")
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    assert (tmp_path / "storage/exp/results/epochs/trial=t1/epoch=00000-attempt=0.parquet").is_file()
    assert len(read_epochs(str(tmp_path / "storage"), "exp")) == 1  # the same store as a plain path
    assert len(ResultsStore.from_experiment_path(f"{uri}/exp").epochs()) == 1
    assert len(ResultsStore.from_experiment_path(tmp_path / "storage" / "exp").epochs()) == 1
    assert ResultsStore.from_experiment_path("/exp").root == "/exp/results"  # no write: just the path


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultsStore("runs", "exp")
    assert store.root == f"{tmp_path}/runs/exp/results"


def test_subtree_file_system(tmp_path):
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store = ResultsStore("bucket/prefix", "exp", filesystem=fs)
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_trial("t1", 0, _trial())
    assert (tmp_path / "bucket/prefix/exp/results/trials/trial=t1/attempt=0.parquet").is_file()
    assert len(store.epochs()) == 1 and store.finished_trial_ids() == {"t1"}


class _ObjectStoreHandler(pafs.FileSystemHandler):
    """An object-store stand-in over another file system: records every call and refuses what object
    stores lack or what an immutable store must never do (rename, delete, copy, append)."""

    def __init__(self, inner: pafs.FileSystem) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.forbidden: list[tuple[str, str]] = []

    def _refuse(self, name: str, path: str):
        self.forbidden.append((name, path))
        raise OSError(f"{name} is not available on this object store")

    def get_type_name(self):
        return "object-store-stand-in"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.calls.append(("create_dir", path))
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._refuse("delete_dir", path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._refuse("delete_dir_contents", path)

    def delete_root_dir_contents(self):
        self._refuse("delete_root_dir_contents", "/")

    def delete_file(self, path):
        self._refuse("delete_file", path)

    def move(self, src, dest):
        self._refuse("move", src)

    def copy_file(self, src, dest):
        self._refuse("copy_file", src)

    def open_input_stream(self, path):
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        return self.inner.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.calls.append(("open_output_stream", path))
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self._refuse("open_append_stream", path)


@pytest.mark.parametrize("inner", [
    pytest.param(lambda tmp: (pafs._MockFileSystem(), "bucket"), id="mock"),
    pytest.param(lambda tmp: (pafs.LocalFileSystem(), str(tmp)), id="local"),
])  # fmt: skip
def test_object_store_writes_need_only_one_put_per_part(tmp_path, inner):
    inner_fs, base = inner(tmp_path)
    handler = _ObjectStoreHandler(inner_fs)
    store = ResultsStore(base, "exp", filesystem=pafs.PyFileSystem(handler))
    for attempt, epoch in [(0, 0), (0, 1), (1, 1)]:
        store.write_epoch("t1", attempt, _epoch(epoch=epoch, valid_acc=0.5 + attempt))
    store.write_trial("t1", 1, _trial())

    assert handler.forbidden == []
    puts = [path for name, path in handler.calls if name == "open_output_stream"]
    # One PUT per part, straight to its final, visible, key-derived name: no temp name, no rename.
    assert puts == [
        f"{base}/exp/results/epochs/trial=t1/epoch=00000-attempt=0.parquet",
        f"{base}/exp/results/epochs/trial=t1/epoch=00001-attempt=0.parquet",
        f"{base}/exp/results/epochs/trial=t1/epoch=00001-attempt=1.parquet",
        f"{base}/exp/results/trials/trial=t1/attempt=1.parquet",
    ]
    epochs = store.epochs()
    assert list(epochs["epoch"]) == [0, 1] and list(epochs["valid_acc"]) == [0.5, 1.5]
    assert store.finished_trial_ids() == {"t1"}
    assert handler.forbidden == []


def test_rename_is_used_only_where_it_is_atomic():
    assert R._supports_atomic_rename(pafs.LocalFileSystem())
    assert R._supports_atomic_rename(pafs.SubTreeFileSystem("/tmp", pafs.LocalFileSystem()))
    assert not R._supports_atomic_rename(pafs._MockFileSystem())
    assert not R._supports_atomic_rename(pafs.PyFileSystem(_ObjectStoreHandler(pafs._MockFileSystem())))


@pytest.mark.parametrize("location", [pytest.param("", id="empty"), pytest.param("s3:// bad", id="bad-uri")])
def test_bad_locations_are_refused(location):
    with pytest.raises(ResultsError, match="storage"):
        ResultsStore(location, "exp")


# ---------------------------------------------------------------------------------------------------------
# Exports and third-party readers


@pytest.mark.parametrize("fmt", [pytest.param(f, id=f) for f in R.EXPORT_FORMATS])
def test_export(store, tmp_path, fmt):
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5, genotype={"normal": []}))
    store.write_epoch("t1", 0, _epoch(epoch=1, valid_acc=0.75))
    store.write_trial("t1", 0, _trial(params=10))
    for table in R.TABLES:
        target = tmp_path / "out" / f"{table}.{fmt}"
        store.export(table, target)  # format from the extension
        expected = store.epochs() if table == "epochs" else store.trials()
        if fmt == "csv":
            got = pd.read_csv(target)
        elif fmt == "parquet":
            got = pd.read_parquet(target)
        else:
            got = pd.DataFrame(json.loads(target.read_text()))
        assert list(got.columns) == list(expected.columns)
        assert list(got["trial_id"]) == list(expected["trial_id"]) and len(got) == len(expected)
        if table == "epochs":
            assert list(got["valid_acc"]) == [0.5, 0.75]
    with pytest.raises(ResultsError, match="export format"):
        store.export("epochs", tmp_path / "out" / "x.xlsx")
    with pytest.raises(ResultsError, match="table must be"):
        store.export("runs", tmp_path / "out" / "x.csv")  # type: ignore[arg-type]


def test_the_documented_pyarrow_dataset_read_sees_every_part(store, tmp_path):
    # docs/results_schema.md: read the raw parts without nas_service (union of columns, hidden files skipped).
    store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_epoch("t1", 1, _epoch(epoch=0, valid_acc=0.6, extra_metric=1.0))
    (tmp_path / "exp/results/epochs/trial=t1/.leftover.tmp").write_bytes(b"junk")
    path = f"{tmp_path}/exp/results/epochs"
    parts = ds.dataset(path, format="parquet")
    schema = pa.unify_schemas([f.physical_schema for f in parts.get_fragments()],
                              promote_options="permissive")
    table = ds.dataset(path, format="parquet", schema=schema).to_table()
    assert table.num_rows == 2 and "extra_metric" in table.column_names and "trial" not in table.column_names


# ---------------------------------------------------------------------------------------------------------
# Schema version


def test_schema_version_in_every_row_and_in_file_metadata(store):
    path = store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    store.write_trial("t1", 0, _trial())
    assert set(store.epochs()["schema_version"]) == {RESULTS_SCHEMA_VERSION}
    assert set(store.trials()["schema_version"]) == {RESULTS_SCHEMA_VERSION}
    meta = pq.read_schema(path).metadata
    assert meta[b"nas_service.results.schema_version"] == str(RESULTS_SCHEMA_VERSION).encode()
    assert meta[b"nas_service.results.table"] == b"epochs"


def test_a_part_from_a_newer_schema_version_is_refused(store):
    path = store.write_epoch("t1", 0, _epoch(epoch=0, valid_acc=0.5))
    table = pq.read_table(path)
    newer = table.set_column(0, "schema_version", pa.array([RESULTS_SCHEMA_VERSION + 1], pa.int32()))
    pq.write_table(newer.replace_schema_metadata({}), path.replace("attempt=0", "attempt=1"))
    with pytest.raises(ResultsSchemaError, match=f"schema_version {RESULTS_SCHEMA_VERSION + 1}"):
        store.epochs()


# ---------------------------------------------------------------------------------------------------------
# Row validation


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda s: s.write_epoch("a/b", 0, _epoch()), "trial_id", id="slash-in-trial-id"),
    pytest.param(lambda s: s.write_epoch(".t", 0, _epoch()), "trial_id", id="hidden-trial-id"),
    pytest.param(lambda s: s.write_epoch("t", -1, _epoch()), "attempt", id="negative-attempt"),
    pytest.param(lambda s: s.write_epoch("t", 0, {"epoch": 0}), "stage", id="no-stage"),
    pytest.param(lambda s: s.write_epoch("t", 0, {"stage": "s"}), "epoch", id="no-epoch"),
    pytest.param(lambda s: s.write_epoch("t", 0, _epoch(attempt=3)), "attempt", id="disagreeing-attempt"),
    pytest.param(lambda s: s.write_epoch("t", 0, _epoch(written_at=1)), "collides", id="fixed-column"),
    pytest.param(lambda s: s.write_epoch("t", 0, _epoch(obj=object())), "metric 'obj'", id="bad-metric"),
    pytest.param(lambda s: s.write_trial("t", 0, _trial(status="done")), "status", id="bad-status"),
    pytest.param(lambda s: s.write_trial("t", 0, _trial(parms=3)), "unknown: \\['parms'\\]", id="typo"),
    pytest.param(lambda s: s.write_trial("t", 0, _trial(genotype="DARTS_V2")), "JSON", id="genotype-name"),
    pytest.param(lambda s: s.write_trial("t", 0, _trial(params=1.5)), "params", id="float-params"),
])  # fmt: skip
def test_invalid_rows_are_refused_with_the_rule_and_value(store, call, match):
    with pytest.raises(ResultsError, match=match):
        call(store)
    assert store.epochs().empty and store.trials().empty


def test_bad_experiment_name():
    with pytest.raises(ResultsError, match="experiment"):
        ResultsStore("/tmp", "../escape")


def test_trial_row_options(store):
    store.write_trial("t1", 0, _trial(
        stage="retrain", lineage_trial_id="s1", lineage_stage="search", path='{"stem": 16}',
        finished_at="2024-01-02T03:04:05+01:00", hardware="cpu:2 cores", extra={"note": "x", "n": 2},
        versions={"torch": "9.9"}, best={"valid_acc": 0.9, "genotype": {"normal": []}, "ok": True},
    ))  # fmt: skip
    row = store.trials().iloc[0]
    assert (row["lineage_trial_id"], row["lineage_stage"]) == ("s1", "search")
    assert json.loads(row["path_json"]) == {"stem": 16}
    assert row["finished_at"] == pd.Timestamp("2024-01-02T02:04:05Z")
    assert row["extra.note"] == "x" and row["extra.n"] == 2.0 and row["version.torch"] == "9.9"
    assert "best.genotype" not in row.index and "best.ok" not in row.index  # numeric best/last metrics only


# ---------------------------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize("config, expected", [
    pytest.param({"weighting": "max_w", "data": {"batch_size": 64, "aug": {"cutout": 16}}},
                 {"weighting": "max_w", "data.batch_size": 64, "data.aug.cutout": 16}, id="nested"),
    pytest.param({"channels": [16, 32], "pair": (1, 2)}, {"channels": "[16,32]", "pair": "[1,2]"},
                 id="lists"),
    pytest.param({"opt": {}, "x": None}, {"opt": "{}", "x": None}, id="empty-dict-and-none"),
    pytest.param({"lr": np.float32(0.5), "n": np.int64(3), "on": True}, {"lr": 0.5, "n": 3, "on": True},
                 id="numpy-scalars"),
    pytest.param({"g": {"normal": [["skip_connect", 0]]}}, {"g.normal": '[["skip_connect",0]]'},
                 id="lists-in-dicts"),
])  # fmt: skip
def test_flatten_config(config, expected):
    flat = flatten_config(config)
    assert flat == expected
    assert all(type(flat[k]) is type(expected[k]) for k in expected)
    assert flatten_config(config, prefix="config.") == {f"config.{k}": v for k, v in expected.items()}


def test_flatten_config_objects_and_collisions():
    genotype = get_published("DARTS_V2").genotype
    assert json.loads(flatten_config({"genotype": genotype})["genotype"]) == genotype.to_dict()
    with pytest.raises(ResultsError, match="'a.b' appears twice"):
        flatten_config({"a.b": 1, "a": {"b": 2}})


def test_arm_id_ignores_seeds_only():
    base = {"weighting": "max_w", "seed": 0, "train": {"seed": 3, "lr": 0.1}}
    assert arm_id("s", base) == arm_id("s", {**base, "seed": 7, "train": {"seed": 9, "lr": 0.1}})
    assert arm_id("s", base) == arm_id("s", dict(reversed(base.items())))  # key order does not matter
    assert arm_id("s", base) != arm_id("s", {**base, "weighting": "scalar"})
    assert arm_id("s", base) != arm_id("t", base)
    assert arm_id("s", base).startswith("s:")


def test_best_and_last():
    rows = [{"epoch": 2, "acc": 0.7}, {"epoch": 0, "acc": 0.5}, {"epoch": 1, "acc": float("nan")},
            {"epoch": 3, "acc": 0.7, "loss": 1.0}]  # fmt: skip
    best_epoch, best, last = best_and_last(rows, metric="acc")
    assert best_epoch == 2 and best["acc"] == 0.7 and last["epoch"] == 3  # ties keep the earlier epoch
    assert best_and_last(rows, metric="acc", mode="min")[0] == 0
    assert best_and_last(rows, metric="missing") == (None, {}, rows[3])
    assert best_and_last([], metric="acc") == (None, {}, {})
    with pytest.raises(ResultsError, match="mode"):
        best_and_last(rows, metric="acc", mode="median")  # type: ignore[arg-type]


def test_hardware_and_versions():
    assert hardware_description(cpus=2, gpus=[]).startswith("cpu:2 cores")
    text = hardware_description(cpus=8, gpus=["NVIDIA H100", "NVIDIA H100"])
    assert text.startswith("cpu:8 cores") and text.endswith(" / 2x NVIDIA H100")
    versions = package_versions()
    assert set(versions) == {"python", "torch", "ray", "nas_service", "code"} and versions["python"]
    # In a checkout the code version is its git commit (40 hex digits, "-dirty" with uncommitted changes).
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", versions["code"]), versions["code"]


def test_utc_conversion():
    naive = dt.datetime(2024, 1, 1, 12)
    assert RV.utc(naive, "t") == dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    with pytest.raises(ResultsError, match="ISO 8601"):
        RV.utc("yesterday", "finished_at")
