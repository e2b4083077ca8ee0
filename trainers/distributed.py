"""Pure-torch pieces of data-parallel training: the per-worker share of a global batch, a loader sharded by
rank, batch norm synchronised over workers on CPU (gloo) or GPU, and the state each worker must resume with
besides the shared checkpoint. No Ray here: the Ray Train edge (``nas_service.ray_runtime.train``) plugs
these into the training loop's hooks, and they are tested in one process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from search_spaces.networks import batch_share

from .checkpoints import CheckpointError, capture_rng_state, load_checkpoint, save_checkpoint

__all__ = ["DDPConfigError", "per_worker_batch_size", "ShardedBatchSampler", "ShardedLoader", "shard_loader", "DistributedBatchNorm",
           "convert_sync_batchnorm", "collective_device", "capture_rank_state",
           "adopt_rank_state"]  # fmt: skip


class DDPConfigError(ValueError):
    """A DDP retraining request that cannot run as asked (names the rule and the value)."""


# ---------------------------------------------------------------------------------------------------------
# Sharding the global batch (no Ray: testable in one process)


def per_worker_batch_size(batch_size: int, workers: int) -> int:
    """The share of the global batch each worker trains on.

    Raises:
        DDPConfigError: ``workers`` < 1, or ``batch_size`` not divisible by ``workers`` (the workers would
            train on unequal shares and DDP's gradient average would no longer be the global batch's).
    """
    if workers < 1:
        raise DDPConfigError(f"workers: must be >= 1, got {workers}")
    if batch_size % workers:
        raise DDPConfigError(
            f"data.batch_size is the global batch and must be divisible by workers: {batch_size} images over "
            f"{workers} workers leaves {batch_size % workers} over; use a multiple of {workers}"
        )
    return batch_size // workers


class ShardedBatchSampler:
    """This worker's slice of every batch a batch sampler yields.

    Batch ``b`` of the wrapped sampler (a global batch) is cut into ``world_size`` contiguous slices as
    even as possible and worker ``rank`` gets slice ``rank``. A global batch smaller than ``world_size``
    would leave some workers empty: with ``equal_steps`` (training, where DDP needs every worker to step
    together) the batch is dropped on every worker; without it (evaluation) only the empty slices are skipped,
    so the workers together still see every image exactly once.
    """

    def __init__(self, batch_sampler: Any, *, rank: int, world_size: int, equal_steps: bool) -> None:
        if not 0 <= rank < world_size:
            raise DDPConfigError(f"rank: must be in [0, {world_size}), got {rank}")
        self.batch_sampler = batch_sampler
        self.rank, self.world_size, self.equal_steps = rank, world_size, equal_steps
        # (global batch size, first row of this worker's slice) of each slice yielded, in order: read by
        # ShardedLoader, which consumes the slices in the same order.
        self.shares: deque[tuple[int, int]] = deque()

    def _bounds(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        shares = self.shares  # this iteration's queue (ShardedLoader gives each iteration its own)
        for batch in self.batch_sampler:
            batch = list(batch)
            if len(batch) < self.world_size and self.equal_steps:
                continue
            start, stop = self._bounds(len(batch))
            if stop > start:
                shares.append((len(batch), start))
                yield batch[start:stop]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ShardedLoader(DataLoader):
    """A loader over a :class:`ShardedBatchSampler` that runs the work on each batch inside
    :func:`search_spaces.networks.batch_share`, so drop path masks this worker's slice as the
    single-process run masks those images (and every worker draws the same amount from its RNG)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        shares: deque[tuple[int, int]] = deque()
        self.batch_sampler.shares = shares
        for batch in super().__iter__():
            total, start = shares.popleft()
            with batch_share(total, start):
                yield batch


