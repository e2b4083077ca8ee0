"""Typed run summaries (trainers/summary.py): the dict form round-trips, and rows written before a field
existed (or by a newer version with more fields) still read."""

from __future__ import annotations

import json

import pytest

from nas_service.stage_kinds import get_stage_kind
from trainers.summary import CellSearchSummary, HyperCuboidSearchSummary, RetrainSummary

HISTORY = [{"epoch": 1, "valid_top1": 0.5}, {"epoch": 2, "valid_top1": 0.7}]


def test_each_stage_kind_reads_back_the_summary_class_its_loop_returns() -> None:
    assert get_stage_kind("cell_search").summary_type is CellSearchSummary
    assert get_stage_kind("hypercuboid_search").summary_type is HyperCuboidSearchSummary
    assert get_stage_kind("retrain").summary_type is RetrainSummary
    assert get_stage_kind("grid").summary_type is RetrainSummary


def test_the_dict_form_is_json_and_reads_back_equal() -> None:
    summary = RetrainSummary(kind="retrain", config={"seed": 3}, history=HISTORY, epochs_run=2, finished=True,
                             best_epoch=2, spec={"model": "cifar", "genotype": "DARTS_V2"}, best_valid_top1=0.7,
                             ddp={"workers": 2, "starts": [0]})  # fmt: skip
    assert RetrainSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary
    assert summary.best == HISTORY[1]
    assert summary.architecture() == {"genotype": "DARTS_V2"}


def test_a_row_without_newer_fields_and_with_unknown_ones_reads() -> None:
    older = {"kind": "retrain", "config": {"seed": 0}, "best_epoch": 1, "spec": {"model": "path", "path": {"x": 1}},
             "a_field_from_a_newer_version": 1}  # fmt: skip
    summary = RetrainSummary.from_dict(older)
    assert summary.ddp is None and summary.history == [] and summary.test_top1_at_best is None
    assert summary.architecture() == {"path": {"x": 1}}
    assert summary.best == {}  # no history: no selected epoch's metrics


def test_a_summary_is_frozen() -> None:
    summary = CellSearchSummary(kind="cell_search", config={})
    with pytest.raises(AttributeError):
        summary.best_epoch = 3  # type: ignore[misc]
