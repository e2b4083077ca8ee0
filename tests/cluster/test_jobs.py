"""Experiments submitted through the Ray Jobs API to a real local cluster (a head and two worker nodes,
token authentication on): the results land in Parquet, resubmitting does not rerun finished trials, and a
DDP retrain whose worker node is killed mid-run resumes on the surviving node from its last checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from nas_service.ray_runtime.jobs import PROJECT_PACKAGES, job_runtime_env, jobs_client
from nas_service.results import ResultsStore
from tests.helpers import ROOT, running_local_cluster, tiny_ddp_spec, tiny_search_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(600)]


def spec_text(storage: Path) -> str:
    return tiny_search_spec("jobs_tiny", storage, seeds=[0, 1])


@pytest.fixture(scope="module")
def cluster(ray_home, tmp_path_factory):
    with running_local_cluster(tmp_path_factory.mktemp("cluster"), workers=2, head_cpus=1, worker_cpus=2) as c:
        yield c


def _cli(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "nas_service.cli", *args], env=env, capture_output=True,
                          text=True, check=check, timeout=500)  # fmt: skip


def test_submitted_spec_completes_and_resubmission_reruns_nothing(cluster, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path / "runs"))
    # The cluster has three nodes, on this machine: its local storage is shared, and said so.
    refused = _cli(cluster, "submit", str(spec), "--address", cluster.dashboard_url, check=False)
    assert refused.returncode == 2 and "has 3 nodes (on 127.0.0.1)" in refused.stderr, refused.stderr
    first = _cli(cluster, "submit", str(spec), "--address", cluster.dashboard_url, "--shared-storage", "--wait")
    assert "submitted nas-jobs_tiny-1" in first.stdout and "SUCCEEDED" in first.stdout, first.stdout + first.stderr
    store = ResultsStore(str(tmp_path / "runs"), "jobs_tiny")
    assert len(store.trials()) == 2 and set(store.trials()["status"]) == {"finished"}
    # What the job uploaded: the spec's folder as its working directory, the project's three packages as
    # py_modules (never the site-packages they may be installed in).
    client = jobs_client(cluster.dashboard_url, token=cluster.token)
    runtime_env = client.get_job_info("nas-jobs_tiny-1").runtime_env
    assert runtime_env["working_dir"].startswith("gcs://") and len(runtime_env["py_modules"]) == 3, runtime_env
    assert job_runtime_env(str(tmp_path))["working_dir"] == str(tmp_path)
    assert [Path(m).name for m in job_runtime_env(str(tmp_path))["py_modules"]] == list(PROJECT_PACKAGES)
    rows = sorted(zip(*(store.epochs()[c] for c in ("trial_id", "epoch", "attempt", "written_at"))))

    # A second submission, followed from its start: it runs nothing again, and the stream ends with the job,
    # with the job's outcome.
    second = _cli(cluster, "submit", str(spec), "--address", cluster.dashboard_url, "--shared-storage")
    assert "submitted nas-jobs_tiny-2" in second.stdout, second.stdout + second.stderr
    followed = _cli(cluster, "jobs", "logs", "nas-jobs_tiny-2", "--follow", "--address", cluster.dashboard_url)
    assert "2 trials, 2 done" in followed.stdout and followed.stdout.rstrip().endswith("nas-jobs_tiny-2: SUCCEEDED")
    assert sorted(zip(*(store.epochs()[c] for c in ("trial_id", "epoch", "attempt", "written_at")))) == rows

    listing = _cli(cluster, "jobs", "list", "--address", cluster.dashboard_url).stdout
    assert "nas-jobs_tiny-1" in listing and "nas-jobs_tiny-2" in listing
    logs = _cli(cluster, "jobs", "logs", "nas-jobs_tiny-1", "--address", cluster.dashboard_url).stdout
    assert "epoch 1/" in logs  # the first job's log, read after it ended
    # status and results read the same storage from the client side.
    table = json.loads(_cli(cluster, "results", str(tmp_path / "runs" / "jobs_tiny"), "--format", "json").stdout)
    assert len(table) == 2


def _wheel_venv(tmp_path: Path) -> Path:
    """A fresh virtual environment with the project installed from its built wheel (not editable). Its
    dependencies come from this venv's site-packages through a .pth line (the .pth files in there, such as
    the checkout's editable install, are not processed), so nothing multi-GB is installed again."""
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    [site] = (venv / "lib").glob("python3*/site-packages")
    deps = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (site / "project-deps.pth").write_text(deps + "\n")
    [wheel] = dist.glob("nas_service-*.whl")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)  # fmt: skip
    return venv


