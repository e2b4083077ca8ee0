"""`results`, `report`, `status` and `compact` refuse a path that is not an experiment folder, and the results reader
skips (with a warning naming the file) a Parquet file of a foreign schema dropped into results/ (issue 17).

Before this change: on `/etc`, or any folder that exists but holds no results/, they printed "no rows" / "no
trials recorded yet" and exited 0; and a Parquet file with unrelated columns in results/trials/ was read
silently as a row of nulls with an extra column.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nas_service.results import ResultsError, ResultsStore, ResultsWarning
from tests.helpers import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nas_service.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "runs", "exp")
    store.write_epoch("t1", 0, {"stage": "search", "seed": 0, "epoch": 1, "valid_acc": 0.5})
    store.write_trial("t1", 0, {"stage": "search", "status": "finished", "config": {"seed": 0}})
    return store


def _not_experiments(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an experiment")
    return [Path("/etc"), folder, tmp_path / "missing" / "exp"]


@pytest.mark.parametrize("command", [["results"], ["results", "--table", "epochs"], ["report"], ["status"],
                                     ["compact"]], ids=lambda c: "-".join(c))  # fmt: skip
def test_a_path_that_is_not_an_experiment_is_refused_in_one_line(tmp_path, command) -> None:
    for path in _not_experiments(tmp_path):
        done = _cli(command[0], str(path), *command[1:])
        line = done.stderr.strip()
        assert done.returncode == 2 and done.stdout == "", (path, done.stdout, done.stderr)
        assert line == (f"nas-service {command[0]}: error: experiment: no experiment folder at {str(path)!r}: give "
                        f"<storage>/<experiment name>, the folder that holds results/ (`nas-service run` writes it "
                        f"as it starts)")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["notes.txt"]  # compact wrote nothing there


def test_an_experiment_folder_is_still_read(tmp_path) -> None:
    _store(tmp_path)
    done = _cli("results", str(tmp_path / "runs" / "exp"), "--format", "csv")
    assert done.returncode == 0 and "t1" in done.stdout, done.stderr


def _drop_foreign(tmp_path: Path, where: str = "results/trials/foreign.parquet") -> Path:
    path = tmp_path / "runs" / "exp" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path)
    return path


def test_a_foreign_parquet_file_is_skipped_with_a_warning_naming_it(tmp_path) -> None:
    store = _store(tmp_path)
    foreign = _drop_foreign(tmp_path)
    in_trial_folder = _drop_foreign(tmp_path, "results/trials/trial=t1/attempt=7.parquet")
    with pytest.warns(ResultsWarning) as caught:
        trials = store.trials()
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and all("lacks the trials table's columns" in m for m in messages), messages
    assert str(foreign) in messages[0] + messages[1] and str(in_trial_folder) in messages[0] + messages[1]
    assert list(trials["trial_id"]) == ["t1"] and trials["attempt"].tolist() == [0]  # no row of nulls
    assert "a" not in trials.columns and "b" not in trials.columns
    with pytest.raises(ResultsError, match="foreign.parquet"):
        store.read_table("trials", on_bad_part="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultsWarning)
        assert list(store.epochs()["epoch"]) == [1]  # the other table is untouched


def test_a_part_of_the_other_table_is_foreign_too(tmp_path) -> None:
    store = _store(tmp_path)
    epoch_part = next((tmp_path / "runs" / "exp" / "results" / "epochs").rglob("*.parquet"))
    moved = tmp_path / "runs" / "exp" / "results" / "trials" / "trial=t9" / "attempt=0.parquet"
    moved.parent.mkdir(parents=True)
    moved.write_bytes(epoch_part.read_bytes())
    with pytest.warns(ResultsWarning, match="marked as a part of the 'epochs' table"):
        assert list(store.trials()["trial_id"]) == ["t1"]


def test_the_cli_reads_around_a_foreign_part_and_compaction_refuses_it(tmp_path) -> None:
    _store(tmp_path)
    foreign = _drop_foreign(tmp_path)
    done = _cli("results", str(tmp_path / "runs" / "exp"), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split(",")[-1] != "b" and len(done.stdout.strip().splitlines()) == 2
    assert "ResultsWarning" in done.stderr and str(foreign) in done.stderr
    done = _cli("compact", str(tmp_path / "runs" / "exp"))
    assert done.returncode == 2 and foreign.exists()
    assert done.stderr.strip().startswith(f"nas-service compact: error: results part {str(foreign)!r} cannot be "
                                          f"compacted: it lacks the trials table's columns")  # fmt: skip
