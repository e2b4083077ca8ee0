"""Issue 16: a trial whose worker Ray's memory monitor kills is a failed attempt, retried from its checkpoint.

Before: Ray (since 2.3, ray-project/ray PR #32107) fails the task of a worker its memory monitor killed with
``OutOfMemoryError``, which Tune's actor manager does not expect (only ``RayActorError`` or ``RayTaskError``):
it raised ``RuntimeError: Caught unexpected exception`` out of ``fit()``, the trial was not retried and the run
ended with a traceback. Now such an error reaches Tune as the actor error it is, the trial resumes from its
last checkpoint within the spec's ``retries``, and each failed attempt is recorded with its cause.

The Ray tests trigger Ray's real memory monitor: the run's Ray starts with ``RAY_memory_usage_threshold`` a
few GiB above what the machine uses now, and the trial (test-only fault injection, once, after epoch 2)
allocates and touches memory in 64 MiB chunks until the monitor kills its worker. The allocation stops
before the machine has less than 2 GiB available (then the trial SIGKILLs itself, the marker file says so,
and the recorded cause must say its worker died instead): it can never exhaust the machine.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pandas as pd
import pytest

from nas_service.experiment_runner import UnschedulableError, stage_scheduling
from nas_service.planner import max_concurrent_trials, plan
from nas_service.results import ResultsStore
from nas_service.spec import SpecError, load_spec
from nas_service.trial_lifecycle import FAULT_INJECTION_ENV, record_failed_attempt, run_trial
from tests.helpers import tiny_search_spec
from tests.service.test_ray_experiments import cli_env, finish, start_run, wait_for

EPOCHS = 3
KILL_AFTER = 2  # the epoch after which the trial's worker is killed
GiB = 2**30
# What this test's own processes add once its run starts (the CLI driver with torch, Ray's ~10 processes,
# the trial's worker), and room for the rest of the machine to move meanwhile; the threshold sits this far
# above the machine's use when the run starts, so only the trial's allocation crosses it.
FOOTPRINT_GIB, SLACK_GIB = 2.5, 2.5
OOM_FLOOR_MIB = 2048  # the allocating trial stops before the machine has less than this available

def spec_file(tmp_path: Path, storage: str, *, retries: int) -> Path:
    text = tiny_search_spec("tiny", tmp_path / storage, retries=retries, epochs=EPOCHS, max_steps_per_epoch=3,
                            seeds=[0])  # fmt: skip
    # A memory reservation too: Tune hands it to Ray's scheduler with the CPU.
    text = text.replace("resources: {cpu: 1, gpu: 0}", "resources: {cpu: 1, gpu: 0, memory: 256MiB}")
    path = tmp_path / f"{storage}.yaml"
    path.write_text(text)
    return path


def store_at(tmp_path: Path, storage: str) -> ResultsStore:
    return ResultsStore(str(tmp_path / storage), "tiny")


def metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """Every epoch's metrics, without who wrote them when and how fast."""
    timing = [c for c in frame.columns if c in ("attempt", "written_at", "images_per_second") or c.endswith("seconds")]
    return frame.drop(columns=timing).sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def rows(store: ResultsStore, trial_id: str) -> list[tuple[int, int, Any]]:
    frame = store.epochs(trial_ids=[trial_id])
    return sorted(zip(frame["epoch"], frame["attempt"], frame["written_at"]))


def meminfo() -> tuple[float, float]:
    """(used fraction, total GiB) as Ray's memory monitor counts them: total minus available."""
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return 1 - info["MemAvailable"] / info["MemTotal"], info["MemTotal"] / 2**20


def oom_env(tmp_path: Path, victim: str, marker: Path) -> dict[str, str]:
    """The run's environment: a memory monitor that acts just above the machine's use now, checking every
    100 ms, and the victim allocating memory once, after epoch KILL_AFTER."""
    if not Path("/proc/meminfo").exists():
        pytest.skip("needs Linux /proc/meminfo to place the memory monitor's threshold")
    used, total_gib = meminfo()
    threshold = used + (FOOTPRINT_GIB + SLACK_GIB) / total_gib
    if threshold > 0.9:
        pytest.skip(f"the machine uses {used:.0%} of its memory: no room to trigger the memory monitor safely")
    fault = {"trial_id": victim, "epoch": KILL_AFTER, "marker": str(marker), "kind": "memory",
             "cap_mib": int(total_gib * 1024), "floor_mib": OOM_FLOOR_MIB}  # fmt: skip
    return cli_env(tmp_path, RAY_memory_usage_threshold=f"{threshold:.3f}", RAY_memory_monitor_refresh_ms="100",
                   **{FAULT_INJECTION_ENV: json.dumps(fault)})  # fmt: skip


def expected_cause(marker: Path) -> str:
    """What the recorded cause must say: the memory monitor's kill, or (it never acted before the floor) a
    worker that died (the trial SIGKILLed itself)."""
    if "SIGKILL instead" in marker.read_text():
        warnings.warn("Ray's memory monitor did not act before the allocation's floor: tested a plain worker "
                      "death instead", stacklevel=2)  # fmt: skip
        return "worker died"
    return "out of memory: Ray's memory monitor killed the trial's worker"


