"""A local cluster that lost a node gets it back, and the status commands say when a node is dead (issue 14).

Before: `kill-worker` took a node for good (`start` refuses a state dir whose cluster runs, and there was no
`add-node`), and `status` said `ready` with a dead node. Here, through the script's own commands: lose the
worker node, see `status` report it dead, clean it up with `remove-node`, add a node back with `add-node`,
remove an alive node, and check the GCS's count of alive nodes (what `ray.nodes()` reports) at each step.
Then `nas-service status --address` (and `jobs status`) report a lost node in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cluster import local_cluster as lc
from nas_service.results import ResultsStore
from tests.helpers import ROOT, free_port

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = ROOT / "cluster" / "local_cluster.py"


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180,
                          check=check)  # fmt: skip


def _status(state_dir: str) -> dict:
    return json.loads(_cli("status", "--state-dir", state_dir).stdout)


def _wait_status(state_dir: str, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(state_dir)
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last status: {status['summary']}")
        time.sleep(0.5)


def test_a_lost_node_is_reported_removed_and_added_back(ray_home, tmp_path) -> None:
    cluster = lc.LocalCluster(state_dir=tmp_path / "cluster", workers=1, head_cpus=1, worker_cpus=1,
                              worker_resources={"worker_node": 1}, dashboard_port=free_port(), token=True)  # fmt: skip
    state_dir = str(tmp_path / "cluster")
    cluster.start()
    try:
        status = _status(state_dir)
        assert status["status"] == "ready" and status["alive_nodes"] == 2 and status["dead_nodes"] == []

        # Lose the worker node: status says so at once (its raylet is gone), then the GCS agrees.
        _cli("kill-worker", "--state-dir", state_dir, "--index", "0")
        status = _status(state_dir)
        assert status["status"] == "degraded" and status["dead_nodes"] == ["worker-0"], status["summary"]
        status = _wait_status(state_dir, lambda s: s["alive_nodes"] == 1, 60, "the GCS to mark worker-0 dead")
        assert status["status"] == "degraded" and "worker-0" in status["summary"]
        assert [(n["name"], n["gcs_state"]) for n in status["nodes"]] == [("head", "ALIVE"), ("worker-0", "DEAD")]
        # `start` still refuses this state dir: the way back is add-node.
        with pytest.raises(lc.ClusterStateError, match="already running"):
            lc.start_cluster(lc.LocalClusterConfig(state_dir=state_dir, dashboard_port=free_port()))

        # Clean the lost node up, then add one back (a new index: worker-0 stays DEAD in the GCS's table).
        assert "removed worker node 0" in _cli("remove-node", "--state-dir", state_dir, "--index", "0").stdout
        status = _status(state_dir)
        assert status["status"] == "ready" and [n["name"] for n in status["nodes"]] == ["head"]
        added = _cli("add-node", "--state-dir", state_dir)
        assert "added worker node 1 (worker-1, 1 CPUs" in added.stdout, added.stdout + added.stderr
        status = _wait_status(state_dir, lambda s: s["alive_nodes"] == 2, 30, "worker-1 to be alive")
        assert status["status"] == "ready" and status["dead_nodes"] == []
        assert [(n["name"], n["raylet_alive"], n["gcs_state"], n["resources"]) for n in status["nodes"]] == [
            ("head", True, "ALIVE", {}), ("worker-1", True, "ALIVE", {"worker_node": 1.0})]  # fmt: skip
        # A second node with other resources, then remove an alive one: it leaves, it is not "dead".
        node = cluster.add_node(cpus=2, resources={"extra": 1})
        assert node["name"] == "worker-2" and node["num_cpus"] == 2
        cluster.remove_node(1)
        status = _wait_status(state_dir, lambda s: s["alive_nodes"] == 2, 30, "worker-1 to leave the GCS")
        assert status["status"] == "ready" and [n["name"] for n in status["nodes"]] == ["head", "worker-2"]
        assert status["dead_nodes"] == []
        # Requests that cannot be carried out are refused in one line, and the cluster runs on.
        refused = _cli("remove-node", "--state-dir", state_dir, "--index", "7", check=False)
        assert refused.returncode == 1 and "no worker node 7" in refused.stderr
        assert _status(state_dir)["status"] == "ready"
        procs = cluster.processes()
    finally:
        out = _cli("stop", "--state-dir", state_dir, check=False)
        cluster.stop()  # idempotent; and the cluster stops with this process anyway
    assert "stopped in" in out.stdout, out.stdout + out.stderr
    assert not [p for p in procs if p.is_running() and p.status() != "zombie"]
    assert cluster.processes() == []
    refused = _cli("add-node", "--state-dir", state_dir, check=False)
    assert refused.returncode == 1 and "is stopped, not ready" in refused.stderr


def test_nas_service_status_reports_a_lost_node(ray_home, tmp_path) -> None:
    store = ResultsStore(str(tmp_path / "runs"), "exp")
    store.write_experiment_record({"started_at": "2025-01-01T00:00:00Z"})
    cluster = lc.LocalCluster(state_dir=tmp_path / "cluster", workers=1, head_cpus=1, worker_cpus=1,
                              dashboard_port=free_port(), token=True)  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def status() -> str:
        proc = subprocess.run([sys.executable, "-m", "nas_service.cli", "status", str(tmp_path / "runs" / "exp"),
                               "--address", cluster.dashboard_url, "--token", cluster.token],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        [line] = [line for line in proc.stdout.splitlines() if line.startswith("cluster ")]
        return line

    cluster.start()
    try:
        assert status() == f"cluster {cluster.dashboard_url}: 2 node(s) alive (2 CPUs, 0 GPUs), none lost"
        cluster.kill_worker(0)
        deadline = time.monotonic() + 60  # the GCS marks the node dead after its health checks (~3 s here)
        while "DEAD" not in (line := status()) and time.monotonic() < deadline:
            time.sleep(1)
        assert line.startswith(f"cluster {cluster.dashboard_url}: 1 node(s) alive (1 CPUs, 0 GPUs); "
                               "1 DEAD: worker-0 on 127.0.0.1 at "), line  # fmt: skip
        assert "health check failed" in line
        # A node that leaves on purpose is not reported; the lost one stays listed after its replacement.
        cluster.remove_node(0)
        cluster.add_node()
        cluster.remove_node(1)
        line = status()
        assert "1 node(s) alive" in line and "1 DEAD: worker-0 " in line and "worker-1" not in line, line
    finally:
        cluster.stop()