def test_an_installed_wheel_runs_a_copied_example_and_submits_it(cluster, tmp_path):
    venv = _wheel_venv(tmp_path)
    user = tmp_path / "user"  # the user's own folder, outside the checkout
    user.mkdir()
    spec = user / "spec.yaml"
    spec.write_text(tiny_search_spec("wheel_tiny", "runs", seeds=[0]))  # storage relative to the spec
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": ""}
    env.pop("RAY_ADDRESS", None)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "from nas_service.ray_runtime.jobs import "
                            "project_modules; print('\\n'.join(project_modules()))"], cwd=user, env=env,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    site = str(next((venv / "lib").glob("python3*/site-packages")))
    assert where == [f"{site}/{name}" for name in PROJECT_PACKAGES]  # the wheel's packages, not the checkout's

    # the shipped examples and cluster configs come out of the installed wheel
    copied = subprocess.run([str(venv / "bin" / "nas-service"), "examples", "shipped"], cwd=user, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert (user / "shipped" / "cluster" / "kuberay" / "rayjob.yaml").is_file()
    valid = subprocess.run([str(venv / "bin" / "nas-service"), "validate", "shipped/examples/darts_vs_human.yaml"],
                           cwd=user, env=env, capture_output=True, text=True)  # fmt: skip
    assert valid.returncode == 0 and valid.stdout.strip().endswith("valid"), valid.stdout + valid.stderr

    run = subprocess.run([str(venv / "bin" / "nas-service"), "run", str(spec), "--num-cpus", "2"], cwd=user, env=env,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(ResultsStore(str(user / "runs"), "wheel_tiny").trials()) == 1

    submitted = subprocess.run([str(venv / "bin" / "nas-service"), "submit", str(spec), "--address",
                                cluster.dashboard_url, "--shared-storage", "--wait"], cwd=user, env={**env, **cluster.client_env()},
                               capture_output=True, text=True, timeout=400)  # fmt: skip
    assert "SUCCEEDED" in submitted.stdout, submitted.stdout + submitted.stderr
    client = jobs_client(cluster.dashboard_url, token=cluster.token)
    runtime_env = client.get_job_info("nas-wheel_tiny-1").runtime_env
    assert len(runtime_env["py_modules"]) == 3 and runtime_env["working_dir"].startswith("gcs://"), runtime_env


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong", "missing"])
def test_a_wrong_or_missing_token_is_refused_in_one_line_and_submits_nothing(cluster, tmp_path, token):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path / "runs").replace("jobs_tiny", "auth_tiny"))
    env = {**os.environ, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    env.pop("RAY_AUTH_TOKEN_PATH")  # no token file: the token comes from RAY_AUTH_TOKEN or nowhere
    env.pop("RAY_AUTH_TOKEN", None)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    for command in (["submit", str(spec), "--address", cluster.dashboard_url, "--shared-storage"],
                    ["submit", str(spec), "--address", cluster.dashboard_url],  # asks the State API first
                    ["jobs", "list", "--address", cluster.dashboard_url]):
        result = subprocess.run([sys.executable, "-m", "nas_service.cli", *command], env=env, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        said = "the token in $RAY_AUTH_TOKEN" if token else "no token"
        assert f"the cluster at {cluster.dashboard_url} refused {said}" in result.stderr, result.stderr
        assert "--token" in result.stderr, result.stderr
    jobs = jobs_client(cluster.dashboard_url, token=cluster.token).list_jobs()
    assert not any(job.submission_id.startswith("nas-auth_tiny") for job in jobs)


def test_local_storage_is_refused_for_a_remote_cluster(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(tmp_path / "runs"))
    result = subprocess.run([sys.executable, "-m", "nas_service.cli", "submit", str(spec), "--address",
                             "http://10.1.2.3:8265"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "storage" in result.stderr and "--shared-storage" in result.stderr


def _train_worker_nodes(cluster) -> set[str]:
    """The nodes that alive Ray Train workers run on, from the State API (through the dashboard)."""
    url = (f"{cluster.dashboard_url}/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D"
           "&filter_values=RayTrainWorker")  # fmt: skip
    request = urllib.request.Request(url, headers=cluster.auth_headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        actors = json.loads(response.read())["data"]["result"]["result"]
    return {a["node_id"] for a in actors if a["state"] == "ALIVE"}


def test_a_lost_worker_node_leaves_the_ddp_retrain_to_resume_on_the_surviving_node(cluster, tmp_path):
    """Head (1 CPU) + two worker nodes (2 CPUs each): the 2-worker DDP group fits one worker node. Once
    epoch 1 is recorded, the node its workers run on is killed; the trial must finish on the other node,
    resuming from a checkpoint (not from scratch), with every epoch recorded exactly once."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_ddp_spec("ddp_lost_node", tmp_path / "runs", genotypes=["DARTS_V2"], retries=2,
                                  worker_retries=2, epochs=5, max_steps_per_epoch=4))  # fmt: skip
    env = {**os.environ, **cluster.client_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    job = subprocess.Popen([sys.executable, "-m", "nas_service.cli", "submit", str(spec), "--address",
                            cluster.dashboard_url, "--shared-storage", "--wait"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    store = ResultsStore(str(tmp_path / "runs"), "ddp_lost_node")
    try:
        deadline = time.monotonic() + 300
        while store.epochs().empty:
            assert job.poll() is None and time.monotonic() < deadline, "no epoch was recorded"
            time.sleep(0.2)
        nodes = _train_worker_nodes(cluster)
        workers = {n["node_id"]: n["index"] for n in cluster.nodes() if n["role"] == "worker"}
        assert len(nodes) == 1 and nodes <= set(workers), f"DDP workers on {nodes}; worker nodes {workers}"
        [lost] = nodes
        killed_at = int(store.epochs()["epoch"].max())
        cluster.kill_worker(workers[lost])
        killed = time.monotonic()
        out, _ = job.communicate(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0 and "SUCCEEDED" in out, out

    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 1 and trials["status"].iloc[0] == "finished", out
    assert killed_at < 5, "the run ended before the node was lost: nothing was tested"
    assert list(epochs.sort_values("epoch")["epoch"]) == list(range(1, 6))
    # the epochs recorded before the node was lost were not written again by the resumed worker group
    assert set(epochs.loc[epochs["epoch"] <= killed_at, "attempt"]) == {0}, epochs[["epoch", "attempt"]]
    ddp = json.loads(trials["extra.summary_json"].iloc[0])["ddp"]
    print(f"node lost after epoch {killed_at}; job done {time.monotonic() - killed:.1f} s later; ddp {ddp}")
    # The last start of the worker group resumed from a checkpoint, on the surviving node.
    assert ddp["starts"][-1] >= killed_at >= 1, ddp
    assert ddp["nodes"][-1] != lost and ddp["nodes"][-1] in workers, ddp