@pytest.fixture(scope="module")
def calm(tmp_path_factory) -> pd.DataFrame:
    """The epochs of the same spec run undisturbed."""
    tmp_path = tmp_path_factory.mktemp("calm")
    code, out = finish(start_run(spec_file(tmp_path, "calm", retries=1), cli_env(tmp_path)))
    assert code == 0, out[-3000:]
    return store_at(tmp_path, "calm").epochs()


@pytest.mark.ray
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.timeout(400)
def test_a_trial_killed_by_the_memory_monitor_is_retried_from_its_checkpoint(tmp_path, calm) -> None:
    spec = spec_file(tmp_path, "runs", retries=1)
    victim = plan(load_spec(spec)).stage("search").trials[0].trial_id
    marker = tmp_path / "fired"
    store = store_at(tmp_path, "runs")
    proc = start_run(spec, oom_env(tmp_path, victim, marker))
    try:
        wait_for(marker.exists, what="the fault to fire")
        before = rows(store, victim)  # epochs 1..KILL_AFTER, written before the kill
    finally:
        code, out = finish(proc)
    assert code == 0, out[-3000:]
    assert "Caught unexpected exception" not in out
    cause = expected_cause(marker)
    assert [epoch for epoch, _, _ in before] == list(range(1, KILL_AFTER + 1))

    after = rows(store, victim)
    assert after[:KILL_AFTER] == before  # not rerun: the same rows, attempt 0, same written_at
    # The rest came from an attempt that started at the epoch-KILL_AFTER checkpoint.
    assert [(epoch, attempt) for epoch, attempt, _ in after[KILL_AFTER:]] == [(e, KILL_AFTER) for e in
                                                                            range(KILL_AFTER + 1, EPOCHS + 1)]
    trial = store.trials().set_index("trial_id").loc[victim]
    assert trial["status"] == "finished"
    failures = json.loads(trial["extra.failed_attempts"])
    assert [f["attempt"] for f in failures] == [0] and failures[0]["error"].startswith(cause), failures
    assert f"{victim} failed; retrying from its last checkpoint: {cause}" in out
    pd.testing.assert_frame_equal(metrics(store.epochs()), metrics(calm), check_like=True)


@pytest.mark.ray
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.timeout(400)
def test_out_of_retries_one_line_says_what_to_change_and_a_rerun_resumes(tmp_path, calm) -> None:
    spec = spec_file(tmp_path, "runs", retries=0)
    victim = plan(load_spec(spec)).stage("search").trials[0].trial_id
    marker = tmp_path / "fired"
    store = store_at(tmp_path, "runs")
    code, out = finish(start_run(spec, oom_env(tmp_path, victim, marker)))
    assert code == 1, out[-3000:]
    assert "Caught unexpected exception" not in out
    cause = expected_cause(marker)
    errored = [line for line in out.splitlines() if line.startswith(f"[search] {victim} errored: ")]
    assert len(errored) == 1 and cause in errored[0], out[-3000:]
    if cause.startswith("out of memory"):
        assert "fewer trials at once" in errored[0] and "resources: {memory: 4GiB}" in errored[0]
    assert f"rerun nas-service run {spec} to resume" in out
    row = store.trials().set_index("trial_id").loc[victim]
    assert row["status"] == "errored" and row["error"].startswith(cause)
    before = rows(store, victim)

    code, out = finish(start_run(spec, cli_env(tmp_path)))  # no threshold: the marker keeps the fault off anyway
    assert code == 0, out[-3000:]
    after = rows(store, victim)
    assert after[:KILL_AFTER] == before[:KILL_AFTER]  # resumed from its checkpoint: epochs 1..2 not rerun
    assert [attempt for _, attempt, _ in after[KILL_AFTER:]] == [KILL_AFTER] * (EPOCHS - KILL_AFTER)
    assert json.loads(store.trials().set_index("trial_id").loc[victim, "extra.failed_attempts"])[0]["attempt"] == 0
    pd.testing.assert_frame_equal(metrics(store.epochs()), metrics(calm), check_like=True)


# ---------------------------------------------------------------------------------------------------------
# Without a Ray instance: the error Tune gets, the recorded attempt, the memory reservation


OOM_TEXT = ("1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 127.0.0.1, "
            "ID: 3a4b) was 22.80GB used / 23.54GB limit (0.968570), which exceeds the memory usage threshold of "
            "0.95. Ray killed this worker (ID: 39416a) because it was the most recently scheduled task.")  # fmt: skip


