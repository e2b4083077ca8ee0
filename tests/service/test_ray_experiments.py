"""The service on a real local Ray instance, through the real CLI in a subprocess.

Each run starts its own Ray (bound to 127.0.0.1) in its own process group with its own HOME and temp
folder, so a test can SIGKILL the whole driver tree and never touches the machine's Ray token file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nas_service.ray_runtime.train import WORKER_FAULT_ENV
from nas_service.results import ResultsStore
from tests.helpers import is_loopback, tiny_ddp_spec, tiny_search_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.timeout(600)]

EPOCHS = 2


def spec_text(tmp_path: Path, *, retries: int = 2, epochs: int = EPOCHS) -> str:
    return tiny_search_spec("tiny", tmp_path / "runs", retries=retries, epochs=epochs, max_steps_per_epoch=3,
                            seeds=[0, 1, 2])  # fmt: skip


def write_spec(tmp_path: Path, *, retries: int = 2, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(tmp_path, retries=retries) + extra)
    return path


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": f"/tmp/nr{os.getpid() % 10000}{tmp_path.name[-6:]}",
           "RAY_USAGE_STATS_ENABLED": "0", **extra}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return env


def start_run(spec: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nas_service.cli", "run", str(spec), "--num-cpus", "2", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    return proc.returncode, out


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def store_of(tmp_path: Path) -> ResultsStore:
    return ResultsStore(str(tmp_path / "runs"), "tiny")


def wait_for(predicate, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def written(store: ResultsStore, trial_ids: list[str]) -> list[tuple]:
    """Each epoch row of these trials as (trial, epoch, attempt, written_at): a rerun that wrote a row again,
    even an identical one, changes written_at (compaction moves rows between files but keeps them)."""
    frame = store.epochs(trial_ids=trial_ids)
    return sorted(zip(frame["trial_id"], frame["epoch"], frame["attempt"], frame["written_at"]))


def test_sweep_completes_with_one_row_per_trial_and_epoch(tmp_path):
    spec = write_spec(tmp_path)
    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out
    trials, epochs = store_of(tmp_path).trials(), store_of(tmp_path).epochs()
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"finished"}
    assert len(epochs) == 3 * EPOCHS and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert "[search]" in out and "epoch 2/2" in out  # live per-epoch progress lines
    assert "== search (cell_search) ==" in out  # the report at the end

    # A complete experiment is compacted: at most two files per trial (here one per table), and plain pandas
    # reads each table's folder with every column the store's own reader returns.
    results = tmp_path / "runs" / "tiny" / "results"
    assert len(list(results.rglob("*.parquet"))) <= 2 * len(trials)
    for table, frame in (("trials", trials), ("epochs", epochs)):
        plain = pd.read_parquet(results / table)
        assert set(frame.columns) <= set(plain.columns) and len(plain) == len(frame), table

    # The CLI reads the same store back.
    env = cli_env(tmp_path)
    listing = subprocess.run([sys.executable, "-m", "nas_service.cli", "results", str(tmp_path / "runs" / "tiny"),
                              "--format", "json"], env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert len(json.loads(listing.stdout)) == 3
    status = subprocess.run([sys.executable, "-m", "nas_service.cli", "status", str(tmp_path / "runs" / "tiny")],
                            env=env, capture_output=True, text=True, check=True)  # fmt: skip
    counts, trials = status.stdout.split("\n\n")
    assert counts.splitlines()[1].split() == ["search", "3", "3", "0", "0", "0", "0"]  # planned .. pending
    assert [line.split()[2] for line in trials.splitlines()[1:]] == ["finished"] * 3

    # Running the same command again runs nothing and changes nothing.
    store = store_of(tmp_path)
    before = written(store, list(store.trials()["trial_id"]))
    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out
    assert written(store, list(store.trials()["trial_id"])) == before  # not one row written again


def test_sigint_then_sigkill_then_a_rerun_completes_without_repeating_work(tmp_path):
    """One experiment interrupted twice, as users do: Ctrl-C, then a kill of the whole driver tree."""
    spec = write_spec(tmp_path)
    store = store_of(tmp_path)

    # Ctrl-C once the first epoch row is written: a non-zero exit that says how to resume.
    proc = start_run(spec, cli_env(tmp_path))
    try:
        wait_for(lambda: not store.epochs().empty, what="the first epoch")
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        _kill_group(proc)
    assert proc.returncode != 0, out
    assert "resume" in out and "nas-service run" in out
    done_after_sigint = len(store.trials())
    assert done_after_sigint < 3

    # The same command resumes; SIGKILL the whole driver tree, at once, after its first finished trial.
    proc = start_run(spec, cli_env(tmp_path))
    try:
        wait_for(lambda: len(store.trials()) > done_after_sigint, what="a trial finished by the resumed run")
    finally:
        _kill_group(proc)
    proc.wait()
    first_ids = list(store.trials()["trial_id"])
    rows_before = written(store, first_ids)

    code, out = finish(start_run(spec, cli_env(tmp_path)))
    assert code == 0, out
    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 3 and set(trials["status"]) == {"finished"}
    assert len(epochs) == 3 * EPOCHS and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert written(store, first_ids) == rows_before  # finished before the kill: not run again, no row rewritten


def test_a_trial_that_raises_is_retried_from_its_checkpoint(tmp_path):
    spec = write_spec(tmp_path, retries=1)
    # Plan first, to know a trial id to break (ids are deterministic).
    plan = subprocess.run([sys.executable, "-m", "nas_service.cli", "plan", str(spec)], env=cli_env(tmp_path),
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    from nas_service.planner import plan as make_plan
    from nas_service.spec import load_spec

    victim = make_plan(load_spec(spec)).stage("search").trials[0].trial_id
    assert victim in plan
    marker = tmp_path / "fault.txt"
    fault = json.dumps({"trial_id": victim, "epoch": 1, "marker": str(marker)})
    code, out = finish(start_run(spec, cli_env(tmp_path, NAS_SERVICE_INJECT_FAULT=fault)))
    assert code == 0, out
    assert marker.exists()  # the fault did fire
    epochs = store_of(tmp_path).epochs()
    rows = epochs[epochs["trial_id"] == victim].sort_values("epoch")
    assert list(rows["epoch"]) == list(range(1, EPOCHS + 1))
    # Epoch 2 was written by the attempt that resumed from the epoch-1 checkpoint, not a fresh start.
    assert list(rows["attempt"]) == [0, 1]
    assert store_of(tmp_path).trial_statuses()[victim] == "finished"


def test_a_diverging_trial_is_recorded_and_not_retried(tmp_path):
    blowup = [
        "  - name: blowup",
        "    kind: retrain",
        "    recipe: digits_retrain",
        "    genotypes: [DARTS_V2]",
        "    overrides:",
        "      epochs: 2",
        "      max_steps_per_epoch: 3",
        "      optim: {grad_clip: null, weight_decay: 0.0}",
        "      schedule: {kind: constant, max_lr: 1.0e+12, min_lr: 1.0e+12}",
        "    seeds: [0]",
    ]
    spec = write_spec(tmp_path)
    head = spec.read_text().split("stages:\n")[0]  # the blowup stage alone: no search to wait for
    spec.write_text(head + "stages:\n" + "\n".join(blowup) + "\n")
    code, out = finish(start_run(spec, cli_env(tmp_path)))
    trials = store_of(tmp_path).trials()
    row = trials[trials["stage"] == "blowup"].iloc[0]
    assert row["status"] == "diverged", out
    assert "diverged" in row["error"] and "epoch 1" in row["error"]
    assert code == 0, out  # diverged is a recorded outcome, not a failure to retry
    assert "failed; retrying" not in out


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param(("seeds: [0, 1, 2]", "sweep: {weighting: [scalar, maxw]}"), "stages[0].sweep.weighting", id="sweep"),
        pytest.param(("space: darts", "space: dartz"), "stages[0].overrides.space", id="override"),
    ],
)
def test_invalid_spec_fails_before_ray_starts(tmp_path, edit, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec_text(tmp_path, retries=1, epochs=1).replace(*edit))
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "nas_service.cli", "run", str(bad)], env=cli_env(tmp_path),
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert field in result.stderr
    assert not (tmp_path / "runs").exists()
    assert time.time() - start < 30  # no Ray start-up happened


PORT_PROBE = """
import json, psutil
from nas_service.ray_runtime import start_ray, shutdown_ray
start_ray(num_cpus=2, dashboard=True)  # the dashboard's listeners too (DDP stages start it)
me = psutil.Process()
pids = {me.pid} | {c.pid for c in me.children(recursive=True)}
listening = [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.pid in pids]
print(json.dumps(listening))
shutdown_ray()
"""


def test_every_port_of_the_local_ray_instance_is_on_loopback(tmp_path):
    result = subprocess.run([sys.executable, "-c", PORT_PROBE], env=cli_env(tmp_path), capture_output=True,
                            text=True, timeout=120, start_new_session=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    listening = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(listening) >= 3  # GCS, raylet, object manager at least
    for ip, port, pid in listening:
        assert is_loopback(ip), f"pid {pid} listens on {ip}:{port}"  # ::ffff:127.0.0.1 is IPv4 loopback


def test_ddp_retrains_run_one_after_another_and_a_lost_worker_resumes_from_its_checkpoint(tmp_path):
    """Two retrains of 2 DDP workers each on 2 CPUs: each trial's driver holds a sliver of a CPU and its
    workers the rest, so the trials run in turn instead of waiting on each other. Rank 1 of the first
    trial to train is SIGKILLed in epoch 2: its worker group restarts from epoch 1's checkpoint."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_ddp_spec("ddp", tmp_path / "runs", genotypes=["DARTS_V2", "SHARPSEPCONV_DARTS"],
                                  retries=1, worker_retries=1, epochs=2, max_steps_per_epoch=3))  # fmt: skip
    marker = tmp_path / "killed"
    fault = json.dumps({"rank": 1, "epoch": 2, "step": 1, "marker": str(marker)})
    code, out = finish(start_run(spec, cli_env(tmp_path, **{WORKER_FAULT_ENV: fault})), timeout=500)
    assert code == 0, out
    assert "DDP over 2 workers of 1 CPU, 0 GPU each; up to 1 trial(s) at once" in out
    assert marker.exists(), "the worker fault never fired"

    store = ResultsStore(str(tmp_path / "runs"), "ddp")
    trials, epochs = store.trials(), store.epochs()
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    assert set(trials["extra.workers"]) == {2}
    # Every epoch once; a restart re-trains nothing reported (the attempts below: epoch 1 was not written again).
    assert len(epochs) == 4 and not epochs.duplicated(["trial_id", "epoch"]).any()
    ddp = {row["trial_id"]: json.loads(row["extra.summary_json"])["ddp"] for _, row in trials.iterrows()}
    assert sorted(d["starts"] for d in ddp.values()) == [[0], [0, 1]]
    assert all(d["workers"] == 2 for d in ddp.values())
    hit = next(t for t, d in ddp.items() if d["starts"] == [0, 1])
    rows = epochs[epochs["trial_id"] == hit].sort_values("epoch")
    assert list(rows["attempt"]) == [0, 1]  # epoch 2 came from the start that resumed at epoch 1

    # One after another: the second trial's first epoch ends after the first trial's last.
    windows = sorted((g["written_at"].min(), g["written_at"].max()) for _, g in epochs.groupby("trial_id"))
    assert windows[0][1] < windows[1][0], f"the DDP trials overlapped: {windows}"
