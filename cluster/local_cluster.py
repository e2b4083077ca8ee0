"""A local multi-node Ray cluster on one machine whose every listening port is on 127.0.0.1.

One head node and N worker nodes, each with its own CPUs and custom resources, its own ``temp_dir``, its own
dashboard-agent port and its own worker port range, so that failure tests (a lost node) and scheduling tests
(a trial that needs a resource only one node has) run on a laptop. It stops exactly the processes it
started and never runs ``ray stop`` (which stops every Ray process on the machine, other users' included).

Why Ray's own multi-node harness (``ray.cluster_utils.Cluster``, which Ray's test suite uses) and not
``ray start``: on Linux ``--node-ip-address=127.0.0.1`` is ignored and Ray binds its servers to the
machine's network address; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes every listener bind 127.0.0.1 but
then ``ray start --address`` refuses to start a second node. The harness starts the same processes as
``ray start`` (GCS, raylets, dashboard, agents) without that command-line check, so with the variable set
every node runs on 127.0.0.1 and nothing is reachable from the network (see ``../docs/cluster.md``).

Design: ``start`` launches a *supervisor* process (its own session and process group) that holds the
``Cluster`` object, writes ``<state-dir>/cluster.json`` (addresses, pids, temp dirs, ports) and waits for a
signal. ``stop`` (from any process) sends SIGTERM to it; it removes the worker nodes first, then the head
(the other order takes ~10 s and leaves the worker nodes' processes behind), and ``stop`` then checks that
every process of that process group and every Ray process that names the cluster's temp root is gone,
killing stragglers. If the supervisor itself is SIGKILLed, Ray's reaper takes most of the cluster down; the
nodes' DashboardAgent/RuntimeEnvAgent linger about a minute (measured), and ``stop`` kills them.

Command line::

    python cluster/local_cluster.py start --workers 1 --head-cpus 1 --worker-cpus 2 \
        --dashboard-port 8265 --state-dir /tmp/nas-cluster [--token]
    python cluster/local_cluster.py status --state-dir /tmp/nas-cluster
    python cluster/local_cluster.py kill-worker --state-dir /tmp/nas-cluster --index 0
    python cluster/local_cluster.py remove-node --state-dir /tmp/nas-cluster --index 0
    python cluster/local_cluster.py add-node --state-dir /tmp/nas-cluster [--cpus 2] [--resources '{"w": 1}']
    python cluster/local_cluster.py stop --state-dir /tmp/nas-cluster

From Python (tests)::

    with LocalCluster(state_dir=tmp, workers=1, worker_resources={"worker_node": 1}) as c:
        c.address, c.dashboard_url, c.client_env()   # GCS host:port, http://127.0.0.1:PORT, auth env
        c.kill_worker(0); c.remove_node(0); c.add_node()   # lose a node, clean it up, add one back
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ClusterStateError",
    "client_env",
    "find_port_base",
    "LocalCluster",
    "LocalClusterConfig",
    "LocalClusterError",
    "cluster_processes",
    "cluster_status",
    "add_node",
    "kill_worker",
    "load_state",
    "main",
    "remove_node",
    "start_cluster",
    "stop_cluster",
]

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
SUPERVISOR_LOG = "supervisor.log"
LOOPBACK = "127.0.0.1"
# Ports per node: the dashboard agent's HTTP port first, then the node's worker port range. Blocks are
# searched below the kernel's ephemeral range (32768+) so that randomly assigned ports never land in them.
PORTS_PER_NODE = 100
PORT_SEARCH_RANGE = (20000, 32000)
# Unix socket paths are limited to 107 bytes and Ray nests `session_<date>_<pid>/sockets/plasma_store` under
# the temp dir, so the temp root must stay short: it goes under /tmp, not under the state dir.
MAX_TEMP_ROOT_LEN = 40
# Set through num_cpus and friends, never as custom resources (Ray refuses them there).
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
# `stop` asks the supervisor to tear down with SIGTERM, or with this signal to keep the temp dirs (logs).
KEEP_TEMP_SIGNAL = signal.SIGUSR1
# `add-node` / `remove-node` leave a request file in <state-dir>/requests/ and wait for the supervisor's reply
# file beside it: only the supervisor holds the Cluster object (and is the parent of every node's processes).
REQUESTS_DIR = "requests"
REQUEST_POLL_S = 0.5
MB = 1024 * 1024


class LocalClusterError(RuntimeError):
    """The local cluster could not be started, stopped or inspected."""


class ClusterStateError(ValueError):
    """A state dir or argument that does not describe a usable cluster."""


@dataclass(frozen=True)
class LocalClusterConfig:
    """What to start; saved into the state file.

    Attributes:
        state_dir: folder for the state file, the supervisor log and the token file.
        workers: number of worker nodes (0 means a head alone).
        head_cpus: CPUs the head node offers to tasks.
        worker_cpus: CPUs each worker node offers.
        head_resources: custom resources of the head node.
        worker_resources: custom resources of every worker node (e.g. ``{"worker_node": 1}``).
        dashboard_port: port of the dashboard and Jobs API on 127.0.0.1.
        gcs_port: port of the GCS; 0 lets the OS choose.
        token: turn on Ray token authentication with a fresh token in ``<state_dir>/auth_token``.
        port_base: first port of the per-node blocks; None finds free blocks.
        object_store_mb: object store size of each node.
        temp_root: folder for the nodes' temp dirs (short, see MAX_TEMP_ROOT_LEN); None makes one in /tmp.
        start_timeout_s: how long ``start`` waits for every node to be alive.
        owner_pid: stop the cluster when this process exits (tests); None keeps it running until ``stop``.
        health_check_period_ms: how often the GCS checks each raylet. With the failure threshold, this is how
            fast a lost node is marked dead: Ray's defaults (3000 ms x 5) take ~15 s; 1000 ms x 3 take ~3 s
            and still tolerate a raylet that a busy 2-core machine keeps from answering for a few seconds.
        health_check_failure_threshold: failed checks in a row before the node is marked dead.
        keep_temp: keep the nodes' temp dirs (Ray's logs) after ``stop``; by default a temp root that
            ``start`` created itself is deleted.
    """

    state_dir: str
    workers: int = 1
    head_cpus: int = 1
    worker_cpus: int = 2
    head_resources: dict[str, float] = field(default_factory=dict)
    worker_resources: dict[str, float] = field(default_factory=dict)
    dashboard_port: int = 8265
    gcs_port: int = 0
    token: bool = False
    port_base: int | None = None
    object_store_mb: int = 200
    temp_root: str | None = None
    start_timeout_s: float = 180.0
    owner_pid: int | None = None
    health_check_period_ms: int = 1000
    health_check_failure_threshold: int = 3
    keep_temp: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ClusterStateError(f"`workers >= 0` must hold, but got workers={self.workers}")
        for name in ("head_cpus", "worker_cpus"):
            if getattr(self, name) < 0:
                raise ClusterStateError(f"`{name} >= 0` must hold, but got {name}={getattr(self, name)}")
        if not 1 <= self.dashboard_port <= 65535:
            raise ClusterStateError(f"dashboard_port must be a port number, got {self.dashboard_port}")
        if self.object_store_mb < 80:
            # Ray refuses object stores under 75 MiB.
            raise ClusterStateError(f"`object_store_mb >= 80` must hold, got {self.object_store_mb}")
        for name in ("head_resources", "worker_resources"):
            reserved = sorted(set(getattr(self, name)) & RESERVED_RESOURCES)
            if reserved:
                raise ClusterStateError(
                    f"{name} cannot set Ray's built-in resources {reserved}: use head_cpus/worker_cpus "
                    f"(custom resources only), got {getattr(self, name)}"
                )
        if self.health_check_period_ms < 100 or self.health_check_failure_threshold < 1:
            raise ClusterStateError(
                "`health_check_period_ms >= 100 and health_check_failure_threshold >= 1` must hold, but got "
                f"({self.health_check_period_ms}, {self.health_check_failure_threshold})"
            )
        if self.temp_root is not None and len(self.temp_root) > MAX_TEMP_ROOT_LEN:
            raise ClusterStateError(
                f"temp_root must be at most {MAX_TEMP_ROOT_LEN} characters (Unix socket paths under it are "
                f"limited to 107 bytes), got {self.temp_root!r} ({len(self.temp_root)})"
            )


# ---------------------------------------------------------------------------------------------------------
# Ports


def _port_free(port: int) -> bool:
    """True when nothing listens on ``port`` on 127.0.0.1 (nor on 0.0.0.0, which would clash as well)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers do (Ray's included): connections of a stopped server in TIME_WAIT do not make it taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _block_free(start: int, n_nodes: int) -> bool:
    return all(_port_free(p) for p in range(start, start + n_nodes * PORTS_PER_NODE))


def find_port_base(n_nodes: int, *, avoid: set[int] = frozenset()) -> int:
    """First port of ``n_nodes`` consecutive free blocks of ``PORTS_PER_NODE`` ports on 127.0.0.1.

    The search starts at a random offset so that two clusters started at the same moment (other users of
    this machine) rarely probe the same block.

    Raises:
        LocalClusterError: no free block in ``PORT_SEARCH_RANGE``.
    """
    lo, hi = PORT_SEARCH_RANGE
    span = n_nodes * PORTS_PER_NODE
    candidates = list(range(lo, hi - span, PORTS_PER_NODE))
    offset = secrets.randbelow(len(candidates))
    for start in candidates[offset:] + candidates[:offset]:
        if any(start <= p < start + span for p in avoid):
            continue
        if _block_free(start, n_nodes):
            return start
    raise LocalClusterError(f"no {span} consecutive free ports on {LOOPBACK} in {PORT_SEARCH_RANGE}")


def _node_ports(port_base: int, index: int) -> dict[str, int]:
    """The fixed ports of node ``index`` (0 = head): dashboard agent, then its worker port range."""
    start = port_base + index * PORTS_PER_NODE
    return {
        "dashboard_agent_listen_port": start,
        "min_worker_port": start + 1,
        "max_worker_port": start + PORTS_PER_NODE - 1,
    }


# ---------------------------------------------------------------------------------------------------------
# State file


def _state_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / STATE_FILE


def _write_state(state_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write the state file atomically (temp file + rename) so a reader never sees half of it."""
    path = _state_path(state_dir)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_state(state_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``<state_dir>/cluster.json``.

    Raises:
        ClusterStateError: there is no state file (no cluster was started with this state dir).
    """
    path = _state_path(state_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterStateError(f"no local cluster state at {path}: start one with `start --state-dir`") \
            from None


# ---------------------------------------------------------------------------------------------------------
# Processes (psutil is imported lazily: only the commands that inspect processes need it)


def _proc(pid: int, create_time: float | None):
    """The live process ``pid`` if it is the one that was recorded (same start time), else None."""
    import psutil

    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 0.05:
            return None  # the pid was reused by an unrelated process
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def cluster_processes(state: dict[str, Any]) -> list:
    """Every live process of the cluster described by ``state``, as ``psutil.Process`` objects.

    A process belongs to the cluster when it is the supervisor or one of its descendants, when it is in the
    supervisor's process group (Ray's node processes stay in it; the reaper kills that group), or when it is
    a Ray process whose command line names the cluster's temp root (one that escaped both, e.g. reparented to
    init after a setsid).
    """
    import psutil

    found: dict[int, Any] = {}
    sup = _proc(state["supervisor_pid"], state.get("supervisor_create_time"))
    if sup is not None:
        found[sup.pid] = sup
        for child in sup.children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
    pgid = state.get("pgid")
    root = state.get("temp_root")
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid in found or p.pid == os.getpid():
            continue
        try:
            in_group = pgid is not None and os.getpgid(p.pid) == pgid
            cmdline = p.info["cmdline"] or []
            names_root = bool(root) and _is_ray_process(cmdline) and any(root in arg for arg in cmdline)
            if (in_group or names_root) and p.status() != psutil.STATUS_ZOMBIE:
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return list(found.values())


_RAY_PACKAGE_MARK = f"{os.sep}ray{os.sep}"


def _is_ray_process(cmdline: list[str]) -> bool:
    """A process started from Ray's package (so `less <temp_root>/.../raylet.out` is never taken for one)."""
    return bool(cmdline) and (
        cmdline[0].startswith(("ray::", "ray-dashboard", "ray_"))
        or any(_RAY_PACKAGE_MARK in arg and "site-packages" in arg for arg in cmdline[:3])
    )


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (a LocalCluster's supervisor), so no zombie stays."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _kill_and_wait(procs: list, timeout: float) -> list:
    """SIGKILL ``procs`` and wait for them; returns the ones still alive."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


# ---------------------------------------------------------------------------------------------------------
# Supervisor: the process that holds the Cluster object


def _own_address_file(gcs_address: str, node_temp_dir: str) -> None:
    """Writes the cluster's address where a job supervisor on that node looks for it.

    A job's driver gets the address its supervisor resolves from ``<node temp dir>/ray_current_cluster``;
    the harness writes that file only under RAY_TMPDIR, so without this the supervisor falls back to any Ray
    instance it finds in the process list: with two local clusters up, 4 of 15 jobs reached the wrong one.
    """
    from ray._private.utils import write_ray_address

    os.makedirs(node_temp_dir, exist_ok=True)
    write_ray_address(gcs_address, node_temp_dir)


def _cluster_env(config: LocalClusterConfig, temp_root: str, token_file: str | None) -> dict[str, str]:
    """Environment of the supervisor, hence of every Ray process it starts."""
    env = {
        # Every listener on 127.0.0.1 (Ray binds the machine's network address otherwise).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's default temp dir and its `ray_current_cluster` address file live under RAY_TMPDIR: keep them
        # in our own folder so we never point other users' `ray.init()` at this cluster, nor delete theirs.
        "RAY_TMPDIR": temp_root,
        # Explicit either way: with the mode unset, a token file in $HOME silently turns token auth on.
        "RAY_AUTH_MODE": "token" if token_file else "disabled",
    }
    if token_file:
        env["RAY_AUTH_TOKEN_PATH"] = token_file
    # Job entrypoints (`python ...`, `nas-service run ...`) resolve through PATH: make them the interpreter
    # and scripts of the environment the cluster runs in, as an activated virtual environment would.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return env


def _record_processes(node) -> list[dict[str, Any]]:
    """The processes Ray started for ``node`` (``Node.all_processes``), with their start times."""
    import psutil

    out = []
    for kind, infos in node.all_processes.items():
        for info in infos:
            pid = info.process.pid
            try:
                ct = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                ct = None
            out.append({"kind": kind, "pid": pid, "create_time": ct})
    return out


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _supervise(config: LocalClusterConfig, temp_root: str, port_base: int, token_file: str | None,
               temp_root_owned: bool) -> int:  # fmt: skip
    """Start the cluster, record it in the state file, wait for SIGTERM/SIGINT, then tear it down.

    Runs in its own process (session leader) started by :func:`start_cluster`; every Ray process it starts
    inherits its process group.
    """
    import psutil

    # A caller's RAY_AUTH_TOKEN would override our token file, and RAY_ADDRESS would point drivers elsewhere.
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    os.environ.update(_cluster_env(config, temp_root, token_file))
    # Ray's default temp dir under RAY_TMPDIR; it holds the `ray_current_cluster` address file.
    os.makedirs(os.path.join(temp_root, "ray"), exist_ok=True)
    state: dict[str, Any] = {
        "version": 1,
        "status": "starting",
        "config": asdict(config),
        "supervisor_pid": os.getpid(),
        "supervisor_create_time": psutil.Process().create_time(),
        "pgid": os.getpgid(0),
        "temp_root": temp_root,
        "temp_root_owned": temp_root_owned,
        "port_base": port_base,
        "token_file": token_file,
        "auth_mode": os.environ["RAY_AUTH_MODE"],
        "gcs_address": None,
        "dashboard_url": None,
        "nodes": [],
    }
    _write_state(config.state_dir, state)

    stop_requested = threading.Event()
    keep_temp = config.keep_temp

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal keep_temp
        keep_temp = keep_temp or signum == KEEP_TEMP_SIGNAL
        stop_requested.set()

    def install_handlers() -> None:
        # Ray's Node installs its own SIGTERM handler (kill that one node, exit); ours must win.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, KEEP_TEMP_SIGNAL):
            signal.signal(sig, on_signal)

    install_handlers()
    import ray  # noqa: F401 - after the environment above is in place
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    cluster = Cluster(shutdown_at_exit=True)
    try:
        head_args = dict(
            num_cpus=config.head_cpus,
            resources=dict(config.head_resources),
            node_ip_address=LOOPBACK,
            node_name="head",
            temp_dir=os.path.join(temp_root, "head"),
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=config.dashboard_port,
            object_store_memory=config.object_store_mb * MB,
            _system_config={
                "health_check_period_ms": config.health_check_period_ms,
                "health_check_failure_threshold": config.health_check_failure_threshold,
            },
            **_node_ports(port_base, 0),
        )
        if config.gcs_port:
            head_args["gcs_server_port"] = config.gcs_port
        head = cluster.add_node(**head_args)
        install_handlers()
        state["gcs_address"] = cluster.address
        _own_address_file(cluster.address, head_args["temp_dir"])
        # The harness would let the dashboard move to another port if ours were taken: the user asked for
        # this one, so a different one is an error.
        webui = head.webui_url or ""
        if not webui.endswith(f":{config.dashboard_port}"):
            raise LocalClusterError(
                f"the dashboard did not start on {LOOPBACK}:{config.dashboard_port} (webui_url={webui!r})"
            )
        state["dashboard_url"] = f"http://{LOOPBACK}:{config.dashboard_port}"
        state["nodes"].append(_node_record(head, "head", None, config.head_cpus, config.head_resources,
                                           _node_ports(port_base, 0), head_args["temp_dir"]))  # fmt: skip
        state["head_started_s"] = round(time.monotonic() - t0, 2)
        _write_state(config.state_dir, state)

        state["next_worker_index"] = 0
        for i in range(config.workers):
            if stop_requested.is_set():
                break
            _start_worker(cluster, state, config, _node_ports(port_base, i + 1))
            install_handlers()
            _write_state(config.state_dir, state)
        cluster.wait_for_nodes(timeout=config.start_timeout_s)
        state["started_s"] = round(time.monotonic() - t0, 2)
        state["status"] = "ready" if not stop_requested.is_set() else "stopping"
        _write_state(config.state_dir, state)
        print(f"local cluster ready in {state['started_s']} s: {cluster.address}", flush=True)

        while not stop_requested.wait(timeout=REQUEST_POLL_S):
            # Reap node processes that died (e.g. a raylet killed by `kill-worker`): they are our children.
            for node in cluster.list_all_nodes():
                for infos in node.all_processes.values():
                    for info in infos:
                        info.process.poll()
            # `add-node` / `remove-node` from other processes: only this process holds the Cluster object.
            for path in _pending_requests(config.state_dir):
                _answer_request(path, cluster, state, config)
                install_handlers()  # a new node's Ray code installs its own SIGTERM handler
            if config.owner_pid is not None and not psutil.pid_exists(config.owner_pid):
                print(f"owner process {config.owner_pid} is gone: stopping", flush=True)
                break
    except BaseException as e:  # also KeyboardInterrupt: tear down whatever was started, then report
        state["status"] = "failed"
        state["error"] = f"{type(e).__name__}: {e}"
        _write_state(config.state_dir, state)
        print(f"local cluster failed: {state['error']}", file=sys.stderr, flush=True)
        _teardown(cluster, state, config)
        return 1

    state["status"] = "stopping"
    _write_state(config.state_dir, state)
    _teardown(cluster, state, config)
    if temp_root_owned and not keep_temp:
        shutil.rmtree(temp_root, ignore_errors=True)
    state["status"] = "stopped"
    _write_state(config.state_dir, state)
    return 0


def _node_record(node, role: str, index: int | None, cpus: float, resources: dict[str, float],
                 ports: dict[str, int], temp_dir: str) -> dict[str, Any]:  # fmt: skip
    return {
        "role": role,
        "index": index,
        "name": "head" if role == "head" else f"worker-{index}",
        "node_id": node.node_id,
        "num_cpus": cpus,
        "resources": dict(resources),
        "temp_dir": temp_dir,
        "raylet_pid": _raylet_pid(node),
        "processes": _record_processes(node),
        **ports,
    }


def _start_worker(cluster, state: dict[str, Any], config: LocalClusterConfig, ports: dict[str, int], *,
                  cpus: float | None = None, resources: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Start worker node ``worker-<next index>`` on 127.0.0.1 with ``ports``; record it in ``state``.

    Indices are never reused (a removed ``worker-0`` stays ``DEAD`` in the GCS's node table under that name),
    and each index has its own temp dir.
    """
    index = state["next_worker_index"]
    state["next_worker_index"] = index + 1  # taken even if the start fails: its temp dir may hold logs
    cpus = config.worker_cpus if cpus is None else cpus
    resources = dict(config.worker_resources if resources is None else resources)
    temp_dir = os.path.join(state["temp_root"], f"worker{index}")
    before = set(cluster.worker_nodes)
    try:
        node = cluster.add_node(
            num_cpus=cpus, resources=resources, node_ip_address=LOOPBACK, node_name=f"worker-{index}",
            temp_dir=temp_dir, object_store_memory=config.object_store_mb * MB, **ports,
        )  # fmt: skip
    except BaseException:
        for half_started in set(cluster.worker_nodes) - before:  # its processes, if any came up
            cluster.remove_node(half_started, allow_graceful=False)
        raise
    _own_address_file(cluster.address, temp_dir)
    record = _node_record(node, "worker", index, cpus, resources, ports, temp_dir)
    state["nodes"].append(record)
    return record


def _recorded_worker(state: dict[str, Any], index: int) -> dict[str, Any]:
    workers = [n for n in state["nodes"] if n["role"] == "worker"]
    for n in workers:
        if n["index"] == index:
            return n
    raise ClusterStateError(f"no worker node {index}: the cluster's worker nodes are "
                            f"{[n['index'] for n in workers]}")  # fmt: skip


def _add_node(cluster, state: dict[str, Any], config: LocalClusterConfig, request: dict[str, Any]
              ) -> dict[str, Any]:  # fmt: skip
    """The supervisor's side of ``add-node``: a new worker node in a free port block."""
    cpus = request.get("cpus")
    resources = request.get("resources")
    if cpus is not None and cpus < 0:
        raise ClusterStateError(f"`cpus >= 0` must hold, but got cpus={cpus}")
    reserved = sorted(set(resources or {}) & RESERVED_RESOURCES)
    if reserved:
        raise ClusterStateError(f"resources cannot set Ray's built-in resources {reserved}: use cpus "
                                f"(custom resources only), got {resources}")  # fmt: skip
    # Not the blocks of recorded nodes, dead ones included (their ports may look free but are theirs).
    taken = {p for n in state["nodes"] for p in range(n["dashboard_agent_listen_port"], n["max_worker_port"] + 1)}
    ports = _node_ports(find_port_base(1, avoid=taken), 0)
    return _start_worker(cluster, state, config, ports, cpus=cpus, resources=resources)


def _remove_node(cluster, state: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The supervisor's side of ``remove-node``: stop a worker node's processes (alive or already lost)."""
    record = _recorded_worker(state, int(request["index"]))
    node = next((n for n in cluster.worker_nodes if n.node_id == record["node_id"]), None)
    if node is not None:
        # Graceful: the raylet tells the GCS it is leaving, so the node is DEAD at once, not after the health
        # checks (and as an expected termination). A raylet that `kill-worker` took is simply reaped.
        cluster.remove_node(node, allow_graceful=True)
    # The node's worker processes exit once their raylet is gone; kill whatever of it is left after that.
    deadline = time.monotonic() + 3.0
    while True:
        left = _node_leftovers(record)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:
        _kill_and_wait(left, timeout=5)
    state["nodes"].remove(record)
    state.setdefault("removed_nodes", []).append(
        {k: record[k] for k in ("name", "index", "node_id", "num_cpus", "resources")})
    return record


def _node_leftovers(record: dict[str, Any]) -> list:
    """Live processes of one node: those recorded at its start, and Ray processes naming its temp dir."""
    import psutil

    found = {}
    for rec in record["processes"]:
        p = _proc(rec["pid"], rec["create_time"])
        if p is not None:
            found[p.pid] = p
    marker = record["temp_dir"].rstrip(os.sep) + os.sep
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = p.info["cmdline"] or []
            if p.pid not in found and _is_ray_process(cmdline) and any(marker in arg for arg in cmdline) \
                    and p.status() != psutil.STATUS_ZOMBIE:  # fmt: skip
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _pending_requests(state_dir: str | os.PathLike) -> list[Path]:
    """Request files not yet answered, oldest first (their names start with the time they were made)."""
    return sorted((Path(state_dir) / REQUESTS_DIR).glob("*.request.json"))


def _answer_request(path: Path, cluster, state: dict[str, Any], config: LocalClusterConfig) -> None:
    """Carry out one request and write its reply file; the state file records the new node set."""
    reply_path = path.with_name(path.name.replace(".request.json", ".reply.json"))
    try:
        request = json.loads(path.read_text())
        op = request.get("op")
        print(f"request {path.name}: {request}", flush=True)
        if op == "add-node":
            record = _add_node(cluster, state, config, request)
        elif op == "remove-node":
            record = _remove_node(cluster, state, request)
        else:
            raise ClusterStateError(f"unknown request {op!r}; known: ['add-node', 'remove-node']")
        reply = {"ok": True, "node": {k: v for k, v in record.items() if k != "processes"}}
    except Exception as e:  # the cluster keeps running; the requester gets the reason
        known = isinstance(e, (ClusterStateError, LocalClusterError))
        reply = {"ok": False, "error": str(e) if known else f"{type(e).__name__}: {e}"}
        print(f"request {path.name} failed: {reply['error']}", file=sys.stderr, flush=True)
    _write_state(config.state_dir, state)
    tmp = reply_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reply))
    os.replace(tmp, reply_path)
    path.unlink(missing_ok=True)


def _teardown(cluster, state: dict[str, Any], config: LocalClusterConfig) -> None:
    """Remove worker nodes first, then the head; record how long it took."""
    t0 = time.monotonic()
    for node in list(cluster.worker_nodes):
        try:
            cluster.remove_node(node, allow_graceful=True)
        except Exception as e:  # a killed node's leftovers must not keep the others running
            print(f"removing a worker node: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    if cluster.head_node is not None:
        try:
            cluster.remove_node(cluster.head_node, allow_graceful=True)
        except Exception as e:
            print(f"removing the head node: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    # Ray kills the processes it tracks per node (GCS, raylet, dashboard, agents); the workers and job
    # drivers the raylets started exit on their own once their raylet is gone. Give them a moment, then kill
    # whatever of this cluster is left, so that the supervisor exits only when its cluster is gone.
    deadline = time.monotonic() + 3.0
    while True:
        left = [p for p in cluster_processes(state) if p.pid != os.getpid()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if left:
        names = sorted({_name(p) for p in left})
        print(f"killing {len(left)} processes left after the nodes were removed: {names}", flush=True)
        _kill_and_wait(left, timeout=5)
    state["leftovers_killed"] = len(left)
    state["teardown_s"] = round(time.monotonic() - t0, 2)


def _name(p) -> str:
    try:
        return p.name()
    except Exception:  # gone meanwhile
        return f"pid {p.pid}"


# ---------------------------------------------------------------------------------------------------------
# Commands (each usable from Python)


def _make_temp_root(config: LocalClusterConfig) -> str:
    if config.temp_root is not None:
        os.makedirs(config.temp_root, exist_ok=True)
        return config.temp_root
    return tempfile.mkdtemp(prefix="nas-lc-", dir="/tmp")


def _write_token(state_dir: Path) -> str:
    """A fresh random token (256 bits, like ``ray get-auth-token --generate``) in a file only we can read."""
    path = state_dir / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return str(path)


def start_cluster(config: LocalClusterConfig, *, log_to: str | None = None) -> dict[str, Any]:
    """Start the supervisor process and wait until every node is alive.

    Args:
        config: what to start.
        log_to: file for the supervisor's output; default ``<state_dir>/supervisor.log``.

    Returns:
        The state (as in the state file) of the running cluster.

    Raises:
        ClusterStateError: the state dir already holds a running cluster, or a port is taken.
        LocalClusterError: the cluster did not come up (the message has the end of the supervisor's log).
    """
    state_dir = Path(config.state_dir).resolve()
    config = LocalClusterConfig(**{**asdict(config), "state_dir": str(state_dir)})
    state_dir.mkdir(parents=True, exist_ok=True)
    if _state_path(state_dir).exists():
        old = load_state(state_dir)
        if _proc(old["supervisor_pid"], old.get("supervisor_create_time")) is not None:
            raise ClusterStateError(
                f"a local cluster is already running from {state_dir} (supervisor pid "
                f"{old['supervisor_pid']}); stop it first or use another --state-dir"
            )
        _state_path(state_dir).unlink()
    if not _port_free(config.dashboard_port):
        raise ClusterStateError(f"dashboard port {LOOPBACK}:{config.dashboard_port} is already in use")
    if config.gcs_port and not _port_free(config.gcs_port):
        raise ClusterStateError(f"GCS port {LOOPBACK}:{config.gcs_port} is already in use")
    n_nodes = config.workers + 1
    if config.port_base is None:
        port_base = find_port_base(n_nodes, avoid={config.dashboard_port, config.gcs_port})
    else:
        port_base = config.port_base
        if not _block_free(port_base, n_nodes):
            raise ClusterStateError(
                f"ports {port_base}..{port_base + n_nodes * PORTS_PER_NODE - 1} are not all free on "
                f"{LOOPBACK}"
            )
    temp_root = _make_temp_root(config)
    token_file = _write_token(state_dir) if config.token else None

    log_path = Path(log_to) if log_to else state_dir / SUPERVISOR_LOG
    payload = json.dumps({"config": asdict(config), "temp_root": temp_root, "port_base": port_base,
                          "token_file": token_file, "temp_root_owned": config.temp_root is None})  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_supervise", payload],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session and process group: the node processes inherit it, so "the cluster" is exactly that
            # group, and the user's Ctrl-C in the terminal that ran `start` does not reach it.
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + config.start_timeout_s + 30
    reason = f"it was not ready within {config.start_timeout_s + 30:.0f} s"
    while time.monotonic() < deadline:
        code = proc.poll()
        try:
            state = load_state(state_dir)
        except (ClusterStateError, json.JSONDecodeError):
            state = None
        if state is not None and state.get("supervisor_pid") == proc.pid:
            if state["status"] == "ready":
                return state
            if state["status"] == "failed":
                reason = f"{state.get('error')}"
                break
        if code is not None:
            reason = f"the supervisor exited with code {code}"
            break
        time.sleep(0.2)
    # Failed: take down whatever came up, so that a failed start leaves no process behind. The supervisor
    # is our child and not yet reaped, so its pid, which is also its process group id, cannot have been
    # reused: killing that group hits only processes it started.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if _state_path(state_dir).exists():
        stop_cluster(state_dir, keep_temp=True)
    raise LocalClusterError(f"the local cluster did not start: {reason}; its logs are in {temp_root}; "
                            f"end of {log_path}:\n" + _tail(log_path))  # fmt: skip


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def stop_cluster(state_dir: str | os.PathLike, *, timeout_s: float = 60.0,
                 keep_temp: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Stop the cluster of ``state_dir``: its worker nodes, then its head, then any straggler.

    Only processes of this cluster are touched (see :func:`cluster_processes`); ``ray stop`` is never used.

    Args:
        state_dir: the folder given to ``start``.
        timeout_s: how long to wait for the supervisor's orderly teardown before killing what is left.
        keep_temp: keep the nodes' temp dirs (Ray's logs); None follows the ``keep_temp`` of ``start``.

    Returns:
        ``{"stopped_s": seconds, "killed_stragglers": n, "already_stopped": bool}``.

    Raises:
        ClusterStateError: no state file in ``state_dir``.
        LocalClusterError: some process of the cluster survived SIGKILL.
    """
    t0 = time.monotonic()
    state = load_state(state_dir)
    sup = _proc(state["supervisor_pid"], state.get("supervisor_create_time"))
    already = sup is None
    if sup is not None:
        sup.send_signal(KEEP_TEMP_SIGNAL if keep_temp else signal.SIGTERM)
        # Poll rather than psutil's wait(): when the supervisor is another process's child (the process that
        # ran `start`), it stays a zombie until that process reaps it, and _proc counts a zombie as gone.
        deadline = time.monotonic() + timeout_s
        while _proc(state["supervisor_pid"], state.get("supervisor_create_time")) is not None:
            if time.monotonic() > deadline:
                break  # the kill below takes over
            time.sleep(0.05)
        _reap(state["supervisor_pid"])
    leftovers = cluster_processes(load_state(state_dir))
    alive = _kill_and_wait(leftovers, timeout=10) if leftovers else []
    if alive:
        raise LocalClusterError(
            "processes of the local cluster survived SIGKILL: " + ", ".join(f"{p.pid}" for p in alive)
        )
    final = load_state(state_dir)
    if final.get("status") not in ("stopped", "failed"):
        final["status"] = "stopped"
        _write_state(state_dir, final)
    if keep_temp is None:
        keep_temp = final["config"].get("keep_temp", False)
    if final.get("temp_root_owned") and not keep_temp:
        shutil.rmtree(final["temp_root"], ignore_errors=True)
    return {
        "stopped_s": round(time.monotonic() - t0, 2),
        "killed_stragglers": len(leftovers),
        "already_stopped": already,
    }


def kill_worker(state_dir: str | os.PathLike, index: int = 0) -> int:
    """SIGKILL the raylet of worker node ``index`` (a lost node, for failure tests).

    The node's agents and workers exit by themselves once their raylet is gone; the GCS marks the node dead.

    Returns:
        The pid that was killed.

    Raises:
        ClusterStateError: no such worker, or its raylet is not running.
    """
    node = _recorded_worker(load_state(state_dir), index)
    rec = next(r for r in node["processes"] if r["pid"] == node["raylet_pid"])
    p = _proc(rec["pid"], rec["create_time"])
    if p is None:
        raise ClusterStateError(f"the raylet of worker {index} (pid {rec['pid']}) is not running")
    p.kill()
    # The raylet is the supervisor's child, not ours: wait until it is gone or a zombie (the supervisor
    # reaps it within a second).
    deadline = time.monotonic() + 10
    while _proc(rec["pid"], rec["create_time"]) is not None:
        if time.monotonic() > deadline:
            raise LocalClusterError(
                f"the raylet of worker {index} (pid {rec['pid']}) survived SIGKILL for 10 s"
            )
        time.sleep(0.05)
    return rec["pid"]


def _running_state(state_dir: str | os.PathLike, what: str) -> dict[str, Any]:
    """The state of a cluster whose supervisor runs and is ready; else ClusterStateError."""
    state = load_state(state_dir)
    running = _proc(state["supervisor_pid"], state.get("supervisor_create_time")) is not None
    if not running or state["status"] != "ready":
        shown = state["status"] if running or state["status"] in ("stopped", "failed") else "lost"
        raise ClusterStateError(f"cannot {what}: the local cluster of {state_dir} is {shown}, not ready")
    return state


def _request(state_dir: str | os.PathLike, op: str, timeout_s: float, **args: Any) -> dict[str, Any]:
    """Ask the supervisor to carry out ``op`` and wait for its reply (see :data:`REQUESTS_DIR`)."""
    state = _running_state(state_dir, op)
    folder = Path(state_dir) / REQUESTS_DIR
    folder.mkdir(exist_ok=True)
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    request, reply = folder / f"{name}.request.json", folder / f"{name}.reply.json"
    tmp = folder / f"{name}.tmp"
    tmp.write_text(json.dumps({"op": op, **args}))
    os.replace(tmp, request)  # the supervisor never reads half a request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reply.exists():
            answer = json.loads(reply.read_text())
            reply.unlink(missing_ok=True)
            if not answer["ok"]:
                raise LocalClusterError(f"{op}: {answer['error']}")
            return answer["node"]
        if _proc(state["supervisor_pid"], state.get("supervisor_create_time")) is None:
            request.unlink(missing_ok=True)
            raise LocalClusterError(f"{op}: the supervisor (pid {state['supervisor_pid']}) exited; see "
                                    f"{Path(state_dir) / SUPERVISOR_LOG}")  # fmt: skip
        time.sleep(0.1)
    taken = not request.exists()
    request.unlink(missing_ok=True)
    raise LocalClusterError(
        f"{op}: no answer from the supervisor within {timeout_s:g} s"
        + ("; it is still working on it (`status` shows the outcome)" if taken else "; the request is withdrawn")
    )


def add_node(state_dir: str | os.PathLike, *, cpus: float | None = None,
             resources: dict[str, float] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:  # fmt: skip
    """Start one more worker node in the running cluster of ``state_dir`` (e.g. to replace a lost one).

    Args:
        cpus: its CPUs; None: ``worker_cpus`` of ``start``.
        resources: its custom resources; None: ``worker_resources`` of ``start``.
        timeout_s: how long to wait until the node is alive.

    Returns:
        The new node's record (``name``, ``index``, ``node_id``, ports, ``temp_dir``, ...). Its index is
        new (``worker-<n>``): the indices of removed nodes are not reused.

    Raises:
        ClusterStateError: no running cluster in ``state_dir``, or a bad argument.
        LocalClusterError: the node did not start.
    """
    return _request(state_dir, "add-node", timeout_s, cpus=cpus, resources=resources)


def remove_node(state_dir: str | os.PathLike, index: int, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop worker node ``index`` of the running cluster of ``state_dir`` and forget it (alive or lost).

    An alive node leaves gracefully (the GCS marks it dead at once); a node whose raylet ``kill-worker``
    took is cleaned up (its leftover processes are killed). The head cannot be removed: use ``stop``.

    Returns:
        The removed node's record.
    """
    return _request(state_dir, "remove-node", timeout_s, index=index)


def _gcs_nodes(state: dict[str, Any], timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every node of the GCS's node table, dead ones included (the State API, through the dashboard)."""
    import urllib.request

    headers = {}
    if state.get("token_file"):
        headers["Authorization"] = f"Bearer {Path(state['token_file']).read_text().strip()}"
    url = f"{state['dashboard_url']}/api/v0/nodes?limit=10000&detail=true"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
        return list(json.loads(r.read())["data"]["result"]["result"])


def cluster_status(state_dir: str | os.PathLike, *, ask_gcs: bool = True) -> dict[str, Any]:
    """Where the cluster of ``state_dir`` stands: its processes, and what the GCS says of its nodes.

    A node is dead when its raylet process is gone (seen at once) or the GCS marked it ``DEAD`` (after its
    health checks fail: ``health_check_period_ms`` x ``health_check_failure_threshold``); a ready cluster
    with a dead node is ``degraded``. Nodes taken out with ``remove-node`` are not counted.

    Args:
        ask_gcs: also ask the GCS (through the dashboard's State API) which nodes are alive.

    Returns:
        ``{"status": "ready" | "degraded" | "starting" | "stopping" | "stopped" | "failed" | "lost",
        "summary": one line, "alive_nodes": GCS count or None, "dead_nodes": [names], "supervisor_alive",
        "gcs_address", "dashboard_url", "auth_mode", "nodes": [{"name", "role", "index", "node_id",
        "raylet_alive", "gcs_state", ...}], "processes": n}``.
    """
    state = load_state(state_dir)
    sup_alive = _proc(state["supervisor_pid"], state.get("supervisor_create_time")) is not None
    status = state["status"] if sup_alive or state["status"] in ("stopped", "failed") else "lost"
    gcs: dict[str, dict[str, Any]] | None = None
    gcs_error = None
    if ask_gcs and sup_alive and state.get("dashboard_url"):
        try:
            gcs = {n["node_id"]: n for n in _gcs_nodes(state)}
        except Exception as e:  # the dashboard is slow or gone: the process view still stands
            gcs_error = f"{type(e).__name__}: {e}"
    nodes = []
    for n in state["nodes"]:
        rec = next(r for r in n["processes"] if r["pid"] == n["raylet_pid"])
        seen = (gcs or {}).get(n["node_id"], {})
        nodes.append({
            "name": n.get("name") or ("head" if n["role"] == "head" else f"worker-{n['index']}"),
            "role": n["role"], "index": n["index"], "node_id": n["node_id"], "num_cpus": n["num_cpus"],
            "resources": n["resources"], "raylet_pid": n["raylet_pid"],
            "raylet_alive": _proc(rec["pid"], rec["create_time"]) is not None,
            "gcs_state": seen.get("state"), "gcs_state_message": seen.get("state_message"),
        })  # fmt: skip
    dead = [n for n in nodes if not n["raylet_alive"] or n["gcs_state"] == "DEAD"] if sup_alive else []
    alive = None if gcs is None else sum(1 for n in gcs.values() if n.get("state") == "ALIVE")
    if status == "ready" and dead:
        status = "degraded"
    if dead:
        why = [f"{n['name']} ({'raylet exited' if not n['raylet_alive'] else 'raylet running'}; GCS: "
               f"{n['gcs_state'] or 'not asked'}{(', ' + n['gcs_state_message']) if n['gcs_state_message'] else ''})"
               for n in dead]  # fmt: skip
        summary = f"{status}: {len(nodes) - len(dead)} of {len(nodes)} nodes alive; dead: {'; '.join(why)}"
    else:
        summary = f"{status}: {len(nodes)} node(s)" + (", all alive" if sup_alive else "")
    if alive is not None:
        summary += f" (GCS: {alive} alive)"
    elif gcs_error:
        summary += f" (GCS not asked: {gcs_error})"
    return {
        "status": status,
        "summary": summary,
        "alive_nodes": alive,
        "dead_nodes": [n["name"] for n in dead],
        "supervisor_alive": sup_alive,
        "gcs_address": state["gcs_address"],
        "dashboard_url": state["dashboard_url"],
        "auth_mode": state["auth_mode"],
        "token_file": state.get("token_file"),
        "nodes": nodes,
        "processes": len(cluster_processes(state)),
    }


def client_env(state: dict[str, Any]) -> dict[str, str]:
    """Environment a client on this machine needs to talk to the cluster (drivers, ``ray job``, the CLI).

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps a driver's own listeners on 127.0.0.1 as well; with
    token auth, ``RAY_AUTH_MODE=token`` is required even when the token is at hand (Ray's Jobs client
    refuses to start without it).
    """
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": state["auth_mode"]}
    if state.get("token_file"):
        env["RAY_AUTH_TOKEN_PATH"] = state["token_file"]
    return env


class LocalCluster:
    """A local multi-node cluster as a context manager (the Python face of the ``start``/``stop`` commands).

    Example::

        with LocalCluster(state_dir=tmp_path, workers=1, worker_resources={"worker_node": 1}) as c:
            JobSubmissionClient(c.dashboard_url, headers=c.auth_headers())

    Args:
        state_dir: folder for the state file, log and token (must not hold a running cluster).
        **options: the other fields of :class:`LocalClusterConfig` (keyword-only). ``owner_pid`` defaults
            to this process, so the cluster goes away with it even if ``stop`` is never called.
    """

    def __init__(self, *, state_dir: str | os.PathLike, **options: Any) -> None:
        options.setdefault("owner_pid", os.getpid())
        self.config = LocalClusterConfig(state_dir=str(state_dir), **options)
        self.state: dict[str, Any] | None = None
        self.start_s: float | None = None
        self.stop_s: float | None = None

    def start(self) -> LocalCluster:
        """Start the cluster and wait until every node is alive; returns ``self``."""
        if self.state is not None:
            raise LocalClusterError(
                f"this LocalCluster was already started (state dir {self.config.state_dir})"
            )
        t0 = time.monotonic()
        self.state = start_cluster(self.config)
        self.start_s = time.monotonic() - t0
        return self

    def stop(self) -> dict[str, Any]:
        """Stop every process of the cluster (workers first); idempotent. Returns :func:`stop_cluster`'s."""
        if self.state is None:
            return {"stopped_s": 0.0, "killed_stragglers": 0, "already_stopped": True}
        out = stop_cluster(self.config.state_dir)
        self.stop_s = out["stopped_s"]
        return out

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _require(self) -> dict[str, Any]:
        if self.state is None:
            raise LocalClusterError("the LocalCluster is not started: call start() or use it in `with`")
        return self.state

    @property
    def address(self) -> str:
        """The GCS address, ``127.0.0.1:PORT`` (for ``ray.init(address=...)``)."""
        return self._require()["gcs_address"]

    @property
    def dashboard_url(self) -> str:
        """``http://127.0.0.1:PORT``: dashboard, Jobs API and State API."""
        return self._require()["dashboard_url"]

    @property
    def token(self) -> str | None:
        """The cluster's auth token, or None without token auth."""
        path = self._require().get("token_file")
        return Path(path).read_text().strip() if path else None

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard / Jobs API (empty without token auth)."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client_env(self) -> dict[str, str]:
        """Environment variables a client process needs (see :func:`client_env`)."""
        return client_env(self._require())

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes as recorded at start (role, index, node_id, raylet_pid, ports, temp_dir, processes)."""
        return self._require()["nodes"]

    def processes(self) -> list:
        """The live processes of this cluster (``psutil.Process``)."""
        return cluster_processes(load_state(self.config.state_dir))

    def status(self) -> dict[str, Any]:
        """See :func:`cluster_status`."""
        return cluster_status(self.config.state_dir)

    def kill_worker(self, index: int = 0) -> int:
        """SIGKILL worker node ``index``'s raylet; returns its pid. See :func:`kill_worker`."""
        self._require()
        return kill_worker(self.config.state_dir, index)

    def add_node(self, *, cpus: float | None = None, resources: dict[str, float] | None = None,
                 timeout_s: float = 120.0) -> dict[str, Any]:  # fmt: skip
        """Start one more worker node; returns its record. See :func:`add_node`."""
        self._require()
        record = add_node(self.config.state_dir, cpus=cpus, resources=resources, timeout_s=timeout_s)
        self.state = load_state(self.config.state_dir)
        return record

    def remove_node(self, index: int, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """Stop and forget worker node ``index`` (alive or lost); returns its record. See :func:`remove_node`."""
        self._require()
        record = remove_node(self.config.state_dir, index, timeout_s=timeout_s)
        self.state = load_state(self.config.state_dir)
        return record


# ---------------------------------------------------------------------------------------------------------
# Command line


def _resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"resources must be a JSON object, got {text!r}: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise argparse.ArgumentTypeError(f'resources must look like {{"name": 1}}, got {text!r}')
    return {str(k): float(v) for k, v in value.items()}


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line parser (``start | status | add-node | remove-node | kill-worker | stop``)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="start a head and worker nodes on 127.0.0.1, then return",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("--state-dir", dest="state_dir", required=True,
                   help="folder for the state file, log, token")  # fmt: skip
    g = p.add_argument_group("nodes")
    g.add_argument("--workers", type=int, default=1, help="number of worker nodes")
    g.add_argument("--head-cpus", dest="head_cpus", type=int, default=1)
    g.add_argument("--worker-cpus", dest="worker_cpus", type=int, default=2)
    g.add_argument("--head-resources", dest="head_resources", type=_resources, default={},
                   help='custom resources of the head, JSON, e.g. \'{"head": 1}\'')  # fmt: skip
    g.add_argument("--worker-resources", dest="worker_resources", type=_resources, default={},
                   help='custom resources of each worker node, JSON, e.g. \'{"worker_node": 1}\'')
    g.add_argument("--object-store-mb", dest="object_store_mb", type=int, default=200)
    g = p.add_argument_group("ports and auth")
    g.add_argument("--dashboard-port", dest="dashboard_port", type=int, default=8265,
                   help="dashboard / Jobs API port on 127.0.0.1")  # fmt: skip
    g.add_argument("--gcs-port", dest="gcs_port", type=int, default=0, help="GCS port (0: any free port)")
    g.add_argument("--port-base", dest="port_base", type=int, default=None,
                   help=f"first of {PORTS_PER_NODE} ports per node (agent + worker range); "
                        "default: a free block")  # fmt: skip
    g.add_argument("--token", action="store_true", help="token authentication with a fresh token")
    g.add_argument("--temp-root", dest="temp_root", default=None,
                   help=f"folder for the nodes' temp dirs (<= {MAX_TEMP_ROOT_LEN} chars); "
                        "default: a new one in /tmp")  # fmt: skip
    g.add_argument("--keep-temp", dest="keep_temp", action="store_true",
                   help="keep the nodes' temp dirs (Ray's logs) after stop")  # fmt: skip
    g.add_argument("--timeout", dest="start_timeout_s", type=float, default=180.0, help="seconds to wait")
    g.add_argument("--health-check-period-ms", dest="health_check_period_ms", type=int, default=1000,
                   help="GCS health checks of raylets; x the threshold = time until a lost node is dead")
    g.add_argument("--health-check-failure-threshold", dest="health_check_failure_threshold", type=int,
                   default=3)  # fmt: skip

    p = sub.add_parser("status", help="state of the cluster (JSON)", formatter_class=fmt)
    p.add_argument("--state-dir", dest="state_dir", required=True)

    p = sub.add_parser("stop", help="stop the cluster (worker nodes first, then the head)",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("--state-dir", dest="state_dir", required=True)
    p.add_argument("--keep-temp", dest="keep_temp", action="store_true", default=None,
                   help="keep the nodes' temp dirs (Ray's logs) even if start did not ask to")  # fmt: skip

    p = sub.add_parser("kill-worker", help="SIGKILL a worker node's raylet (failure tests)",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("--state-dir", dest="state_dir", required=True)
    p.add_argument("--index", type=int, default=0, help="which worker node")

    p = sub.add_parser("add-node", help="start one more worker node (e.g. to replace a lost one)",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("--state-dir", dest="state_dir", required=True)
    p.add_argument("--cpus", type=float, default=None, help="its CPUs (default: --worker-cpus of start)")
    p.add_argument("--resources", type=_resources, default=None,
                   help="its custom resources, JSON (default: --worker-resources of start)")  # fmt: skip
    p.add_argument("--timeout", dest="timeout_s", type=float, default=120.0, help="seconds to wait")

    p = sub.add_parser("remove-node", help="stop a worker node and forget it (alive, or lost to kill-worker)",
                       formatter_class=fmt)  # fmt: skip
    p.add_argument("--state-dir", dest="state_dir", required=True)
    p.add_argument("--index", type=int, required=True, help="which worker node (worker-<index>)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=60.0, help="seconds to wait")

    p = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    p.add_argument("payload")
    return parser


def _print_started(state: dict[str, Any]) -> None:
    env = client_env(state)
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    workers = [n for n in state["nodes"] if n["role"] == "worker"]
    print(f"local Ray cluster up in {state['started_s']} s: head + {len(workers)} worker node(s), "
          f"all on {LOOPBACK}")  # fmt: skip
    print(f"  GCS address:   {state['gcs_address']}")
    print(f"  dashboard:     {state['dashboard_url']}   (Jobs API)")
    print(f"  temp dirs:     {state['temp_root']}")
    print(f"  state file:    {_state_path(state['config']['state_dir'])}")
    if state.get("token_file"):
        print(f"  auth:          token in {state['token_file']} (mode 0600)")
    print("connect from this machine:")
    print(f"  export {exports}")
    print(f"  nas-service submit SPEC --address {state['dashboard_url']}")
    print(f"  ray job submit --address {state['dashboard_url']} -- python -c 'import ray; ray.init()'")
    print(f"stop it with: python {os.path.relpath(__file__)} stop --state-dir {state['config']['state_dir']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "_supervise":
            data = json.loads(args.payload)
            return _supervise(LocalClusterConfig(**data["config"]), data["temp_root"], data["port_base"],
                              data["token_file"], data["temp_root_owned"])  # fmt: skip
        if args.command == "start":
            opts = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
            state = start_cluster(LocalClusterConfig(**opts))
            _print_started(state)
        elif args.command == "stop":
            out = stop_cluster(args.state_dir, keep_temp=args.keep_temp)
            if out["already_stopped"] and not out["killed_stragglers"]:
                print("the local cluster was not running; nothing left of it")
            else:
                print(f"stopped in {out['stopped_s']} s (stragglers killed: {out['killed_stragglers']})")
        elif args.command == "status":
            status = cluster_status(args.state_dir)
            print(json.dumps(status, indent=2))
            print(status["summary"], file=sys.stderr)  # the one line a person reads
        elif args.command == "add-node":
            node = add_node(args.state_dir, cpus=args.cpus, resources=args.resources, timeout_s=args.timeout_s)
            print(f"added worker node {node['index']} ({node['name']}, {node['num_cpus']:g} CPUs, "
                  f"resources {node['resources']}, node id {node['node_id']})")  # fmt: skip
        elif args.command == "remove-node":
            node = remove_node(args.state_dir, args.index, timeout_s=args.timeout_s)
            print(f"removed worker node {node['index']} ({node['name']}, node id {node['node_id']})")
        elif args.command == "kill-worker":
            pid = kill_worker(args.state_dir, args.index)
            print(f"killed the raylet of worker node {args.index} (pid {pid})")
    except (LocalClusterError, ClusterStateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
