"""Experiments as Ray jobs: submission through the Jobs API, listing, logs, stop.

Ray refuses to reuse a submission id, even after the job ended, and never retries a job by itself. So an
experiment's jobs are ``nas-<experiment>-<attempt>``: submitting while one of them is pending or running
reports that job instead of starting a second writer; after it failed or was stopped, the next attempt's
entry point is the same ``nas-service run``, which resumes the experiment. Two submissions at the same
moment both pick the same next id, and Ray accepts exactly one of them (it adds a job's record only if its
id is new, atomically): the other learns that the job exists and reports it, as for an active job.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JobInfo", "SubmitResult", "jobs_client", "cluster_nodes", "cluster_health", "cluster_health_line",
           "experiment_jobs", "submit_experiment", "follow_job_logs", "job_runtime_env", "project_modules",
           "ACTIVE_STATES"]

ACTIVE_STATES = ("PENDING", "RUNNING")
# What the job's working directory leaves behind: environments, results, VCS data.
RUNTIME_EXCLUDES = [".venv", ".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# The project's own packages: what a job needs of this code, wherever it is installed (a checkout, an editable
# install or a wheel in site-packages). Their dependencies (torch, Ray, ...) come with the cluster's image.
PROJECT_PACKAGES = ("nas_service", "search_spaces", "trainers")


def project_modules() -> list[str]:
    """The folders of the project's packages as this process imports them (for the runtime env's py_modules)."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).resolve().parent) for name in PROJECT_PACKAGES]


@dataclass(frozen=True)
class JobInfo:
    submission_id: str
    status: str
    entrypoint: str
    message: str


@dataclass(frozen=True)
class SubmitResult:
    submission_id: str
    started: bool  # False: a job of this experiment was already pending or running
    status: str
    raced: bool = False  # not started because another submission took this id at the same moment


class ClusterAuthError(ValueError):
    """The cluster refused this client's token, or token authentication is on and no token was found."""


def _token_and_source(token: str | None) -> tuple[str | None, str]:
    """The token a request carries and where it came from (for an error that says which one was refused)."""
    if token:
        return token, "the token given with --token"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"], "the token in $RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_MODE") == "token" and path.is_file():
        return path.read_text().strip(), f"the token in {path}"
    return None, "no token (none given with --token, in $RAY_AUTH_TOKEN or in a token file)"


def _token_headers(token: str | None) -> dict[str, str] | None:
    token, _ = _token_and_source(token)
    return {"Authorization": f"Bearer {token}"} if token else None


def _auth_refused(address: str, token: str | None, reason: object) -> ClusterAuthError:
    _, source = _token_and_source(token)
    reason = (str(reason).strip().splitlines() or ["refused"])[0].split(". ")[0]
    return ClusterAuthError(
        f"the cluster at {address} refused {source} ({reason}): pass the cluster's token with --token, or "
        "set RAY_AUTH_TOKEN to it, or RAY_AUTH_TOKEN_PATH to a file holding it (with RAY_AUTH_MODE=token)"
    )


