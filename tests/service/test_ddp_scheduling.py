"""How DDP retrain stages are specified and scheduled, and how divergence stays in step across workers.

No Ray here: the rules that keep DDP trials from starving each other are plain arithmetic, and the
engine's divergence agreement only needs an ``all_reduce_sum`` (a fake one stands in for the other
worker). The real runs are in test_ddp_retrain.py and tests/cluster/test_lost_node.py.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from nas_service.ray_runtime.train import DRIVER_CPU_SLIVER, ddp_trial_resources
from trainers.distributed import DDPConfigError
from nas_service.experiment_runner import UnschedulableError, stage_scheduling
from nas_service.spec import SpecError, load_spec
from trainers.engine import DivergedError, Hooks, evaluate, train_one_epoch

RETRAIN = {"name": "retrain", "kind": "retrain", "recipe": "digits_retrain", "genotypes": ["DARTS_V2", "DARTS_V1",
           "SHARPSEPCONV_DARTS"]}  # fmt: skip


def spec_with(**stage: Any) -> Any:
    data = {"name": "t", "storage": "/tmp/nas-ddp-scheduling", "data": {"dataset": "digits"},
            "stages": [{**copy.deepcopy(RETRAIN), **stage}]}  # fmt: skip
    return load_spec(yaml.safe_dump(data, sort_keys=False))


def problems(err: pytest.ExceptionInfo[SpecError]) -> list[tuple[str, str, str]]:
    return [tuple(issue) for issue in err.value.issues]


# ---------------------------------------------------------------------------------------------------------
# The driver's sliver and the workers' share


def test_the_driver_takes_a_sliver_and_the_workers_the_rest():
    driver, worker = ddp_trial_resources(2, {"CPU": 1, "GPU": 0})
    assert driver == {"cpu": DRIVER_CPU_SLIVER}
    assert worker == {"CPU": pytest.approx(0.995)}  # zero GPUs are not asked for at all
    # Together exactly what the user asked for: 2 workers of 1 CPU fit a 2-CPU machine.
    assert driver["cpu"] + 2 * worker["CPU"] <= 2.0 + 1e-12


@pytest.mark.parametrize("workers", [2, 3, 4, 7])
@pytest.mark.parametrize("cpu", [0.5, 1, 4])
def test_driver_and_workers_never_hold_more_than_asked(workers, cpu):
    driver, worker = ddp_trial_resources(workers, {"CPU": cpu})
    total = driver["cpu"] + workers * worker["CPU"]
    assert total <= workers * cpu + 1e-9
    assert total >= workers * cpu - workers * 1e-4 - 1e-9  # rounded down to Ray's four decimals, no more
    assert round(worker["CPU"], 4) == pytest.approx(worker["CPU"])


def test_gpu_workers_keep_their_gpus_and_cpu_free_workers_stay_free():
    driver, worker = ddp_trial_resources(2, {"CPU": 0, "GPU": 1})
    assert driver == {"cpu": DRIVER_CPU_SLIVER} and worker == {"GPU": 1.0}


def test_zero_workers_is_refused():
    with pytest.raises(DDPConfigError, match="workers: must be >= 1, got 0"):
        ddp_trial_resources(0, {"CPU": 1})


# ---------------------------------------------------------------------------------------------------------
# Stage scheduling


def test_three_two_worker_retrains_on_two_cpus_run_one_at_a_time():
    spec = spec_with(workers=2)
    scheduling = stage_scheduling(spec, spec.stages[0], {"CPU": 2.0})
    assert scheduling.concurrency == 1  # three drivers at once would hold CPUs their workers wait for
    assert scheduling.per_trial == {"cpu": DRIVER_CPU_SLIVER, "gpu": 0.0}
    assert scheduling.ddp == {"workers": 2, "resources_per_worker": {"CPU": 1.0, "GPU": 0.0}, "retries": 2,
                              "sync_batchnorm": True}
    assert "DDP over 2 workers" in scheduling.note and "WARNING" not in scheduling.note


def test_concurrency_counts_workers_on_a_bigger_cluster():
    spec = spec_with(workers=2, resources_per_worker={"cpu": 2, "gpu": 1}, worker_retries=5)
    scheduling = stage_scheduling(spec, spec.stages[0], {"CPU": 16.0, "GPU": 4.0})
    assert scheduling.concurrency == 2  # the GPUs bind: 4 GPUs / (2 workers x 1 GPU)
    assert scheduling.ddp["retries"] == 5


def test_a_trial_bigger_than_the_cluster_is_warned_about():
    spec = spec_with(workers=4)
    scheduling = stage_scheduling(spec, spec.stages[0], {"CPU": 2.0})
    assert scheduling.concurrency == 1 and "WARNING: stage 'retrain': one trial needs 4 CPUs" in scheduling.note
    # the local Ray instance cannot grow: refused at once instead of waiting for nodes that never come
    with pytest.raises(UnschedulableError, match="one trial needs 4 CPUs and 0 GPUs, the cluster has 2 and 0"):
        stage_scheduling(spec, spec.stages[0], {"CPU": 2.0}, fixed=True)


def test_one_worker_trains_in_the_trial_process_with_the_spec_resources():
    spec = spec_with()
    scheduling = stage_scheduling(spec, spec.stages[0], {"CPU": 2.0})
    assert scheduling.ddp is None and scheduling.per_trial == {"cpu": 1.0, "gpu": 0.0}
    assert scheduling.concurrency == 2


# ---------------------------------------------------------------------------------------------------------
# Spec rules


def test_the_global_batch_must_split_over_the_workers():
    with pytest.raises(SpecError) as err:
        spec_with(workers=3, overrides={"data": {"batch_size": 64}})
    assert problems(err) == [("stages[0].workers", "data.batch_size is the global batch and must split evenly "
                              "over the 3 workers (a multiple of 3)", "data.batch_size 64 over workers 3")]  # fmt: skip


def test_a_swept_batch_size_is_checked_point_by_point():
    with pytest.raises(SpecError) as err:
        spec_with(workers=2, sweep={"data.batch_size": [32, 33]})
    [(where, rule, value)] = problems(err)
    assert where == "stages[0].sweep.data.batch_size" and value == "data.batch_size 33 over workers 2"


@pytest.mark.parametrize("field, value, rule", [
    ("workers", 0, "greater than or equal to 1"),
    ("worker_retries", -1, "greater than or equal to 0"),
    ("resources_per_worker", {"cpu": 0, "gpu": 0}, "must hold some CPU or GPU"),
])  # fmt: skip
def test_bad_worker_settings_name_the_field(field, value, rule):
    with pytest.raises(SpecError) as err:
        spec_with(**{field: value})
    assert any(where.startswith(f"stages[0].{field}") and rule in text for where, text, _ in problems(err))


# ---------------------------------------------------------------------------------------------------------
# Divergence in step: every worker raises at the same step, none is left waiting in an all-reduce


class _OtherWorkerNaN:
    """An ``all_reduce_sum`` over this worker and one whose loss is NaN.

    What the other worker contributes: its NaN loss to a training step's agreement (a 1-element
    reduction), and one non-finite batch to an evaluation's sums (loss*n, top1, top5, n, non-finite).
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if tensor.numel() == 1:
            return tensor + math.nan
        return tensor + torch.tensor([0, 0, 0, 0, 1], dtype=tensor.dtype)


