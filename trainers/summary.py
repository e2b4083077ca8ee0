"""What a training run returns: a typed summary per kind of run.

The loops build one at the end (or on a resume that finds the run finished); the service reads its fields
to write a results row and to hand an architecture to later stages. ``to_dict`` is the form written to
``summary.json`` and into a results row (``extra.summary_json``); ``from_dict`` reads it back, also from
rows written before a field existed (a missing field takes its default, an unknown one is ignored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["RunSummary", "SearchSummary", "CellSearchSummary", "HyperCuboidSearchSummary", "RetrainSummary"]

S = TypeVar("S", bound="RunSummary")


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """Every run's summary.

    Args:
        kind: the config's kind (``cell_search``, ``hypercuboid_search``, ``retrain``, or a stage kind's own).
        config: the run's config as a JSON-able dict (``config_to_dict``).
        history: one metrics dict per finished epoch, in order (``epoch`` counted from 1).
        epochs_run, finished: epochs in ``history``; whether the last one is the config's last.
        best_epoch: the epoch the run selected (its architecture or weights are the result).
        params, multiply_adds: the trained network's size, where the run counts it.
        protocol: how the best epoch was selected, where the run records it (retraining).
    """

    kind: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_run: int = 0
    finished: bool = False
    best_epoch: int = 0
    params: int | None = None
    multiply_adds: int | None = None
    protocol: str | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The metrics of the selected epoch ({} before any)."""
        return self.history[self.best_epoch - 1] if self.history and self.best_epoch >= 1 else {}

    def architecture(self) -> dict[str, Any]:
        """The results row's architecture column: ``{"genotype": ...}``, ``{"path": ...}``, or ``{}``."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (``summary.json``, results rows)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """Reads :meth:`to_dict`'s form; a missing field takes its default, an unknown one is ignored."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True, kw_only=True)
class SearchSummary(RunSummary):
    """A bilevel search: search-validation accuracy at the selected epoch and at the last one."""

    best_valid_acc: float | None = None
    last_valid_acc: float | None = None


@dataclass(frozen=True, kw_only=True)
class CellSearchSummary(SearchSummary):
    """A differentiable cell search: the genotypes of its best search-validation epoch and of its last."""

    best_genotype: dict[str, Any] | None = None
    last_genotype: dict[str, Any] | None = None
    best_genotype_no_hack: dict[str, Any] | None = None

    def architecture(self) -> dict[str, Any]:
        return {"genotype": self.best_genotype}


@dataclass(frozen=True, kw_only=True)
class HyperCuboidSearchSummary(SearchSummary):
    """DHGS: the HyperCuboid paths of its best search-validation epoch and of its last."""

    best_path: dict[str, Any] | None = None
    last_path: dict[str, Any] | None = None

    def architecture(self) -> dict[str, Any]:
        return {"path": self.best_path}


@dataclass(frozen=True, kw_only=True)
class RetrainSummary(RunSummary):
    """Training a genotype or path from scratch: test metrics at the selected epoch and at the last one.

    ``spec`` is the network's model spec (``trainers.retrain.model_spec``); ``ddp`` what a Ray Train run
    adds (workers, starts, nodes), None for a single process.
    """

    spec: dict[str, Any] = field(default_factory=dict)
    best_valid_top1: float | None = None
    test_top1_at_best: float | None = None
    test_top5_at_best: float | None = None
    test_top1_last: float | None = None
    test_top5_last: float | None = None
    ddp: dict[str, Any] | None = None

    def architecture(self) -> dict[str, Any]:
        if self.spec.get("model") == "path":
            return {"path": self.spec.get("path")}
        return {"genotype": self.spec.get("genotype")}
