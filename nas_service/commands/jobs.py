"""``nas-service submit`` and ``nas-service jobs``: experiments as jobs on a Ray cluster (Jobs API)."""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="submit an experiment to a Ray cluster as a job (resumes on resubmit)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("spec")
    p.add_argument("--address", required=True, help="the dashboard URL, e.g. http://HEAD:8265 (as `ray job submit`)")
    p.add_argument("--storage", default=None, help="override the spec's storage; must be reachable from every node")
    p.add_argument("--shared-storage", action="store_true",
                   help="declare a local storage path a mount shared by every node (e.g. NFS at the same path)")
    p.add_argument("--token", default=None, help="Ray auth token (default: $RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end and exit with its outcome")
    p.add_argument("--schedule-timeout", dest="schedule_timeout", type=float, default=None, metavar="SECONDS",
                   help="passed to the job's `run`: fail a stage whose trial has not fit the cluster's alive nodes "
                        "for this long (default: run's, 600)")  # fmt: skip
    p.set_defaults(func=_submit)

    p = subparsers.add_parser("jobs", help="list, inspect, follow or stop experiment jobs on a Ray cluster")
    p.add_argument("action", choices=["list", "status", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="a submission id (status, logs, stop)")
    p.add_argument("--address", required=True, help="the dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--token", default=None)
    p.add_argument("-f", "--follow", action="store_true",
                   help="logs: stream the job's output until it ends, then exit with its outcome (as --wait)")
    p.set_defaults(func=_jobs)


def check_storage_for_cluster(storage: str, address: str, shared: bool,
                              nodes: Callable[[], list[dict]] | None = None) -> None:  # fmt: skip
    """Cluster runs need storage every node reaches: a URI, a declared shared mount, or a cluster of one
    node on this machine. For a head on 127.0.0.1 it asks the cluster (``nodes()``: its alive nodes), not
    the address: a `ray dashboard` tunnel or `kubectl port-forward` reaches a real cluster that way too."""
    from nas_service.location import is_remote

    if is_remote(storage) or shared:
        return
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    where = f"at {address}, another machine"
    if host in _LOCAL_HOSTS:
        if nodes is None:
            return
        alive = nodes()
        ips = sorted({str(n.get("node_ip", "?")) for n in alive})
        if len(alive) <= 1 and set(ips) <= _LOCAL_HOSTS:
            return
        where = f"at {address} has {len(alive)} nodes (on {', '.join(ips)})"
    raise ValueError(
        f"storage: {storage!r} is a local path, but the cluster {where}, where it is not the same disk: "
        "trials on other nodes would write their results there; use a URI every node reaches (s3://..., "
        "gs://...), or a mount at the same path on every node and pass --shared-storage"
    )


def _submit(args: argparse.Namespace) -> int:
    from nas_service.commands.experiment import SPEC_BASE_ENV, SPEC_ENV, _load
    from nas_service.ray_runtime.jobs import ACTIVE_STATES, jobs_client, submit_experiment

    spec = _load(args.spec, args.storage)  # invalid specs fail here, before anything is sent
    from nas_service.ray_runtime.jobs import cluster_nodes

    check_storage_for_cluster(spec.storage, args.address, args.shared_storage,
                              lambda: cluster_nodes(args.address, token=args.token))  # fmt: skip
    spec_file = Path(args.spec).resolve()
    # The job runs the same `run` command (so a resubmitted job resumes); the spec text travels in its
    # environment, the spec's folder is its working directory, and the project's packages go as py_modules
    # (from a checkout or site-packages alike: never the whole site-packages).
    entrypoint = f"python -m nas_service.cli run env:{SPEC_ENV} --address auto --storage {shlex.quote(spec.storage)}"
    if args.schedule_timeout is not None:
        if not args.schedule_timeout > 0:
            raise ValueError(f"--schedule-timeout: must be > 0 seconds, got {args.schedule_timeout:g}")
        entrypoint += f" --schedule-timeout {args.schedule_timeout:g}"
    client = jobs_client(args.address, token=args.token)
    result = submit_experiment(
        client, experiment=spec.name, entrypoint=entrypoint, working_dir=str(spec_file.parent),
        env_vars={SPEC_ENV: spec_file.read_text(), SPEC_BASE_ENV: str(spec_file.parent)},
    )  # fmt: skip
    if result.started:
        print(f"submitted {result.submission_id}: {entrypoint}")
    elif result.raced:
        print(f"{result.submission_id} of experiment {spec.name} was just submitted by another `submit` and is "
              f"{result.status}; not starting another")  # fmt: skip
    else:
        print(f"{result.submission_id} of experiment {spec.name} is already {result.status}; not starting another")
    if not args.wait:
        return 0
    while True:
        status = str(client.get_job_status(result.submission_id).value)
        if status not in ACTIVE_STATES:
            print(f"{result.submission_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(2)


def _jobs(args: argparse.Namespace) -> int:
    from nas_service.ray_runtime.jobs import jobs_client

    client = jobs_client(args.address, token=args.token)
    if args.action == "list":
        for job in client.list_jobs():
            if (job.submission_id or "").startswith("nas-"):
                print(f"{job.submission_id:<40}{job.status.value:<11}{job.entrypoint}")
        return 0
    if not args.job_id:
        raise ValueError(f"jobs {args.action}: needs a job id (see `nas-service jobs list`)")
    if args.action == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status.value} {info.message or ''}".rstrip())
        from nas_service.ray_runtime.jobs import cluster_health_line

        print(cluster_health_line(args.address, token=args.token))  # a RUNNING job may wait on a lost node
    elif args.action == "logs" and args.follow:
        from nas_service.ray_runtime.jobs import follow_job_logs

        status = follow_job_logs(client, args.job_id, lambda text: print(text, end="", flush=True))
        print(f"{args.job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    elif args.action == "logs":
        print(client.get_job_logs(args.job_id), end="")
    else:
        print(f"{args.job_id}: stop requested" if client.stop_job(args.job_id) else f"{args.job_id}: not running")
    return 0
