"""The one training step and the one evaluation shared by cell search, DHGS and retraining.

The loops never import Ray. They talk to whatever runs them through :class:`Hooks`: report metrics,
wrap the model (DDP) and loaders (sharding), sum metrics across workers, write files from one worker only,
and ask whether to stop. The defaults run everything in a plain single process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .precision import Precision, autocast_of

__all__ = [
    "DivergedError",
    "Hooks",
    "EpochStats",
    "train_one_epoch",
    "evaluate",
    "resolve_device",
    "memory_format_for",
    "to_device",
    "apply_memory_format",
]


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: a deterministic failure that must not be retried.

    Attributes:
        epoch, step: where it happened (epoch counted from 1, step from 0).
    """

    def __init__(self, *, epoch: int, step: int, loss: float, where: str = "training") -> None:
        self.epoch, self.step, self.loss, self.where = epoch, step, loss, where
        super().__init__(f"diverged: {where} loss is {loss} at epoch {epoch}, step {step} (not retried)")


def _identity(x: Any) -> Any:
    return x


@dataclass
class Hooks:
    """How a training loop talks to its runner. Every field has a single-process default.

    Attributes:
        report: called once per finished epoch with the metrics and the checkpoint file just written
            (or None), after the checkpoint is safely on disk.
        wrap_model: e.g. DDP; the loop trains the wrapped model and saves the unwrapped one.
        wrap_loader: e.g. a DistributedSampler shard of the loader.
        all_reduce_sum: sums a tensor across workers (identity in one process).
        is_writer: whether this worker writes checkpoints and files (rank 0 only in DDP).
        should_stop: polled between epochs; True ends the loop cleanly after the current checkpoint.
        log: a line of progress (per epoch); defaults to silence.
        step_end: called as ``step_end(epoch, step, loss, n)`` after every weight step with this worker's
            loss and batch size (e.g. to record per-step losses, or to combine them across DDP workers).
    """

    report: Callable[[dict[str, Any], Path | None], None] = lambda metrics, checkpoint: None
    wrap_model: Callable[[nn.Module], nn.Module] = _identity
    wrap_loader: Callable[[Any], Any] = _identity
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = _identity
    is_writer: bool = True
    should_stop: Callable[[], bool] = lambda: False
    log: Callable[[str], None] = lambda line: None
    step_end: Callable[[int, int, float, int], None] = lambda epoch, step, loss, n: None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochStats:
    """Loss and accuracy of one pass, summed across workers."""

    loss: float
    top1: float
    top5: float
    samples: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def memory_format_for(setting: str, device: torch.device) -> torch.memory_format:
    """``auto`` is channels-last (measured faster for the supernet on CPU and GPU, see benchmarks/)."""
    if setting == "contiguous":
        return torch.contiguous_format
    return torch.channels_last


