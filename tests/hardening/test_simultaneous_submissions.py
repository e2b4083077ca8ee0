"""Two submissions of one experiment at the same moment start one job, and the other one names it (issue 14).

Before: both listed the experiment's jobs, saw none active, and submitted the same next id
(``nas-<experiment>-<attempt>``); Ray accepts exactly one, and the other `submit` died on the Jobs API's
HTTP 500 ("Job with submission_id ... already exists"). The first test makes that interleaving certain (the
second submission lists the jobs as they were before the first one); the second runs two `nas-service submit`
processes at once against a local cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from nas_service.ray_runtime.jobs import experiment_jobs, jobs_client, submit_experiment
from tests.helpers import running_local_cluster, tiny_search_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(300)]

SLEEP = "python -c 'import time; time.sleep(60)'"


@pytest.fixture(scope="module")
def cluster(ray_home, tmp_path_factory):
    with running_local_cluster(tmp_path_factory.mktemp("cluster"), workers=0, head_cpus=1) as c:
        yield c


class _ListedBefore:
    """A Jobs client whose first ``list_jobs`` answers what the cluster had before the other submission."""

    def __init__(self, client, listing) -> None:
        self._client, self._listing = client, listing

    def list_jobs(self):
        listing, self._listing = self._listing, None
        return listing if listing is not None else self._client.list_jobs()

    def __getattr__(self, name):
        return getattr(self._client, name)


def _stop_all(client, experiment: str) -> None:
    for job in experiment_jobs(client, experiment):
        client.stop_job(job.submission_id)


def test_the_submission_that_loses_the_race_reports_the_winner(cluster, tmp_path) -> None:
    client = jobs_client(cluster.dashboard_url, token=cluster.token)
    before = client.list_jobs()
    first = submit_experiment(client, experiment="race", entrypoint=SLEEP, working_dir=str(tmp_path))
    try:
        assert first.started and first.submission_id == "nas-race-1"
        second = submit_experiment(_ListedBefore(client, before), experiment="race", entrypoint=SLEEP,
                                   working_dir=str(tmp_path))  # fmt: skip
        assert not second.started and second.raced
        assert second.submission_id == "nas-race-1" and second.status in ("PENDING", "RUNNING")
        assert [j.submission_id for j in experiment_jobs(client, "race")] == ["nas-race-1"]
    finally:
        _stop_all(client, "race")


def test_two_submits_at_once_start_one_job(cluster, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("twice", tmp_path / "runs", seeds=[0]))
    env = {**os.environ, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "nas_service.cli", "submit", str(spec), "--address", cluster.dashboard_url]
    client = jobs_client(cluster.dashboard_url, token=cluster.token)
    try:
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        outs = [p.communicate(timeout=180) for p in procs]
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], outs
        jobs = experiment_jobs(client, "twice")
        assert [j.submission_id for j in jobs] == ["nas-twice-1"], jobs
        stdouts = sorted(out for out, _ in outs)
        started = [s for s in stdouts if s.startswith("submitted nas-twice-1:")]
        refused = [s for s in stdouts if re.match(r"nas-twice-1 of experiment twice (was just submitted by "
                                                  r"another `submit` and )?is (already )?(PENDING|RUNNING|SUCCEEDED)",
                                                  s)]  # fmt: skip
        assert len(started) == 1 and len(refused) == 1, outs
        assert len(refused[0].strip().splitlines()) == 1  # one line, no traceback
        print(f"\nthe other submit: {refused[0].strip()}")  # raced, or came a moment later
    finally:
        _stop_all(client, "twice")
        deadline = time.monotonic() + 60
        while any(j.status in ("PENDING", "RUNNING") for j in experiment_jobs(client, "twice")) \
                and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.5)
