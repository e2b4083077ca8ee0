"""cluster/local_cluster.py against a real local Ray cluster: a head node plus one worker node, token auth on.

One cluster for the whole module (starting one costs ~10 s on 2 cores). The tests that damage it (kill a
worker node, stop it) come last, in file order. The cluster gets its own HOME, temp dirs and ports, so it
never reads or changes the machine's Ray token file and never touches other users' Ray processes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster import local_cluster as lc
from tests.helpers import ROOT, free_port, is_loopback

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = ROOT / "cluster" / "local_cluster.py"


def _http(method: str, url: str, token: str | None = None,
          body: dict | None = None) -> tuple[int, dict | str]:  # fmt: skip
    """One HTTP request; returns (status, parsed JSON or text) for any status, 4xx included."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def _nodes(cluster) -> dict[str, dict]:
    """The cluster's nodes by node name, from the State API (through the dashboard, with the token)."""
    status, body = _http("GET", f"{cluster.dashboard_url}/api/v0/nodes?detail=1", cluster.token)
    assert status == 200, body
    return {n["node_name"]: n for n in body["data"]["result"]["result"]}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(ray_home, tmp_path_factory):
    c = lc.LocalCluster(
        state_dir=tmp_path_factory.mktemp("cluster"),
        workers=1,
        head_cpus=1,
        worker_cpus=1,
        head_resources={"head_node": 1},
        worker_resources={"worker_node": 1},
        dashboard_port=free_port(),
        token=True,
    )
    c.start()
    print(f"\nlocal cluster started in {c.start_s:.1f} s")
    try:
        yield c
    finally:
        c.stop()  # idempotent: test_stop_leaves_nothing_behind normally did it already


# ---------------------------------------------------------------------------------------------------------
# No cluster needed


def test_config_rejects_bad_values():
    with pytest.raises(lc.ClusterStateError, match="workers >= 0"):
        lc.LocalClusterConfig(state_dir="x", workers=-1)
    with pytest.raises(lc.ClusterStateError, match="at most 40 characters"):
        lc.LocalClusterConfig(state_dir="x", temp_root="/tmp/" + "a" * 60)
    with pytest.raises(lc.ClusterStateError, match=r"built-in resources \['CPU'\]"):
        lc.LocalClusterConfig(state_dir="x", worker_resources={"CPU": 1})


