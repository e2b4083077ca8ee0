"""An experiment whose storage is an S3 bucket on a real S3-compatible server (moto's server mode on
127.0.0.1, from the test extras): the run is killed and resumed, `status`, `results` and `report` read the
bucket, and a compaction killed at random operations on the object store loses and duplicates nothing.

The endpoint and credentials travel as Ray and pyarrow read them: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import pyarrow.fs as pafs
import pytest

from nas_service.results import ResultsStore
from tests.helpers import ROOT, free_port, tiny_search_spec
from tests.service.test_ray_experiments import _kill_group, cli_env, finish, start_run, wait_for
from tests.test_results_compaction import _COMPACT_ALL, _fill, _same, _tables

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 with one bucket; the environment that points clients at it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.3)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                                   secret_key="test", region="us-east-1", allow_bucket_creation=True)  # fmt: skip
            s3.create_dir("bucket")
            yield env
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas_service.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
def test_an_experiment_on_s3_is_killed_resumed_and_read_back(tmp_path, s3_env, ray_home) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_search_spec("ons3", "s3://bucket/runs", seeds=[0, 1, 2], epochs=2, max_steps_per_epoch=3))
    env = cli_env(tmp_path, **s3_env)
    store = ResultsStore("s3://bucket/runs", "ons3")
    proc = start_run(spec, env)
    try:
        wait_for(lambda: not store.trials().empty, what="the first finished trial on S3")
    finally:
        _kill_group(proc)
    proc.wait()
    first = store.trials()
    code, out = finish(start_run(spec, env))
    assert code == 0, out[-3000:]
    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 3 and set(trials["status"]) == {"finished"}
    assert len(epochs) == 3 * 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
    kept = trials.set_index("trial_id").loc[first["trial_id"], "finished_at"]
    assert list(kept) == list(first["finished_at"])  # finished before the kill: not run again
    assert sorted(store.part_paths("epochs")) == ["bucket/runs/ons3/results/epochs/compacted.parquet"]

    status = _cli(env, "status", "s3://bucket/runs/ons3")
    assert status.returncode == 0 and status.stdout.splitlines()[1].split()[:3] == ["search", "3", "3"], status
    results = _cli(env, "results", "s3://bucket/runs/ons3", "--format", "json")
    assert results.returncode == 0 and len(json.loads(results.stdout)) == 3
    report = _cli(env, "report", "s3://bucket/runs/ons3", "-o", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr


def test_a_compaction_on_s3_killed_at_random_operations_loses_nothing(s3_env) -> None:
    env = {**os.environ, **s3_env}
    s3 = ResultsStore("s3://bucket/reference", "exp").filesystem
    reference = ResultsStore("s3://bucket/reference", "exp")
    _fill(reference, trials=6, epochs=3)
    expected = _tables(reference)
    rng = random.Random(1)
    kills = 0
    for round_ in range(6):
        base = f"bucket/kill{round_}"
        pafs.copy_files("bucket/reference", base, source_filesystem=s3, destination_filesystem=s3)  # same rows
        # 6 trials x 2 tables x (one PUT, then its deletes; no renames on S3), then the tables': ~70 operations
        kill_at = rng.randint(1, 70)
        killed = subprocess.run([sys.executable, "-c", _COMPACT_ALL, f"s3://{base}", str(kill_at)], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert killed.returncode in (0, -signal.SIGKILL), killed.stderr
        kills += killed.returncode == -signal.SIGKILL
        work = ResultsStore(f"s3://{base}", "exp")
        _same(expected, _tables(work))
        rerun = subprocess.run([sys.executable, "-c", _COMPACT_ALL, f"s3://{base}", "0"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        _same(expected, _tables(work))
        assert len(work.part_paths("epochs")) == len(work.part_paths("trials")) == 1
    assert kills >= 4, f"only {kills} of 6 compactions were killed"
