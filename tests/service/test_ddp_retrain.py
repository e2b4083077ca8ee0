"""DDP retraining on Ray Train (nas_service.ray_runtime.train).

The fast tests need no Ray: global-batch sharding, synchronized batch norm (two gloo processes), and a
finished run that is not started again. The Ray test starts one local Ray (2 CPUs, 127.0.0.1, its own HOME
and temp folder) and runs one Ray Train fit (~35-45 s on 2 cores): DDP against single-process training.
A lost worker is tested through the service (test_ray_experiments.py), a lost node on a local cluster
(tests/cluster/test_jobs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nas_service.ray_runtime.train import run_ddp_retrain
from search_spaces.networks import drop_path
from trainers.distributed import (
    DDPConfigError,
    DistributedBatchNorm,
    convert_sync_batchnorm,
    per_worker_batch_size,
    shard_loader,
)
from tests.helpers import ROOT, free_port
from trainers.config import with_overrides
from trainers.data import make_loader
from trainers.engine import Hooks
from trainers.recipes import get_recipe
from trainers.retrain import run_retrain


class _Indices(Dataset):
    """Item i is (a tensor holding i, i): batches show which images they hold."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(i)]), i


def _batches(loader: DataLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


def tiny_retrain(**overrides):
    """digits_retrain, tiny: 3 epochs of 4 steps, C=4, 3 layers, no drop path, no augmentation (digits' default)."""
    base = {"epochs": 3, "max_steps_per_epoch": 4, "init_channels": 4, "layers": 3, "mid_channels": 4,
            "drop_path_prob": 0.0}  # fmt: skip
    config = with_overrides(get_recipe("digits_retrain"), {**base, **overrides})
    assert config.data.cutout == 0 and not config.data.autoaugment and config.data.batch_size == 32
    return config


# ---------------------------------------------------------------------------------------------------------
# Sharding the global batch


@pytest.mark.parametrize("world", [pytest.param(2, id="2-workers"), pytest.param(3, id="3-workers")])
def test_training_shards_are_the_single_process_global_batches(world):
    def loader() -> DataLoader:
        return make_loader(_Indices(50), batch_size=12, shuffle=True, seed=3, epoch=2)

    single = _batches(loader())
    shards = [_batches(shard_loader(loader(), rank=r, world_size=world)) for r in range(world)]
    steps = {len(s) for s in shards}
    assert len(steps) == 1, f"workers must step together, got {[len(s) for s in shards]} steps"
    # The last global batch holds 50 % 12 = 2 images: split over 2 workers, dropped for 3.
    assert steps.pop() == (5 if world == 2 else 4)
    for k in range(len(shards[0])):
        union = sorted(i for s in shards for i in s[k])
        assert union == sorted(single[k]), f"step {k}: the workers' slices are not the global batch"
        assert sum(len(s[k]) for s in shards) == len(single[k])


def test_drop_path_masks_a_workers_slice_as_the_single_process_run_masks_those_images():
    def loader() -> DataLoader:  # 23 images in batches of 8: the last batch of 7 splits 3 + 4
        return make_loader(_Indices(23), batch_size=8, shuffle=True, seed=1, epoch=0)

    def masks(batches) -> tuple[list[dict[int, float]], torch.Tensor]:
        torch.manual_seed(0)
        steps = []
        for _, images in batches:  # two drop paths per step, as two cells would draw
            ones = torch.ones(len(images), 2, 1, 1)
            kept = drop_path(ones, 0.5)[:, 0, 0, 0] + 10 * drop_path(ones, 0.5)[:, 0, 0, 0]
            steps.append(dict(zip(images.tolist(), kept.tolist())))
        return steps, torch.get_rng_state()

    single, single_rng = masks(loader())
    for rank in range(2):
        sharded, rng = masks(shard_loader(loader(), rank=rank, world_size=2))
        assert len(sharded) == len(single)
        for step, (mine, theirs) in enumerate(zip(sharded, single)):
            assert mine and all(theirs[i] == v for i, v in mine.items()), f"rank {rank}, step {step}"
        assert torch.equal(rng, single_rng), "every worker's torch stream stays the single-process one"


def test_evaluation_shards_cover_every_image_once():
    loader = make_loader(_Indices(15), batch_size=7, shuffle=False, seed=0, epoch=0)  # last batch: 1 image
    seen = [i for r in range(3) for i in sum(_batches(shard_loader(loader, rank=r, world_size=3)), [])]
    assert sorted(seen) == list(range(15))


def test_the_global_batch_must_split_evenly_over_the_workers():
    assert per_worker_batch_size(32, 2) == 16
    with pytest.raises(DDPConfigError, match=r"32 images over 3 workers"):
        per_worker_batch_size(32, 3)
    with pytest.raises(DDPConfigError, match="workers: must be >= 1"):
        per_worker_batch_size(32, 0)


def test_run_ddp_retrain_refuses_an_uneven_split_before_starting_anything(tmp_path):
    with pytest.raises(DDPConfigError, match="divisible by workers"):
        run_ddp_retrain(tiny_retrain(), workdir=tmp_path, workers=3, run_name="x", storage_path=str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------------------
# Synchronized batch norm on CPU

_BN_WORKER = """
import json, os, sys, torch, torch.distributed as dist
from trainers.distributed import DistributedBatchNorm
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)
x, g = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
bn = DistributedBatchNorm(3)
with torch.no_grad():
    bn.weight.uniform_(0.5, 1.5); bn.bias.uniform_(-0.5, 0.5)
part = x[rank * 4:(rank + 1) * 4].clone().requires_grad_()
y = bn(part)
(y * g[rank * 4:(rank + 1) * 4]).sum().backward()
with open(out, "w") as f:
    json.dump({"y": y.tolist(), "dx": part.grad.tolist(), "dw": bn.weight.grad.tolist(), "db": bn.bias.grad.tolist(),
               "mean": bn.running_mean.tolist(), "var": bn.running_var.tolist()}, f)
dist.barrier()
dist.destroy_process_group()
# torch 2.14's gloo sometimes aborts in interpreter teardown after all of the above has finished ("terminate
# called without an active exception", about 1 run in 5 on 2 cores): the results are written, so skip teardown.
os._exit(0)
"""


@pytest.mark.slow
def test_distributed_batchnorm_on_two_gloo_workers_is_batchnorm_of_the_global_batch(tmp_path):
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _BN_WORKER, str(r), port, str(tmp_path / f"{r}.json")],
                              env=env, stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    parts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]

    torch.manual_seed(0)
    x, g = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x.requires_grad_()
    y = bn(x)
    (y * g).sum().backward()
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(parts[0]["y"] + parts[1]["y"]), y.detach(), **close)
    torch.testing.assert_close(torch.tensor(parts[0]["dx"] + parts[1]["dx"]), x.grad, **close)
    # DDP sums (then averages) the workers' parameter gradients: their sum is the global batch's gradient.
    torch.testing.assert_close(torch.tensor(parts[0]["dw"]) + torch.tensor(parts[1]["dw"]), bn.weight.grad, **close)
    torch.testing.assert_close(torch.tensor(parts[0]["db"]) + torch.tensor(parts[1]["db"]), bn.bias.grad, **close)
    for part in parts:
        torch.testing.assert_close(torch.tensor(part["mean"]), bn.running_mean, **close)
        torch.testing.assert_close(torch.tensor(part["var"]), bn.running_var, **close)


