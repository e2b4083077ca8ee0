"""What a stage kind is: one registry entry that the spec, the planner, the runner, the trial lifecycle,
the report and ``validate`` ask instead of branching on a kind's name.

Adding a kind is one module that builds a :class:`StageKind` and registers it (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.registry import Registry
from trainers.summary import RunSummary

__all__ = ["StageKind", "StageKindRegistry", "STAGE_KINDS", "register_stage_kind", "list_stage_kinds", "get_stage_kind"]


@dataclass(frozen=True)
class StageKind:
    """One kind of stage.

    Args:
        name: the ``kind:`` a spec writes.
        spec_model: the pydantic model of such a stage (a ``StageBase`` subclass whose ``kind`` is
            ``Literal[name]``).
        plan: ``plan(spec, stage, done, upstream) -> StagePlan``: the stage's trials (``done``: the plans of
            the stages before it by name; ``upstream(stage_name)``: a stage's finished results, or None).
        check: ``check(spec, stage, where, upstream_stage) -> list[Issue]``: the rules of meaning of one
            stage (``where``: its spec path, ``stages[i]``; ``upstream_stage``: the validated ``from:`` stage).
        recipe_kind: the ``kind`` of the ``trainers.config`` recipes the stage takes, or None.
        produces: what its trials leave for later stages: ``genotype``, ``path``, ``checkpoint``.
        consumes: what it takes ``from:`` an earlier stage; any kind that produces one of these qualifies.
        parses: the ``from: {parse: ...}`` values its results support.
        run_trial: ``run_trial(trial, workdir, hooks) -> summary``: one trial inside a Tune trial, through
            the training engine; the summary is a ``summary_type`` (a ``trainers.summary.RunSummary``, whose
            ``architecture()`` gives the results row's architecture columns).
        summary_type: the class of its trials' summaries, to read one back from a results row.
        run_in_driver: instead of Tune trials, ``run_in_driver(trials, location, out)`` runs the stage in
            the driver (cheap stages such as scoring checkpoints).
        epoch_metric: the per-epoch metric the best epoch is selected by (higher is better).
        select_metric, headline_metric: trials-table columns the report shows per arm (e.g.
            ``best.valid_acc``, ``best.test_top1``).
        upstream: ``upstream(trial_id, summary) -> UpstreamResult``: what a finished trial leaves for the
            stages that take ``from:`` it.
        uniformity_metrics: per-epoch metrics that measure how close the architecture weights still are to
            uniform (normalised entropies, 1.0 = uniform): a search that ends near 1.0 has not chosen
            anything, and the report and ``run`` warn (:mod:`nas_service.search_health`).
    """

    name: str
    spec_model: type
    plan: Callable[..., Any]
    check: Callable[..., list[Any]]
    recipe_kind: str | None = None
    produces: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    parses: tuple[str, ...] = ("default",)
    run_trial: Callable[[Any, Path, Any], RunSummary] | None = None
    summary_type: type[RunSummary] = RunSummary
    run_in_driver: Callable[..., None] | None = None
    epoch_metric: str | None = None
    select_metric: str | None = None
    headline_metric: str | None = None
    upstream: Callable[[str, Any], Any] | None = None
    uniformity_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.run_trial is None) == (self.run_in_driver is None):
            raise ValueError(f"stage kind {self.name!r}: give exactly one of run_trial or run_in_driver")


class StageKindRegistry(Registry[StageKind]):
    """The stage-kind registry; the spec model listens to it, so a new kind validates at once."""

    def __init__(self) -> None:
        super().__init__("stage kind")
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` after every registration or removal."""
        self._listeners.append(listener)

    def register(self, name: str, obj: StageKind) -> StageKind:
        if obj.name != name:
            raise ValueError(f"stage kind registered as {name!r} is named {obj.name!r}")
        super().register(name, obj)
        self._notify()
        return obj

    def unregister(self, name: str) -> None:
        super().unregister(name)
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def upstream_kinds(self, kind: str) -> list[str]:
        """The kinds whose results a ``kind`` stage may take ``from:``."""
        wanted = set(self.get(kind).consumes)
        return [name for name, k in self.items() if wanted & set(k.produces)]


STAGE_KINDS = StageKindRegistry()


def register_stage_kind(kind: StageKind) -> StageKind:
    """Registers ``kind`` under its name (a name is registered once)."""
    return STAGE_KINDS.register(kind.name, kind)


def get_stage_kind(name: str) -> StageKind:
    return STAGE_KINDS.get(name)


def list_stage_kinds() -> list[str]:
    return STAGE_KINDS.names()
