"""Failures of the environment (a cluster that does not answer, a storage path that is a file) end in one line
and a non-zero exit, not a traceback; `--debug` shows the traceback. Both tests failed before this change
(a 20-line traceback for the first, a traceback after Ray had started for the second)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT, free_port, tiny_search_spec
from tests.service.test_ray_experiments import cli_env


def _cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nas_service.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_a_cluster_that_does_not_answer_is_one_line() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    done = _cli("jobs", "list", "--address", address)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("nas-service jobs: error: ConnectionError: Failed to connect to Ray at address")
    debug = _cli("--debug", "jobs", "list", "--address", address)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_storage_path_that_is_a_file_is_refused_before_ray_starts(tmp_path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("tiny", tmp_path / "afile", seeds=[0]))
    done = _cli("run", str(spec), "--num-cpus", "2")
    assert done.returncode == 2 and "Ray has" not in done.stdout, done.stdout
    # The spec loader refuses it, so `validate` and `plan` do too (tests/hardening/test_bounds_before_ray.py).
    assert done.stderr.strip() == (f"nas-service run: error: invalid experiment spec {spec}: storage: must be a folder "
                                   f"(or a path one can be made at): '{tmp_path / 'afile'}' is a file, not a folder; "
                                   f"the results go under <storage>/tiny/ (got '{tmp_path / 'afile'}')")  # fmt: skip


def test_a_trial_bigger_than_the_local_machine_is_refused_instead_of_waiting_forever(tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("big", tmp_path / "runs", seeds=[0]).replace("resources: {cpu: 1, gpu: 0}",
                                                                                  "resources: {cpu: 1, gpu: 1}"))
    # Its own HOME and Ray temp folder, as every test that starts Ray (before: never started, never said why).
    done = subprocess.run([sys.executable, "-m", "nas_service.cli", "run", str(spec), "--num-cpus", "2"],
                          env={**cli_env(tmp_path), "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # the lines before it are Ray's start-up warnings
    assert last.startswith("nas-service run: error: stage 'search': one trial needs 1 CPUs and 1 GPUs, the cluster "
                           "has 2 and 0; it would never start."), last  # fmt: skip