def test_convert_sync_batchnorm_keeps_parameters_and_state_dict_keys():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4, affine=False)))
    params = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    converted = convert_sync_batchnorm(model, device=torch.device("cpu"))
    assert converted is model
    assert isinstance(model[1], DistributedBatchNorm) and isinstance(model[2][0], DistributedBatchNorm)
    assert {id(p) for p in model.parameters()} == params, "the optimizer would train stale parameters"
    assert set(model.state_dict()) == keys
    out = model(torch.randn(2, 1, 6, 6))  # no process group: plain batch norm
    assert out.shape == (2, 4, 4, 4)


# ---------------------------------------------------------------------------------------------------------
# Ray Train


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray for the module: 2 CPUs, listeners on 127.0.0.1, its own HOME (token file) and temp dir."""
    home = tmp_path_factory.mktemp("home")
    temp_dir = f"/tmp/nasddp{os.getpid() % 100000}"
    settings = {"HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "RAY_DEDUP_LOGS": "0", "RAY_TMPDIR": temp_dir}  # fmt: skip
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)  # before importing ray: it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:  # ray was imported earlier in this session: bind to 127.0.0.1 anyway
        ray_constants.ENABLE_RAY_CLUSTER = False
    if ray.is_initialized():
        pytest.skip("a Ray instance is already connected in this process")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_on_two_cpu_workers_matches_single_process_training(ray_session, tmp_path):
    config = tiny_retrain(drop_path_prob=0.3)  # drop path too: each worker masks its slice as one process does
    single: list[tuple[int, int, float]] = []
    reference = run_retrain(config, workdir=tmp_path / "single", device="cpu",
                            hooks=Hooks(step_end=lambda e, s, loss, n: single.append((e, s, loss))))  # fmt: skip

    log = tmp_path / "steps.jsonl"
    reported: list[dict] = []
    started = time.perf_counter()
    summary = run_ddp_retrain(config, workdir=tmp_path / "ddp", workers=2, run_name="ddp-equal",
                              storage_path=str(tmp_path / "storage"), resources_per_worker={"CPU": 1},
                              retries=0, report=lambda m, c: reported.append(m), step_loss_log=log)  # fmt: skip
    print(f"2-worker fit: {time.perf_counter() - started:.1f} s")
    ddp = [(r["epoch"], r["step"], r["loss"]) for r in map(json.loads, log.read_text().splitlines())]

    assert len(single) == config.epochs * config.max_steps_per_epoch
    assert [(e, s) for e, s, _ in ddp] == [(e, s) for e, s, _ in single]
    worst = max(abs(a[2] - b[2]) for a, b in zip(ddp, single))
    assert worst < 1e-4, f"per-step losses differ by up to {worst:.2e}: {list(zip(ddp, single))}"
    # Epoch metrics agree too: sharded evaluation counts every image exactly once (a float-level difference
    # may flip at most an argmax or two).
    for mine, theirs in zip(summary.history, reference.history):
        assert mine["epoch"] == theirs["epoch"]
        assert mine["valid_top1"] == pytest.approx(theirs["valid_top1"], abs=2.5 / 359)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-4)
    assert [m["epoch"] for m in reported] == [1, 2, 3]
    assert summary.ddp["starts"] == [0] and summary.epochs_run == 3 and summary.finished
    assert (tmp_path / "ddp" / "best.pt").exists() and (tmp_path / "ddp" / "checkpoints" / "epoch_0003.pt").exists()


def test_a_finished_run_is_not_started_again(tmp_path):
    """A workdir that holds the final checkpoint of the same config is done: no Ray Train start (this test
    has no Ray at all), no epoch reported, the finished history returned. A lost worker's restart from its
    checkpoint is tested through the service (test_ray_experiments.py), a lost node on a local cluster."""
    config = tiny_retrain(epochs=2)
    done = run_retrain(config, workdir=tmp_path / "work", device="cpu", hooks=Hooks())
    reported: list[dict] = []
    again = run_ddp_retrain(config, workdir=tmp_path / "work", workers=2, run_name="ddp-done",
                            storage_path=str(tmp_path / "storage"), report=lambda m, c: reported.append(m))  # fmt: skip
    assert again.ddp["starts"] == [] and reported == []
    assert again.history == done.history and not (tmp_path / "storage").exists()
    # Another config (here: one more epoch) is not the finished run.
    from nas_service.ray_runtime.train import _finished_summary

    assert _finished_summary(tiny_retrain(epochs=3), tmp_path / "work") is None
    # Where the data lives does not change what was computed: the same rule as resuming (same_computation).
    moved = tiny_retrain(epochs=2, data={"root": str(tmp_path / "elsewhere")})
    assert _finished_summary(moved, tmp_path / "work").history == done.history
