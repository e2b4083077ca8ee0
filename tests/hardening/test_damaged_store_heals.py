"""Damage healed by one rerun: a lost trial row, an unreadable epoch part, a truncated newest checkpoint, Tune
state that names deleted checkpoints, and the table-wide files of a complete experiment (issue 17, items 1
and 2).

Before the changes each of these left an experiment that could never complete or stayed short of rows: a
deleted trial row made every rerun end "interrupted" (Tune's restored state called the trial finished, so
nothing ran it again); an unreadable epoch part was skipped with a warning on every read and never rewritten
(and stopped the final compaction); a truncated newest checkpoint failed its trial on every retry; Tune state
naming a checkpoint that no longer exists failed every restore of that trial. That last one is what a kill
between Tune deleting a trial's older checkpoint (num_to_keep=1) and its next state snapshot leaves (seen
once in CI); here the crashed trial's Tune checkpoints are deleted outright.

Each rerun must bring the store to the same tables as an undisturbed run of the same spec (timing and
bookkeeping columns aside: what a rerun rewrites from a checkpoint carries that rerun's attempt and clock).
"""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from nas_service.planner import plan
from nas_service.results import ResultsStore
from nas_service.spec import load_spec
from tests.service.test_ray_experiments import cli_env, finish, start_run, write_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

# Columns a rerun legitimately rewrites: clocks, attempt numbers, where the files are, what it cost.
_BOOKKEEPING = re.compile(r"(seconds|_at|^attempt|^checkpoint|images_per_second|failed_attempts|"
                          r"attempt_wall_seconds|summary_json|^extra\.workers)$")  # fmt: skip


def comparable(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The table without bookkeeping columns, sorted by ``keys``, as plain objects (NaN-safe equality)."""
    kept = [c for c in frame.columns if not _BOOKKEEPING.search(c)]
    out = frame[kept].sort_values(keys).reset_index(drop=True)
    return out.astype(object).where(out.notna(), None)


def assert_same_tables(store: ResultsStore, reference: ResultsStore) -> None:
    for name, keys in (("trials", ["trial_id"]), ("epochs", ["trial_id", "epoch"])):
        got, want = getattr(store, name)(), getattr(reference, name)()
        assert len(got) == len(want), f"{name}: {len(got)} rows, the undisturbed run has {len(want)}"
        pd.testing.assert_frame_equal(comparable(got, keys), comparable(want, keys), check_like=True,
                                      obj=f"{name} table")  # fmt: skip


def test_one_rerun_heals_lost_rows_unreadable_parts_and_a_damaged_checkpoint(tmp_path) -> None:
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    code, out = finish(start_run(write_spec(reference_dir), cli_env(reference_dir)))
    assert code == 0, out[-3000:]
    reference = ResultsStore(str(reference_dir / "runs"), "tiny")

    spec = write_spec(tmp_path, retries=0)
    crashed, lost_row, lost_epochs = (t.trial_id for t in plan(load_spec(spec)).stage("search").trials)
    # The first run: `crashed` fails after its last epoch's checkpoint, before its trial row (no retries).
    fault = json.dumps({"trial_id": crashed, "epoch": 2, "marker": str(tmp_path / "fired")})
    code, out = finish(start_run(spec, cli_env(tmp_path, NAS_SERVICE_INJECT_FAULT=fault)))
    assert code != 0 and (tmp_path / "fired").exists(), out[-3000:]
    runs = tmp_path / "runs" / "tiny"
    store = ResultsStore(str(tmp_path / "runs"), "tiny")
    assert store.trial_statuses() == {crashed: "errored", lost_row: "finished", lost_epochs: "finished"}

    # The damage. 1: the crashed trial's own newest checkpoint truncated, and its Tune checkpoints deleted.
    own = runs / "trials" / crashed / "checkpoints" / "epoch_0002.pt"
    own.write_bytes(own.read_bytes()[:1000])
    in_tune = [p for p in (runs / "tune").rglob("checkpoint_*") if f"trial_id={crashed}" in str(p)]
    assert in_tune, "Tune kept no checkpoint of the crashed trial: nothing to delete, nothing tested"
    for folder in in_tune:
        shutil.rmtree(folder)
    # 2: one finished trial's row deleted. 3: another one's epoch part truncated.
    row_part = runs / "results" / "trials" / f"trial={lost_row}" / "compacted.parquet"
    epoch_part = runs / "results" / "epochs" / f"trial={lost_epochs}" / "compacted.parquet"
    row_part.unlink()
    epoch_part.write_bytes(epoch_part.read_bytes()[:200])

    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out[-3000:]
    assert re.search(r"epoch_0002.pt .*resuming from epoch_0001.pt instead", out), out[-3000:]
    assert f"repaired: unreadable epochs part {epoch_part}" in out
    assert f"repaired: {lost_epochs}: rewrote 2 lost epoch row(s) (epochs 1, 2)" in out
    assert "repaired: Tune's saved state names checkpoints a kill deleted" in out, out[-3000:]
    assert (runs / "results" / "_damaged" / "epochs" / f"trial={lost_epochs}" / "compacted.parquet").exists()
    assert_same_tables(store, reference)
    crashed_epochs = store.epochs(trial_ids=[crashed]).sort_values("epoch")
    assert list(crashed_epochs["attempt"]) == [0, 1]  # epoch 2 again, from its own epoch-1 checkpoint

    # A complete experiment keeps one file per table: lose both, and one rerun brings every row back.
    for table in ("trials", "epochs"):
        whole = runs / "results" / table / "compacted.parquet"
        assert whole.exists() and len(list((runs / "results" / table).rglob("*.parquet"))) == 1
    (runs / "results" / "trials" / "compacted.parquet").unlink()
    truncated = runs / "results" / "epochs" / "compacted.parquet"
    truncated.write_bytes(b"PAR1" + bytes(64))
    shutil.rmtree(runs / "results" / "_damaged")
    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out[-3000:]
    assert f"repaired: unreadable epochs part {truncated}" in out
    # Tune's restored state calls all three finished while the store has no row of them: dropped too.
    assert re.search(r"repaired: Tune's saved state leaves 3 trial\(s\) neither errored nor recorded", out), out[-3000:]
    assert "epoch 1/2" not in out  # nothing was trained again: every trial was finished from its checkpoint
    assert_same_tables(store, reference)