def jobs_client(address: str, *, token: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for the dashboard URL ``address`` (``http://HEAD:8265``), with token auth.

    Raises:
        ClusterAuthError: the cluster refused the token (or wants one and none was found), naming which.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=_token_headers(token))
    except AuthenticationError as err:
        raise _auth_refused(address, token, err) from err


def _prefix(experiment: str) -> str:
    return f"nas-{experiment}-"


def cluster_nodes(address: str, *, token: str | None = None, alive_only: bool = True) -> list[dict[str, Any]]:
    """The cluster's nodes (``node_id``, ``node_ip``, ``node_name``, ``is_head_node``, ``state``,
    ``state_message``, ``resources_total``, ...) from its State API: the alive ones, or every node the GCS
    knows (``alive_only=False``: dead ones included)."""
    import json
    import urllib.error
    import urllib.request

    url = f"{address.rstrip('/')}/api/v0/nodes?limit=10000&detail=true"
    if alive_only:
        url += "&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    request = urllib.request.Request(url, headers=_token_headers(token) or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return list(json.loads(response.read())["data"]["result"]["result"])
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise _auth_refused(address, token, f"HTTP {err.code} {err.reason}") from err
        raise


# How the GCS words a node that left on purpose (scaled down, stopped): not a lost node.
_EXPECTED_END = "Expected termination"


def cluster_health(address: str, *, token: str | None = None) -> str:
    """One line on the cluster's nodes: how many are alive with what resources, and each node it lost.

    A lost node is one the GCS marked ``DEAD`` other than by an expected termination (e.g. "health check
    failed due to missing too many heartbeats"); nodes that were scaled down or stopped are not reported.
    The GCS keeps dead nodes in its table, so a lost node stays listed (with the time it was lost) after a
    replacement joined.
    """
    import time as _time

    nodes = cluster_nodes(address, token=token, alive_only=False)
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    lost = sorted((n for n in nodes if n.get("state") == "DEAD"
                   and not str(n.get("state_message") or "").startswith(_EXPECTED_END)),
                  key=lambda n: n.get("end_time_ms") or 0)  # fmt: skip
    total = {k: sum(float((n.get("resources_total") or {}).get(k, 0)) for n in alive) for k in ("CPU", "GPU")}
    line = f"cluster {address}: {len(alive)} node(s) alive ({total['CPU']:g} CPUs, {total['GPU']:g} GPUs)"
    if not lost:
        return line + ", none lost"
    parts = []
    for n in lost:
        name = n.get("node_name") or str(n.get("node_id", "?"))[:12]
        when = _time.strftime("%H:%M:%S", _time.localtime(n["end_time_ms"] / 1000)) if n.get("end_time_ms") else "?"
        why = str(n.get("state_message") or "no reason given").removeprefix("Unexpected termination: ")
        parts.append(f"{name} on {n.get('node_ip', '?')} at {when} ({why})")
    return f"{line}; {len(lost)} DEAD: " + "; ".join(parts)


def cluster_health_line(address: str, *, token: str | None = None) -> str:
    """:func:`cluster_health`'s line, or why the cluster did not answer (for a status shown beside it)."""
    try:
        return cluster_health(address, token=token)
    except Exception as err:  # noqa: BLE001 - the records shown with it stand without the cluster
        first = (str(err).strip().splitlines() or [""])[0]
        return f"cluster {address}: no answer from its State API ({type(err).__name__}: {first})"


def experiment_jobs(client: Any, experiment: str) -> list[JobInfo]:
    """This experiment's jobs, oldest attempt first."""
    pattern = re.compile(re.escape(_prefix(experiment)) + r"(\d+)$")
    found = []
    for job in client.list_jobs():
        sid = job.submission_id or ""
        match = pattern.match(sid)
        if match:
            found.append((int(match.group(1)), JobInfo(sid, str(job.status.value), job.entrypoint, job.message or "")))
    return [info for _, info in sorted(found)]


def job_runtime_env(working_dir: str, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """A job's runtime env: the user's folder as its working directory, the project's three packages as
    py_modules (never the site-packages they may sit in), Ray's usage statistics off."""
    return {
        "working_dir": working_dir,
        "py_modules": project_modules(),
        "excludes": RUNTIME_EXCLUDES,
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", **(env_vars or {})},
    }


def submit_experiment(client: Any, *, experiment: str, entrypoint: str, working_dir: str,
                      env_vars: dict[str, str] | None = None) -> SubmitResult:  # fmt: skip
    """Submits ``entrypoint`` as the next attempt of ``experiment``, unless one is already active; the job
    runs in ``working_dir`` (the spec's folder) with the project's packages (:func:`job_runtime_env`)."""
    jobs = experiment_jobs(client, experiment)
    for job in jobs:
        if job.status in ACTIVE_STATES:
            return SubmitResult(job.submission_id, started=False, status=job.status)
    attempt = int(jobs[-1].submission_id.rsplit("-", 1)[1]) + 1 if jobs else 1
    submission_id = f"{_prefix(experiment)}{attempt}"
    runtime_env = job_runtime_env(working_dir, env_vars)
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                          metadata={"experiment": experiment, "attempt": str(attempt)})  # fmt: skip
    except RuntimeError as err:  # the Jobs client's error for any HTTP error (a duplicate id: 500)
        status = _existing_status(client, submission_id) if "already exists" in str(err) else None
        if status is None:
            raise
        return SubmitResult(submission_id, started=False, status=status, raced=True)
    return SubmitResult(submission_id, started=True, status="PENDING")


def _existing_status(client: Any, submission_id: str) -> str | None:
    """The status of job ``submission_id``, or None when the cluster has no such job."""
    try:
        return str(client.get_job_status(submission_id).value)
    except RuntimeError:  # 404: no such job
        return None


def follow_job_logs(client: Any, submission_id: str, write: Callable[[str], None]) -> str:
    """Streams a job's output to ``write`` as its driver prints it (the Jobs API's log websocket) until
    the job ends; returns its final status (``SUCCEEDED``, ``FAILED``, ``STOPPED``)."""
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    asyncio.run(tail())
    # The stream closes when the job reaches a terminal state; the status may lag it by a moment.
    for _ in range(50):
        status = str(client.get_job_status(submission_id).value)
        if status not in ACTIVE_STATES:
            return status
        time.sleep(0.2)
    return status