def _tiny_model_and_batches() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    return model, batches


def test_training_stops_when_another_worker_diverged():
    model, batches = _tiny_model_and_batches()
    other = _OtherWorkerNaN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DivergedError, match=r"training loss is nan at epoch 4, step 0"):
        train_one_epoch(model, batches, optimizer, device=torch.device("cpu"), epoch=4,
                        hooks=Hooks(all_reduce_sum=other))  # fmt: skip
    assert other.calls == 1  # agreed before the first backward: no gradient all-reduce was entered


def test_evaluation_raises_on_every_worker_after_the_reduction():
    model, batches = _tiny_model_and_batches()
    with pytest.raises(DivergedError, match=r"evaluation loss is nan at epoch 2, step -1"):
        evaluate(model, batches, device=torch.device("cpu"), epoch=2, hooks=Hooks(all_reduce_sum=_OtherWorkerNaN()))


def test_one_process_needs_no_agreement():
    model, batches = _tiny_model_and_batches()
    stats = train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1),
                            device=torch.device("cpu"), epoch=1)  # fmt: skip
    assert stats.samples == 6 and math.isfinite(stats.loss)


# ---------------------------------------------------------------------------------------------------------
# Trial identity: synchronized batch norm trains as one process would, per-worker batch norm does not


def _ids(spec: Any) -> list[str]:
    from nas_service.planner import plan

    return [t.trial_id for t in plan(spec).trials]


def test_workers_with_synchronized_batchnorm_keep_the_trial_ids():
    # A trial may resume with another worker count: its results do not depend on it.
    assert _ids(spec_with()) == _ids(spec_with(workers=2)) == _ids(spec_with(workers=4))


def test_per_worker_batchnorm_makes_the_worker_count_part_of_the_identity():
    from nas_service.planner import plan

    local2, local4 = spec_with(workers=2, sync_batchnorm=False), spec_with(workers=4, sync_batchnorm=False)
    assert len({*_ids(local2), *_ids(local4), *_ids(spec_with(workers=2))}) == 9
    trial = plan(local2).trials[0]
    assert trial.arm.label.endswith("2 workers, local BN")
    scheduling = stage_scheduling(local2, local2.stages[0], {"CPU": 2.0})
    assert scheduling.ddp["sync_batchnorm"] is False