def shard_loader(loader: DataLoader, *, rank: int, world_size: int) -> DataLoader:
    """A loader over this worker's slices of ``loader``'s batches (see :class:`ShardedBatchSampler`).

    The new loader draws from ``loader``'s own generator, in the same order as iterating ``loader`` would,
    so the global batches are exactly the single-process ones for the same ``(seed, epoch)``. Shuffled
    loaders (a ``RandomSampler``: training) keep every worker at the same number of steps.
    """
    if world_size == 1:
        return loader
    sampler = ShardedBatchSampler(loader.batch_sampler, rank=rank, world_size=world_size,
                                  equal_steps=isinstance(loader.sampler, RandomSampler))  # fmt: skip
    return ShardedLoader(
        loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        generator=loader.generator, persistent_workers=loader.persistent_workers,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Synchronized batch norm on any device


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group, differentiable: the gradient of a sum is the summed gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, on CPU (gloo) as on GPU.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors ("expected input tensor to be on GPU"); this module sums
    per-channel moments with a differentiable all-reduce (two passes:
    the mean, then the centred squares, as numerically stable as one process's batch norm). Gradients flow
    through the reduction, so the DDP gradient is the single-process gradient of the global batch. Without
    an initialized process group of two or more, and in eval mode, it is plain batch norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: Any = None) -> None:  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"DistributedBatchNorm: expected at least 2-D input, got {input.dim()}-D")

    def _world(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self._world() < 2:
            return super().forward(input)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() // input.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([input.sum(dims), count]), group)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), group) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                total = float(n)
                unbiased = var.detach() * (total / max(total - 1.0, 1.0))
                self.running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)
        return out


def convert_sync_batchnorm(module: nn.Module, *, device: torch.device) -> nn.Module:
    """Makes every batch norm of ``module`` synchronized across the DDP workers (in place where possible).

    CUDA uses ``torch.nn.SyncBatchNorm``; other devices :class:`DistributedBatchNorm`. Parameters and buffers
    are shared with the old layers, so optimizers built on ``module.parameters()`` stay valid and the state
    dict keeps its keys (a checkpoint loads into the plain network).

    Returns:
        ``module`` itself, or a new layer when ``module`` is a batch norm.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistributedBatchNorm):
        new = DistributedBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)  # fmt: skip
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        replaced = convert_sync_batchnorm(child, device=device)
        if replaced is not child:
            module.add_module(name, replaced)
    return module


# ---------------------------------------------------------------------------------------------------------
# The per-worker loop (runs in Ray Train workers)


def collective_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# What each worker resumes with besides rank 0's checkpoint
#
# Rank 0 writes the epoch checkpoint, so it holds rank 0's RNG states and batch-norm buffers. Parameters
# and optimizer state are the same on every rank (DDP averages the gradients), but these two are not:
# - RNG: every rank seeds torch alike and draws the same amounts (drop path draws the global batch's masks,
#   see ShardedLoader), so the torch streams stay equal today; numpy's and Python's were never shared, and a
#   future draw per slice (e.g. dropout) would set the ranks' torch streams apart. Each rank keeps its own.
# - buffers: without synchronized batch norm each rank's running statistics follow its own slices (DDP
#   broadcasts rank 0's before each training forward, so today they only feed that rank's evaluation; kept
#   so that a rank's state is whole whatever the wrapper does).
# A worker that resumed with rank 0's states would train on other drop-path masks than it would have.


def capture_rank_state(model: nn.Module) -> dict[str, Any]:
    """This worker's own resumable state: its RNG states and the buffers of the unwrapped ``model``.

    Take it where the loop captures rank 0's RNG for the checkpoint (after the epoch, before any draw of
    the next). Weights-only safe (see :func:`trainers.checkpoints.capture_rng_state`); buffers are copied to
    the CPU, keyed as in ``model.state_dict()``.
    """
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    buffers = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in params}
    return {"rng": capture_rng_state(), "buffers": buffers}


def adopt_rank_state(checkpoint: str | Path, state: Mapping[str, Any]) -> None:
    """Rewrites this worker's private copy of an epoch checkpoint with its own RNG states and buffers.

    The loop then resumes from the file as it always does, and this rank continues exactly where it was.
    Parameters, optimizer state and history stay rank 0's (the same on every rank).

    Args:
        checkpoint: this worker's copy of the epoch file (never a shared one).
        state: what :func:`capture_rank_state` returned on this rank at the end of that epoch.

    Raises:
        CheckpointError: ``state`` names a buffer the checkpoint's model does not have.
    """
    saved = load_checkpoint(checkpoint)
    unknown = sorted(set(state["buffers"]) - set(saved["model"]))
    if unknown:
        raise CheckpointError(f"{checkpoint}: rank state has buffers the model does not: {unknown[:5]}")
    saved["model"].update(state["buffers"])
    saved["rng"] = state["rng"]
    save_checkpoint(checkpoint, saved)
