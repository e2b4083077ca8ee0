"""On a real cluster (`--address`), a stage whose trial fits none of the alive nodes fails within
`--schedule-timeout` with one line that says what was asked and what the cluster has (issue 14).

Before: on a cluster (which may grow) such a stage only got a warning and then waited forever: Tune keeps a
trial that fits no node PENDING, and Ray Train retries a DDP worker group that cannot start forever
(`WorkerGroupStartupTimeoutError` every minute). A local cluster of two 1-CPU nodes: a trial asking for 2 CPUs
(the cluster has 2, but no node has), and a DDP retrain over 2 workers of 2 CPUs (the trial driver starts,
its worker group never can). The fit check itself is tested without Ray below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from nas_service.planner import fits_on_nodes, unschedulable_reason
from tests.helpers import running_local_cluster, tiny_search_spec

TIMEOUT_S = 8


def _ddp_spec(storage) -> str:
    return f"""\
name: ddp_too_big
storage: {storage}
data: {{dataset: digits}}
retries: 0
stages:
  - name: retrain
    kind: retrain
    recipe: digits_retrain
    genotypes: [DARTS_V2]
    workers: 2
    resources_per_worker: {{cpu: 2, gpu: 0}}
    overrides: {{epochs: 1, max_steps_per_epoch: 2, init_channels: 4, layers: 3, mid_channels: 4,
                schedule: {{warmup_epochs: 0}}}}
"""


@pytest.fixture(scope="module")
def cluster(ray_home, tmp_path_factory):
    with running_local_cluster(tmp_path_factory.mktemp("cluster"), workers=1, head_cpus=1, worker_cpus=1) as c:
        yield c


def _run(cluster, spec) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nas_service.cli", "run", str(spec), "--address", cluster.address,
                           "--schedule-timeout", str(TIMEOUT_S)], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    return proc, time.monotonic() - t0


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nas-service run: error:")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split(lines[0])[1]  # nothing after it
    return lines[0]


@pytest.mark.ray
@pytest.mark.integration
@pytest.mark.timeout(400)
def test_a_trial_bigger_than_every_node_fails_within_the_timeout(cluster, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("too_big", tmp_path / "runs", seeds=[0]).replace("cpu: 1,", "cpu: 2,"))
    proc, took = _run(cluster, spec)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = _error_line(proc)
    assert line.startswith("nas-service run: error: stage 'search': one trial needs 2 CPU, 0 GPU on one node, the "
                           "cluster's 2 alive node(s) have 1 CPU, 0 GPU; 1 CPU, 0 GPU, still after "), line
    assert f"(--schedule-timeout {TIMEOUT_S})" in line
    assert TIMEOUT_S <= took < TIMEOUT_S + 90, took  # connecting to the cluster costs ~5-10 s


@pytest.mark.ray
@pytest.mark.integration
@pytest.mark.timeout(400)
def test_a_ddp_worker_group_that_cannot_start_fails_within_the_timeout(cluster, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(_ddp_spec(tmp_path / "runs"))
    proc, took = _run(cluster, spec)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = _error_line(proc)
    assert "stage 'retrain': one trial needs 2 DDP workers of 2 CPU, 0 GPU each (and its driver), the cluster's " \
           "2 alive node(s) have 1 CPU, 0 GPU; 1 CPU, 0 GPU, still after " in line, line  # fmt: skip
    assert TIMEOUT_S <= took < TIMEOUT_S + 90, took
    # The cluster is free again: no trial driver or worker of the failed stage holds its CPUs.
    deadline = time.monotonic() + 30
    while (used := _cpus_in_use(cluster)) and time.monotonic() < deadline:
        time.sleep(1)
    assert used == 0, f"{used} CPUs of the cluster are still held"
    assert cluster.status()["status"] == "ready"


def _cpus_in_use(cluster) -> float:
    """CPUs held on the cluster now (the autoscaler's load report, through the dashboard)."""
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/cluster_status", headers=cluster.auth_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        usage = json.loads(response.read())["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    return float(usage.get("CPU", [0, 0])[0])


@pytest.mark.parametrize(
    "bundles, nodes, fits",
    [pytest.param([{"CPU": 2}], [{"CPU": 1}, {"CPU": 1}], False, id="one-trial-on-one-node"),
     pytest.param([{"CPU": 1}], [{"CPU": 1}, {"CPU": 1}], True, id="fits"),
     pytest.param([{"CPU": 1, "GPU": 1}], [{"CPU": 8}], False, id="no-gpu"),
     pytest.param([{"CPU": 0.01}, {"CPU": 0.995}, {"CPU": 0.995}], [{"CPU": 2}], True, id="ddp-on-one-node"),
     pytest.param([{"CPU": 0.01}, {"CPU": 1.99}, {"CPU": 1.99}], [{"CPU": 2}, {"CPU": 2}, {"CPU": 1}], True,
                  id="ddp-spread"),
     pytest.param([{"CPU": 0.01}, {"CPU": 0.995}, {"CPU": 0.995}], [{"CPU": 1}, {"CPU": 1}], False,
                  id="ddp-driver-needs-room-too"),
     pytest.param([{"CPU": 1}], [], False, id="no-nodes")],
)  # fmt: skip
def test_fits_on_nodes(bundles, nodes, fits) -> None:
    assert fits_on_nodes(bundles, nodes) is fits
    assert (unschedulable_reason("s", bundles, nodes) is None) is fits
