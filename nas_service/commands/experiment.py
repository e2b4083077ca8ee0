"""``nas-service run | plan | status | compact | results | report``: experiments on Ray, and their results."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run (or resume) an experiment spec on Ray Tune",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("spec", help="the experiment spec (YAML)")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster (as ray.init's address); default: a local Ray on 127.0.0.1")
    p.add_argument("--storage", default=None, help="override the spec's storage (folder or URI)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray, >= 1 (default: all of this machine's)")
    p.add_argument("--schedule-timeout", dest="schedule_timeout", type=float, default=600.0, metavar="SECONDS",
                   help="on a cluster (--address, or inside a Ray job): fail a stage whose trial has not fit the "
                        "cluster's alive nodes for this long (a lost node, more asked for than any node has)")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("plan", help="print the trials a spec expands to and which are done; runs nothing")
    p.add_argument("spec")
    p.add_argument("--storage", default=None)
    p.set_defaults(func=_plan)

    p = subparsers.add_parser("status", help="stages, trials and their states of an experiment folder or URI")
    p.add_argument("experiment", help="<storage>/<experiment name>, a folder or a URI")
    p.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 5) until every planned trial is done, or Ctrl-C")
    p.add_argument("--address", default=None,
                   help="also report the nodes of the Ray cluster at this dashboard URL (http://HEAD:8265): "
                        "how many are alive, and each node it lost")  # fmt: skip
    p.add_argument("--token", default=None, help="Ray auth token (default: $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    p.set_defaults(func=_status)

    p = subparsers.add_parser("compact", help="rewrite an experiment's results as one Parquet file per table "
                              "(safe to interrupt and rerun; `run` does it when an experiment completes)")  # fmt: skip
    p.add_argument("experiment", help="<storage>/<experiment name>, a folder or a URI")
    p.set_defaults(func=_compact)

    p = subparsers.add_parser("results", help="the results tables of an experiment")
    p.add_argument("experiment")
    p.add_argument("--table", choices=["trials", "epochs"], default="trials")
    p.add_argument("--format", choices=["table", "csv", "parquet", "json"], default="table")
    p.add_argument("-o", "--output", default=None, help="write to this file (parquet needs one)")
    p.set_defaults(func=_results)

    p = subparsers.add_parser("report", help="comparison per stage and arm: mean, spread and 95%% intervals over "
                              "replicates, tests against a baseline arm, main effects, cost, plots")  # fmt: skip
    p.add_argument("experiment", nargs="+",
                   help="<storage>/<experiment name>, a folder or a URI; several are compared in one report")
    p.add_argument("--baseline", action="append", default=[], metavar="[STAGE=]ARM",
                   help="compare every arm with this arm (label or id); bare ARM: every stage that has it "
                        "(default: the spec's stages[].baseline)")  # fmt: skip
    p.add_argument("--format", default="text",  # checked by report.render_report (one list of formats)
                   help="what to print: text (default), markdown, json, csv, latex, or the html page")
    p.add_argument("-o", "--output", default=None,
                   help="a folder: writes report.html (self-contained), report.md, figures/ and the tables "
                        "as CSV and JSON, and prints the page's path")  # fmt: skip
    p.set_defaults(func=_report)


SPEC_ENV = "NAS_SERVICE_SPEC"  # `run env:NAS_SERVICE_SPEC`: the spec's YAML text travels in the job's environment
SPEC_BASE_ENV = "NAS_SERVICE_SPEC_BASE"  # ...and the folder its relative paths resolve against


def _load(spec_path: str, storage: str | None):
    import os

    from nas_service.location import resolve_storage
    from nas_service.spec import load_spec

    if spec_path.startswith("env:"):
        name = spec_path[4:]
        if name not in os.environ:
            raise ValueError(f"spec: environment variable {name!r} (from {spec_path!r}) is not set")
        spec = load_spec(os.environ[name], base_dir=os.environ.get(SPEC_BASE_ENV) or None)
    else:
        spec = load_spec(spec_path)
    if storage:
        from nas_service.spec import SpecError, storage_issue

        spec = spec.model_copy(update={"storage": resolve_storage(storage)})
        problem = storage_issue(spec)
        if problem is not None:
            raise SpecError([problem._replace(path="--storage")])
    return spec


def _run(args: argparse.Namespace) -> int:
    from nas_service.report import render_report
    from nas_service.report_page import data_tables, load_report_data, spec_baselines, write_report
    from nas_service.results import ResultsStore
    from nas_service.experiment_runner import EXIT_INTERRUPTED, run_experiment

    if args.num_cpus is not None and args.num_cpus < 1:  # 0 would reach Ray as "not given": every CPU
        raise ValueError(f"--num-cpus: must be >= 1, got {args.num_cpus}; leave it out to use every CPU")
    if not args.schedule_timeout > 0:
        raise ValueError(f"--schedule-timeout: must be > 0 seconds, got {args.schedule_timeout:g}")
    spec = _load(args.spec, args.storage)  # invalid specs (and a storage that is a file) fail here, before Ray
    resume = f"nas-service run {args.spec}" + (f" --storage {args.storage}" if args.storage else "")
    try:
        outcome = run_experiment(spec, address=args.address, num_cpus=args.num_cpus, spec_path=args.spec,
                                 schedule_timeout=args.schedule_timeout)  # fmt: skip
    except KeyboardInterrupt:
        print(f"interrupted; resume with: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.interrupted:
        print(f"interrupted; resume with: {resume}", file=sys.stderr)
    print()
    data = load_report_data([ResultsStore.of(spec.location)])
    try:
        baselines = spec_baselines(data)
        print(render_report(data_tables(data, baselines)))
        folder = spec.location.local_base
        if folder is not None:  # the page beside the results; for object-store storage: `report -o DIR`
            print(f"\nreport page: {write_report(data, folder / spec.name / 'report', baselines)}")
    except ValueError as err:  # e.g. a baseline arm that the stage does not have: the run itself stands
        print(f"nas-service run: report: {err}", file=sys.stderr)
    return outcome.exit_code


def _plan(args: argparse.Namespace) -> int:
    from nas_service.planner import describe_plan, plan
    from nas_service.results import ResultsStore
    from nas_service.experiment_runner import upstream_from_store

    spec = _load(args.spec, args.storage)
    store = ResultsStore(spec.storage, spec.name)
    print(describe_plan(plan(spec, upstream=upstream_from_store(store)), store.finished_trial_ids()))
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    from nas_service.report import stage_counts, status_table

    store = _existing_store(args.experiment)
    while True:
        trials, epochs = store.trials(), store.epochs()
        counts = stage_counts(trials, epochs, _planned_trials(store))
        table = status_table(trials, epochs)
        if args.watch is not None and sys.stdout.isatty():
            print("\033[2J\033[H", end="")  # a refreshed screen rather than a scrolling log
        if args.watch is not None:
            print(time.strftime("%H:%M:%S"), args.experiment)
        if args.address:
            from nas_service.ray_runtime.jobs import cluster_health_line

            print(cluster_health_line(args.address, token=args.token))
        print("no trials recorded yet" if table.empty else
              counts.to_string(index=False, na_rep="?") + "\n\n" + table.to_string(index=False))  # fmt: skip
        complete = not counts.empty and counts["pending"].notna().all() and (counts["pending"] == 0).all() \
            and (counts["running"] == 0).all()  # fmt: skip
        if args.watch is None or complete:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0
        print(flush=True)


def _planned_trials(store: Any) -> dict[str, int | None]:
    """Trials per stage as the spec the latest run kept plans them now (None: not known yet); empty for a
    store that keeps no spec, or one this version cannot plan."""
    from pydantic import ValidationError

    from nas_service.experiment_runner import upstream_from_store
    from nas_service.planner import plan
    from nas_service.spec import ExperimentSpec
    from nas_service.trials import PlanError

    record = store.experiment_record()
    if not record or "spec" not in record:
        return {}
    try:
        spec = ExperimentSpec.model_validate(record["spec"])
        current = plan(spec, upstream=upstream_from_store(store))
    except (ValidationError, PlanError, ValueError) as err:
        print(f"status: cannot plan the kept spec ({err}); showing recorded trials only", file=sys.stderr)
        return {}
    return {stage.name: current.stage(stage.name).expected_trials for stage in spec.stages}


def _compact(args: argparse.Namespace) -> int:
    store = _existing_store(args.experiment)
    before = {table: len(store.part_paths(table)) for table in ("epochs", "trials")}
    store.compact()
    for table, count in before.items():
        print(f"{table}: {count} parts -> {len(store.part_paths(table))}")
    return 0


def _results(args: argparse.Namespace) -> int:
    from nas_service.results import serialize

    store = _existing_store(args.experiment)
    frame = store.trials() if args.table == "trials" else store.epochs()
    if args.output:
        store_format = None if args.format == "table" else args.format
        print(store.export(args.table, args.output, format=store_format), file=sys.stderr)
        return 0
    if args.format == "table":
        print(frame.to_string(index=False, max_colwidth=40) if not frame.empty else "no rows")
    elif args.format == "parquet":
        raise ValueError("--format parquet: binary output needs -o FILE")
    else:
        sys.stdout.write(serialize(frame, args.format).decode())
        sys.stdout.write("\n")
    return 0


def _existing_store(path: str):
    from nas_service.results import ResultsStore

    store = ResultsStore.from_experiment_path(path)
    if not store.experiment_exists():
        raise FileNotFoundError(f"experiment: no experiment folder at {path!r}: give <storage>/<experiment name>, "
                                f"the folder that holds results/ (`nas-service run` writes it as it starts)")  # fmt: skip
    return store


def baselines_from(options: list[str], trials: Any) -> dict[str, str]:
    """``--baseline STAGE=ARM`` for one stage, ``--baseline ARM`` for every stage with an arm so labelled
    (labels hold ``=`` too, e.g. ``genotype=DARTS_V2``: the prefix counts as a stage only if one has its name)."""
    out: dict[str, str] = {}
    stage_names = set(trials["stage"]) if not trials.empty else set()
    for option in options:
        stage, sep, arm = option.partition("=")
        if sep and stage in stage_names:
            out[stage] = arm
            continue
        labels = trials.get("extra.arm_label", trials["arm"]) if not trials.empty else []
        stages = sorted({s for s, a, label in zip(trials["stage"], trials["arm"], labels) if option in (a, label)}) \
            if not trials.empty else []  # fmt: skip
        if not stages:
            raise ValueError(f"--baseline: no stage has an arm {option!r}")
        out.update({s: option for s in stages})
    return out


def _report(args: argparse.Namespace) -> int:
    from nas_service.report import render_report
    from nas_service.report_page import data_tables, html_to_text, load_report_data, spec_baselines, write_report

    data = load_report_data([_existing_store(path) for path in args.experiment])
    baselines = {**spec_baselines(data), **baselines_from(args.baseline, data.trials)}
    if args.output:
        print(write_report(data, args.output, baselines))
    elif args.format == "html":
        print(html_to_text(data, baselines))
    else:
        print(render_report(data_tables(data, baselines), args.format))
    return 0