def test_start_refuses_a_dashboard_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cmd = [sys.executable, str(SCRIPT), "start", "--state-dir", str(tmp_path),
               "--dashboard-port", str(port)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"dashboard port 127.0.0.1:{port} is already in use" in proc.stderr
    assert not (tmp_path / "cluster.json").exists()  # refused before anything started


def test_commands_need_a_state_file(tmp_path):
    with pytest.raises(lc.ClusterStateError, match="no local cluster state"):
        lc.stop_cluster(tmp_path)


@pytest.mark.parametrize(
    "ip, loopback",
    [pytest.param(ip, lb, id=ip) for ip, lb in [("127.0.0.1", True), ("::ffff:127.0.0.1", True),
                                                ("::1", True), ("0.0.0.0", False), ("::", False),
                                                ("192.0.2.2", False)]],
)  # fmt: skip
def test_loopback_check(ip, loopback):
    assert is_loopback(ip) is loopback


def test_port_blocks_are_free_and_disjoint():
    base = lc.find_port_base(3)
    assert lc.PORT_SEARCH_RANGE[0] <= base and base + 3 * lc.PORTS_PER_NODE <= lc.PORT_SEARCH_RANGE[1]
    ports = [lc._node_ports(base, i) for i in range(3)]
    spans = [set(range(p["dashboard_agent_listen_port"], p["max_worker_port"] + 1)) for p in ports]
    assert all(len(a & b) == 0 for i, a in enumerate(spans) for b in spans[i + 1:])


# ---------------------------------------------------------------------------------------------------------
# The running cluster


def test_head_and_worker_node_are_alive(cluster):
    nodes = _nodes(cluster)
    assert set(nodes) == {"head", "worker-0"}
    assert all(n["state"] == "ALIVE" for n in nodes.values())
    assert nodes["head"]["is_head_node"] and not nodes["worker-0"]["is_head_node"]
    assert nodes["worker-0"]["resources_total"]["worker_node"] == 1
    assert nodes["worker-0"]["resources_total"]["CPU"] == 1
    assert all(n["node_ip"] == "127.0.0.1" for n in nodes.values())
    # The CLI's view agrees.
    out = subprocess.run([sys.executable, str(SCRIPT), "status", "--state-dir", cluster.config.state_dir],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    status = json.loads(out)
    assert status["status"] == "ready" and status["auth_mode"] == "token"
    assert [(n["role"], n["raylet_alive"]) for n in status["nodes"]] == [("head", True), ("worker", True)]
    assert status["alive_nodes"] == 2 and status["dead_nodes"] == []  # the GCS's view (ray.nodes())


def test_a_job_runs_on_the_worker_and_every_listening_port_is_loopback(cluster):
    # A job whose driver runs actors on both nodes: this brings up every kind of process the cluster has
    # (driver, job supervisor, worker processes on each node) before the ports are checked.
    script = textwrap.dedent("""
        import time, ray
        ray.init()
        @ray.remote(num_cpus=0)
        class Where:
            def node(self):
                return ray.get_runtime_context().get_node_id()
        actors = [Where.options(resources={r: 0.1}).remote() for r in ("head_node", "worker_node")]
        print("NODES", *ray.get([a.node.remote() for a in actors]), flush=True)
        time.sleep(120)
    """)
    status, body = _http("POST", f"{cluster.dashboard_url}/api/jobs/", cluster.token,
                         {"entrypoint": f"python -c {shlex.quote(script)}"})  # fmt: skip
    assert status == 200, body
    job = body["submission_id"]
    try:
        def actors_placed():
            _, body = _http("GET", f"{cluster.dashboard_url}/api/jobs/{job}/logs", cluster.token)
            return re.search(r"^NODES (\w+) (\w+)$", body.get("logs", ""), re.M)

        found = _wait(actors_placed, 90, "the job's actors to report their nodes")
        ids = {n["node_name"]: n["node_id"] for n in _nodes(cluster).values()}
        assert list(found.groups()) == [ids["head"], ids["worker-0"]]

        listeners = []
        for p in cluster.processes():
            try:
                conns = p.net_connections(kind="inet")
            except Exception:  # the process exited meanwhile
                continue
            # TCP listening sockets, and UDP sockets bound without a peer (UDP has no LISTEN state).
            listeners += [(p.pid, p.name(), c.laddr) for c in conns
                          if c.status == "LISTEN"
                          or (c.type == socket.SOCK_DGRAM and not c.raddr)]  # fmt: skip
        bad = [(pid, name, laddr) for pid, name, laddr in listeners if not is_loopback(laddr.ip)]
        assert not bad, f"listeners outside loopback: {bad}"
        ports = {laddr.port for _, _, laddr in listeners}
        gcs_port = int(cluster.address.rsplit(":", 1)[1])
        dashboard_port = int(cluster.dashboard_url.rsplit(":", 1)[1])
        assert {gcs_port, dashboard_port} <= ports  # the check saw the cluster's servers, not nothing
        # Each node's dashboard agent listens on its own port from its own block.
        agent_ports = {n["dashboard_agent_listen_port"] for n in cluster.nodes()}
        assert len(agent_ports) == 2 and agent_ports <= ports
    finally:
        _http("POST", f"{cluster.dashboard_url}/api/jobs/{job}/stop", cluster.token)


@pytest.mark.parametrize(
    "token, expected",
    [pytest.param(None, 401, id="no-token"), pytest.param("0" * 64, 403, id="wrong-token"),
     pytest.param("CLUSTER", 200, id="cluster-token")],
)  # fmt: skip
def test_jobs_api_requires_the_token(cluster, token, expected):
    token = cluster.token if token == "CLUSTER" else token
    status, _ = _http("GET", f"{cluster.dashboard_url}/api/jobs/", token)
    assert status == expected


@pytest.mark.parametrize("mode, refused", [pytest.param("disabled", True, id="no-token"),
                                          pytest.param("token", False, id="cluster-token")])  # fmt: skip
def test_gcs_requires_the_token(cluster, ray_home, mode, refused):
    # A raw GCS client in a fresh process (Ray caches the auth mode per process).
    code = textwrap.dedent(f"""
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
        try:
            client = GcsClient(address={cluster.address!r}, cluster_id=None)
            keys = client.internal_kv_keys(b"", None, timeout=10)
            print("OK", len(keys))
        except AuthenticationError as e:
            print("REFUSED", e)
    """)
    env = {**os.environ, **cluster.client_env(), "RAY_AUTH_MODE": mode}
    if mode == "disabled":
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert out.startswith("REFUSED" if refused else "OK"), out
    assert not (ray_home / ".ray" / "auth_token").exists()  # nothing fell back to, or wrote, its token file


def test_start_refuses_a_state_dir_with_a_running_cluster(cluster):
    with pytest.raises(lc.ClusterStateError, match="already running"):
        lc.start_cluster(lc.LocalClusterConfig(state_dir=cluster.config.state_dir,
                                               dashboard_port=free_port()))  # fmt: skip
    assert lc.load_state(cluster.config.state_dir)["status"] == "ready"  # untouched


def test_kill_worker_marks_the_node_dead(cluster):
    before = _nodes(cluster)
    assert before["worker-0"]["state"] == "ALIVE"
    t0 = time.monotonic()
    cmd = [sys.executable, str(SCRIPT), "kill-worker", "--state-dir", cluster.config.state_dir,
           "--index", "0"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "killed the raylet of worker node 0" in out
    _wait(lambda: _nodes(cluster)["worker-0"]["state"] == "DEAD", 20, "the worker node to be marked DEAD")
    dead_s = time.monotonic() - t0
    print(f"\nworker node dead {dead_s:.1f} s after kill-worker")
    assert _nodes(cluster)["head"]["state"] == "ALIVE"
    status = cluster.status()
    assert [n["raylet_alive"] for n in status["nodes"]] == [True, False]
    # Not "ready" with a node gone (tests/hardening/test_local_cluster_nodes.py adds one back).
    assert status["status"] == "degraded" and status["dead_nodes"] == ["worker-0"], status["summary"]
    with pytest.raises(lc.ClusterStateError, match="not running"):
        cluster.kill_worker(0)


def test_stop_leaves_nothing_behind(cluster):
    procs = cluster.processes()
    assert len(procs) >= 8  # supervisor, GCS, raylet, dashboard and its modules, agents, ...
    temp_root = Path(cluster.state["temp_root"])
    assert temp_root.exists()
    out = subprocess.run([sys.executable, str(SCRIPT), "stop", "--state-dir", cluster.config.state_dir],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    print(f"\n{out.strip()}")
    assert "stopped in" in out
    alive = [p for p in procs if p.is_running() and p.status() != "zombie"]
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    assert cluster.processes() == []
    assert lc.load_state(cluster.config.state_dir)["status"] == "stopped"
    assert not temp_root.exists()
    # Its ports are free again.
    dashboard_port = int(cluster.dashboard_url.rsplit(":", 1)[1])
    assert lc._port_free(dashboard_port)
    # Stopping again is harmless.
    assert cluster.stop()["already_stopped"] is True