def test_a_lost_worker_reaches_tune_as_an_actor_error_that_names_the_cause() -> None:
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError

    from nas_service.ray_runtime.tune import _advice, _count_lost_workers_as_trial_failures, failure_cause

    _count_lost_workers_as_trial_failures()
    _count_lost_workers_as_trial_failures()  # once per process: not wrapped twice
    for error, cause in [(OutOfMemoryError(OOM_TEXT), "out of memory: Ray's memory monitor killed the trial's worker "
                                                      "(node memory 22.80GB used of 23.54GB, 97%)"),
                         (NodeDiedError("the node died"), "worker died: NodeDiedError: the node died")]:  # fmt: skip
        seen: list[Exception] = []
        task = MagicMock()
        task._tracked_actor._on_error = task._on_error = lambda actor, exc: seen.append(exc)
        RayActorManager._actor_task_failed(MagicMock(), task, error)  # before: RuntimeError, "Caught unexpected"
        assert len(seen) == 2 and all(isinstance(e, RayActorError) for e in seen)  # the actor's and the task's
        again = pickle.loads(pickle.dumps(seen[0]))  # as Tune keeps it in the trial's error file
        assert failure_cause(again) == cause
    assert "raylet.out" in _advice(again)  # the last one: a node lost
    oom = RayActorError(None, f"OutOfMemoryError: {OOM_TEXT}")
    assert "resources: {memory: 4GiB}" in _advice(oom) and "\n" not in failure_cause(oom) + _advice(oom)


def test_a_failed_attempt_is_recorded_and_the_finished_row_keeps_it(tmp_path, monkeypatch) -> None:
    spec = load_spec(tiny_search_spec("tiny", tmp_path / "runs", seeds=[0], epochs=2, max_steps_per_epoch=2))
    trial = plan(spec).stage("search").trials[0]
    store = ResultsStore.of(spec.location)
    monkeypatch.setenv(FAULT_INJECTION_ENV, json.dumps({"trial_id": trial.trial_id, "epoch": 1,
                                                        "marker": str(tmp_path / "fired")}))  # fmt: skip
    edge = MagicMock()
    edge.gpus_held.return_value = 0.0
    with pytest.raises(RuntimeError, match="injected fault"):
        run_trial(trial, spec.location, edge)
    cause = "out of memory: Ray's memory monitor killed the trial's worker"
    assert record_failed_attempt(store, trial, cause) == 0
    row = store.trials().iloc[0]
    assert (row["status"], row["attempt"], row["error"]) == ("errored", 0, cause)
    run_trial(trial, spec.location, edge)  # the retry, from the epoch-1 checkpoint
    row = store.trials().iloc[0]
    assert (row["status"], row["attempt"]) == ("finished", 1)
    assert json.loads(row["extra.failed_attempts"]) == [{"attempt": 0, "error": cause}]
    assert record_failed_attempt(store, trial, "late") is None  # a finished trial's row is left alone


@pytest.mark.parametrize(("size", "expected"), [
    ("512MiB", 512 * 2**20), ("4GiB", 4 * GiB), ("2G", 2 * 10**9), ("2Gi", 2 * GiB), ("1.5GiB", 3 * GiB // 2),
    ("100", 100), (4096, 4096), ("64 MB", 64 * 10**6),
])  # fmt: skip
def test_a_spec_reserves_memory_per_trial(tmp_path, size, expected) -> None:
    text = tiny_search_spec("tiny", tmp_path, seeds=[0]).replace("gpu: 0}", f"gpu: 0, memory: {size}}}")
    assert load_spec(text).resources.memory == expected


@pytest.mark.parametrize("size", ["lots", "4GB!", "-1", "0", "1.5", "true", "[4GiB]", "4 GIB"])
def test_a_bad_memory_size_is_refused_in_one_line(tmp_path, size) -> None:
    text = tiny_search_spec("tiny", tmp_path, seeds=[0]).replace("gpu: 0}", f"gpu: 0, memory: {size}}}")
    with pytest.raises(SpecError) as caught:
        load_spec(text)
    message = str(caught.value)
    assert "\n" not in message and re.search(r"resources\.memory: must be (a size such as 512MiB|above 0)", message)


def test_concurrency_counts_reserved_memory_when_the_cluster_memory_is_known(tmp_path) -> None:
    per_trial = {"cpu": 1.0, "gpu": 0.0, "memory": 4 * GiB}
    assert max_concurrent_trials(per_trial, 8, 0, 10 * GiB) == 2
    assert max_concurrent_trials(per_trial, 8, 0) == 8  # memory unknown: CPUs decide
    assert max_concurrent_trials({"cpu": 1.0}, 8, 0, 1 * GiB) == 8  # nothing reserved: memory decides nothing

    text = tiny_search_spec("tiny", tmp_path, seeds=[0]).replace("gpu: 0}", "gpu: 0, memory: 4GiB}")
    spec = load_spec(text)
    scheduling = stage_scheduling(spec, spec.stages[0], {"CPU": 8.0, "memory": 10.0 * GiB}, fixed=True)
    assert scheduling.concurrency == 2 and scheduling.per_trial["memory"] == 4 * GiB
    assert scheduling.bundles[0]["memory"] == 4 * GiB
    with pytest.raises(UnschedulableError, match="reserves 4.00 GiB of memory"):
        stage_scheduling(spec, spec.stages[0], {"CPU": 8.0, "memory": 3.0 * GiB}, fixed=True)