def apply_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Converts the 4-D weights (convolutions) to ``memory_format``; other tensors stay as they are.

    ``Module.to(memory_format=...)`` refuses models holding parameters of other ranks, such as the
    HyperCuboid's 5-D architecture tensor.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=memory_format)
    return model


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, memory_format: torch.memory_format):
    x, y = batch
    x = x.to(device, non_blocking=True)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x, y.to(device, non_blocking=True)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target.unsqueeze(1))
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def _split_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final networks return ``(logits, logits_aux)``; supernets return logits."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output, None


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    criterion: nn.Module | None = None,
    grad_clip: float | None = None,
    clip_parameters: list[nn.Parameter] | None = None,
    aux_weight: float = 0.0,
    before_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    max_steps: int | None = None,
    hooks: Hooks | None = None,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """One pass of weight updates; the step every loop of the project uses.

    Args:
        model: in training mode during the pass (DDP-wrapped or not).
        batches: ``(x, y)`` pairs.
        optimizer: updates the weights (never the architecture weights).
        epoch: counted from 1, for error messages.
        grad_clip: max gradient norm over ``clip_parameters`` (default: the optimizer's parameters).
        aux_weight: weight of the auxiliary head's loss when the model returns ``(logits, aux)``.
        before_step: called as ``before_step(step, x, y)`` before each weight step; the bilevel search
            uses it for the architecture update on a validation batch.
        max_steps: stop after this many steps (tests and smoke runs).
        precision: the forward pass runs under its autocast (None: fp32); the loss is computed in fp32.
        scaler: the loss scaler of fp16 (:meth:`Precision.grad_scaler`), None otherwise.

    Raises:
        DivergedError: on a NaN or infinite loss, naming the epoch and step.
    """
    hooks = hooks or Hooks()
    criterion = criterion or nn.CrossEntropyLoss()
    params = clip_parameters or [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, top1, top5, n
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x, y = to_device(batch, device, memory_format)
        if before_step is not None:
            before_step(step, x, y)
        optimizer.zero_grad(set_to_none=True)
        with autocast_of(precision):
            logits, aux = _split_output(model(x))
        loss = criterion(logits.float(), y)
        if aux is not None and aux_weight > 0:
            loss = loss + aux_weight * criterion(aux.float(), y)
        loss_value = float(loss.detach())
        worst = _worst_loss(loss_value, hooks)
        if not math.isfinite(worst):
            raise DivergedError(epoch=epoch, step=step, loss=worst)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        with torch.no_grad():
            top1, top5 = _topk_correct(logits.detach().float(), y, (1, 5))
            n = y.shape[0]
            sums += torch.tensor([loss_value * n, float(top1), float(top5), n], dtype=torch.float64)
        hooks.step_end(epoch, step, loss_value, n)
    sums = hooks.all_reduce_sum(sums)
    return _stats(sums, time.perf_counter() - start)


def _worst_loss(loss_value: float, hooks: Hooks) -> float:
    """This step's loss if it is finite on every worker, else a non-finite one.

    Under DDP every worker must stop at the same step: one that raised alone would leave the others
    waiting in the gradient all-reduce. One process needs no exchange.
    """
    if hooks.all_reduce_sum is _identity:
        return loss_value
    total = float(hooks.all_reduce_sum(torch.tensor([loss_value], dtype=torch.float64))[0])
    return loss_value if math.isfinite(total) or not math.isfinite(loss_value) else total


def _stats(sums: torch.Tensor, seconds: float) -> EpochStats:
    n = max(float(sums[3]), 1.0)
    return EpochStats(
        loss=float(sums[0]) / n, top1=float(sums[1]) / n, top5=float(sums[2]) / n,
        samples=int(sums[3]), seconds=seconds,
    )  # fmt: skip


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    criterion: nn.Module | None = None,
    max_steps: int | None = None,
    hooks: Hooks | None = None,
    epoch: int = 0,
    precision: Precision | None = None,
) -> EpochStats:
    """Loss, top-1 and top-5 accuracy of ``model`` in eval mode (summed across workers); the forward pass
    runs under ``precision``'s autocast, the loss in fp32."""
    hooks = hooks or Hooks()
    criterion = criterion or nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # loss*n, top1, top5, n, non-finite batches
    first_bad: tuple[int, float] | None = None
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        x, y = to_device(batch, device, memory_format)
        with autocast_of(precision):
            logits, _ = _split_output(model(x))
        loss = float(criterion(logits.float(), y))
        if not math.isfinite(loss):
            # Raised after the all-reduce below, so that every DDP worker raises, none waits.
            first_bad = first_bad or (step, loss)
            sums[4] += 1
            break
        top1, top5 = _topk_correct(logits.float(), y, (1, 5))
        n = y.shape[0]
        sums += torch.tensor([loss * n, float(top1), float(top5), n, 0], dtype=torch.float64)
    model.train(was_training)
    sums = hooks.all_reduce_sum(sums)
    if sums[4] > 0:
        step, loss = first_bad or (-1, math.nan)  # -1: the non-finite batch was another worker's
        raise DivergedError(epoch=epoch, step=step, loss=loss, where="evaluation")
    return _stats(sums, time.perf_counter() - start)
