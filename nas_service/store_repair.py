"""Heals a results store that something other than a kill damaged, before a rerun judges what is done.

Kills never lose a row (the store's writes are atomic and a trial's end backfills its epochs), but a file can
still be lost or damaged afterwards: a truncating copy, a full disk, a hand that deleted the wrong part. A
rerun then repairs what it can from what the trials left behind, and says what it did:

- an unreadable part (not Parquet any more) is set aside under ``results/_damaged/`` (kept, not deleted), so
  readers and compaction stop tripping over it;
- a finished trial whose epoch rows are missing gets them rewritten from its newest intact checkpoint, which
  holds the whole per-epoch history;
- a trial whose trial row is missing is not done, so the runner runs it again; it resumes from its last
  checkpoint and writes the row without training again (the Tune side of that is in
  :func:`nas_service.ray_runtime.tune.run_trials`, which drops Tune's state when it disagrees with the store).

No Ray in here; torch only when a checkpoint has to be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .location import ExperimentLocation
from .results import TABLES, ResultsStore

__all__ = ["repair_store"]


def repair_store(store: ResultsStore, location: ExperimentLocation,
                 checkpoints_of: Callable[[str], Path] | None = None) -> list[str]:  # fmt: skip
    """Sets unreadable parts aside and rewrites lost epoch rows of finished trials; returns one line per
    repair (empty: nothing to do).

    Args:
        checkpoints_of: the folder of a trial's epoch checkpoints (default: its working folder's
            ``checkpoints/``, where :func:`trainers.loop.run_epochs` writes them).
    """
    if not store.experiment_exists():
        return []
    checkpoints_of = checkpoints_of or (lambda trial_id: location.trial_workdir(trial_id) / "checkpoints")
    notes = []
    for table in TABLES:
        for path, why in store.unreadable_parts(table):
            target = store.set_aside(path)
            notes.append(f"unreadable {table} part {path} set aside as {target} ({why})")
    notes += _rewrite_lost_epoch_rows(store, checkpoints_of)
    return notes


def _rewrite_lost_epoch_rows(store: ResultsStore, checkpoints_of: Callable[[str], Path]) -> list[str]:
    trials = store.trials()
    if trials.empty:
        return []
    finished = trials[(trials["status"] == "finished") & trials["epochs_completed"].notna()]
    if finished.empty:
        return []
    epochs = store.epochs(trial_ids=list(finished["trial_id"]))
    have = {} if epochs.empty else {t: set(map(int, g)) for t, g in epochs.groupby("trial_id")["epoch"]}
    notes = []
    for row in finished.itertuples(index=False):
        missing = set(range(1, int(row.epochs_completed) + 1)) - have.get(row.trial_id, set())
        if missing:
            notes.append(_rewrite(store, row, missing, checkpoints_of(row.trial_id)))
    return notes


def _rewrite(store: ResultsStore, row: object, missing: set[int], folder: Path) -> str:
    """Writes the ``missing`` epoch rows of a finished trial from the history in its newest intact checkpoint
    (as the attempt that finished the trial, the one its trial row names), then compacts the trial."""
    from trainers.checkpoints import latest_intact_checkpoint, load_checkpoint

    trial_id, lost = row.trial_id, _epochs_text(missing)  # type: ignore[attr-defined]
    checkpoint = latest_intact_checkpoint(folder)
    if checkpoint is None:
        return f"{trial_id}: epoch row(s) {lost} are lost and no checkpoint under {folder} holds them: not repaired"
    history = json.loads(load_checkpoint(checkpoint)["history"])
    found = [m for m in history if int(m.get("epoch", 0)) in missing]
    for metrics in found:
        store.write_epoch(trial_id, int(row.attempt), {"stage": row.stage, "seed": int(row.seed), **metrics})  # type: ignore[attr-defined]
    store.compact_trial(trial_id)
    still = missing - {int(m["epoch"]) for m in found}
    tail = f"; {_epochs_text(still)} not in it" if still else ""
    return f"{trial_id}: rewrote {len(found)} lost epoch row(s) ({lost}) from {checkpoint}{tail}"


def _epochs_text(epochs: set[int]) -> str:
    ordered = sorted(epochs)
    return f"epoch {ordered[0]}" if len(ordered) == 1 else f"epochs {', '.join(map(str, ordered))}"
