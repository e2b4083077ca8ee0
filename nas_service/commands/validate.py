"""``nas-service validate SPEC``: check an experiment spec without running anything.

Prints the experiment's stages with their kinds, recipes and trial counts (where they are known before
earlier stages finish), then ``valid``. On a bad spec it prints every problem as
``<path>: <rule> (got <value>)`` to stderr and exits 2. Never starts Ray.

Examples::

    nas-service validate examples/quickstart.yaml
    nas-service validate examples/cifar10/ablation.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas_service.planner import Plan, StagePlan
    from nas_service.spec import ExperimentSpec


def register(subparsers: Any) -> None:
    """Adds the ``validate`` subcommand."""
    parser = subparsers.add_parser(
        "validate",
        help="check an experiment spec (YAML) and print its stages and trial counts; runs nothing",
        description=__doc__.replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", type=Path, metavar="SPEC", help="the experiment spec file (YAML)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validates ``args.spec``; 0 when valid, 2 (with the problems on stderr) when not."""
    # Imported here: `nas-service --help` builds this parser and needs none of pydantic or the stage kinds.
    from nas_service.planner import plan
    from nas_service.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        print(f"nas-service validate: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as err:
        print(f"nas-service validate: error: {err}", file=sys.stderr)
        return 2
    print(summarize(spec, plan(spec), source=str(args.spec)))
    print("valid")
    return 0


def _counts(stage_spec: Any, stage: StagePlan) -> str:
    if stage.state == "search":
        assert stage.optuna is not None  # a search stage always has its Optuna plan
        return f"{stage.optuna.trials} (optuna, seed {stage.optuna.seed})"
    if stage.state == "waiting":
        n = "?" if stage.expected_trials is None else f"{stage.expected_trials}"
        return f"{n} once {stage.waiting_on} has finished"
    parts = [f"{k} x {len(v)}" for k, v in (getattr(stage_spec, "sweep", {}) or {}).items()]
    seeds = getattr(stage_spec, "seeds", None)
    if seeds is not None:
        parts.append(f"seeds x {len(seeds)}")
    archs = len({(getattr(t.config, "genotype", None), getattr(t.config, "path", None)) for t in stage.trials}
                - {(None, None)})  # fmt: skip
    if archs:
        parts.insert(0, f"{archs} architecture{'s' if archs != 1 else ''}")
    return f"{len(stage.trials)}" + (f" ({', '.join(parts)})" if parts else "")


def _ddp(stage_spec: Any) -> str:
    workers = getattr(stage_spec, "workers", 1)
    if workers < 2:
        return ""
    per = stage_spec.resources_per_worker
    return f"; DDP: {workers} workers x ({per.cpu:g} CPU, {per.gpu:g} GPU) per trial"


def summarize(spec: ExperimentSpec, the_plan: Plan, *, source: str = "") -> str:
    """A short description of a valid spec: where results go, and each stage with its trial count."""
    root = spec.location.root
    res = spec.resources
    lines = [
        f"experiment {spec.name}" + (f" ({source})" if source else ""),
        f"  results: {root}",
        f"  per trial: {res.cpu:g} CPU, {res.gpu:g} GPU; retries from checkpoint: {spec.retries}",
    ]
    rows = [("stage", "kind", "recipe", "from", "trials")]
    for stage_spec, stage in zip(spec.stages, the_plan.stages):
        ref = getattr(stage_spec, "from_", None)
        rows.append((stage.name, stage.kind, getattr(stage_spec, "recipe", "-"), ref.stage if ref else "-",
                     _counts(stage_spec, stage) + _ddp(stage_spec)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
