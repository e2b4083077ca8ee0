"""The RayJob of cluster/kuberay/rayjob.yaml, submitted as KubeRay submits it, succeeds on a real cluster with
token auth and runs on that cluster (issue 14, item 2).

Before: the entrypoint named no address. Inside a job the Jobs API sets RAY_ADDRESS, so `ray.init` connected,
while `nas-service run` (thinking it started a local Ray) asked it for num_cpus: "When connecting to an
existing cluster, num_cpus and num_gpus must not be provided", exit 2; with `backoffLimit: 2`, three GPU
clusters in a row.

The job is submitted with the manifest's own `entrypoint` string and `runtimeEnvYAML`, as KubeRay's
submitter does (`ray job submit --runtime-env-json ... -- <entrypoint>`), to a local cluster from
cluster/local_cluster.py with token auth, and its status is polled the way the KubeRay operator polls it
(GET /api/jobs/<id> with the `x-ray-authorization` header). What the test replaces, and why:

- the spec text in runtimeEnvYAML (NAS_SERVICE_SPEC): a tiny digits search with its storage in a temp folder
  instead of the paper-sized CIFAR-10 run on /mnt/shared; the entrypoint string itself is used as written;
- the image: the cluster's processes import this checkout (PYTHONPATH) and find `nas-service` on PATH
  (local_cluster puts this interpreter's bin/ first), as the image's installed project does.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from cluster import local_cluster as lc
from nas_service.commands.experiment import SPEC_ENV
from nas_service.ray_runtime.jobs import jobs_client
from nas_service.results import ResultsStore
from tests.helpers import ROOT, free_port, tiny_search_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(600)]

RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def test_run_without_address_joins_the_cluster_in_ray_address(monkeypatch):
    """The root of the defect, without a cluster: inside a job (RAY_ADDRESS set) `nas-service run` without
    --address must connect there, not ask `ray.init` for num_cpus (refused when `ray.init` connects)."""
    import ray

    from nas_service.ray_runtime import start_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0})
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")
    assert start_ray(num_cpus=2) == {"CPU": 3.0}
    [kwargs] = calls
    assert kwargs.get("address") == "127.0.0.1:6390", kwargs
    assert "num_cpus" not in kwargs and "num_gpus" not in kwargs, kwargs

    calls.clear()
    monkeypatch.delenv("RAY_ADDRESS")
    start_ray(num_cpus=2)  # and without it, a local Ray of that size, as before
    assert calls[0]["num_cpus"] == 2 and "address" not in calls[0], calls


def _rayjob_spec() -> dict:
    [job] = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d["kind"] == "RayJob"]
    return job["spec"]


def _poll_as_the_operator(dashboard_url: str, token: str, submission_id: str, timeout: float = 500) -> dict:
    """The job's info from GET /api/jobs/<id>, as KubeRay's dashboard client asks for it, until it ends."""
    request = urllib.request.Request(f"{dashboard_url}/api/jobs/{submission_id}",
                                     headers={"x-ray-authorization": f"Bearer {token}"})  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(request, timeout=30) as response:
            info = json.loads(response.read())
        if info["status"] in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(1)


def test_the_rayjob_entrypoint_runs_on_its_own_cluster(ray_home, tmp_path, monkeypatch):
    job = _rayjob_spec()
    entrypoint = job["entrypoint"]
    runtime_env = yaml.safe_load(job.get("runtimeEnvYAML") or "{}")
    assert SPEC_ENV in runtime_env.get("env_vars", {}), f"runtimeEnvYAML must carry the spec in {SPEC_ENV}"
    runtime_env["env_vars"][SPEC_ENV] = tiny_search_spec("rayjob_tiny", tmp_path / "runs", seeds=[0])

    # One CPU more than a Ray started inside the job would take (os.cpu_count()): the run's first line,
    # "Ray has N CPUs", then tells which Ray it used.
    cpus = (os.cpu_count() or 1) + 1
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cluster = lc.LocalCluster(state_dir=tmp_path / "cluster", workers=0, head_cpus=cpus,
                              dashboard_port=free_port(), token=True)  # fmt: skip
    cluster.start()
    try:
        # Without the token the Jobs API refuses the operator's poll; with it (below) it answers.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=30)
        assert refused.value.code == 401

        client = jobs_client(cluster.dashboard_url, token=cluster.token)
        submission_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=f"rayjob-{uuid.uuid4().hex[:8]}")  # fmt: skip
        info = _poll_as_the_operator(cluster.dashboard_url, cluster.token, submission_id)
        logs = client.get_job_logs(submission_id)
    finally:
        cluster.stop()

    assert info["status"] == "SUCCEEDED", f"{info['status']}: {info.get('message')}\n{logs[-3000:]}"
    # Its driver joined this cluster (a Ray of its own would be another cluster: no driver here, other CPUs).
    assert info["driver_info"], info
    assert f"Ray has {cpus} CPUs" in logs, logs[-2000:]
    trials = ResultsStore(str(tmp_path / "runs"), "rayjob_tiny").trials()
    assert list(trials["status"]) == ["finished"], trials
