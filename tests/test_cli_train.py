"""`nas-service train`: one recipe in this process, its summary written to summary.json and read back."""

from __future__ import annotations

import json
from pathlib import Path

from nas_service.cli import main
from trainers.summary import CellSearchSummary


def test_train_writes_a_summary_that_reads_back_and_prints_its_brief(tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "run"
    code = main(["train", "digits_search", "--workdir", str(workdir), "--device", "cpu", "--quiet",
                 "--set", "epochs=1", "--set", "schedule.warmup_epochs=0", "--set", "max_steps_per_epoch=2"])  # fmt: skip
    assert code == 0
    written = json.loads((workdir / "summary.json").read_text())
    summary = CellSearchSummary.from_dict(written)
    assert summary.to_dict() == written  # every key is a field: nothing dropped or invented
    assert summary.kind == "cell_search" and summary.epochs_run == 1 and summary.finished
    assert summary.best_genotype == summary.history[0]["genotype"]
    brief = json.loads(capsys.readouterr().out)
    assert "history" not in brief and "config" not in brief
    assert brief["best_genotype"] == written["best_genotype"] and brief["best_epoch"] == 1
