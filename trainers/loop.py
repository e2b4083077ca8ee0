"""The epoch loop every run shares: resume from the last checkpoint, set the epoch's learning rate,
run one epoch, write the checkpoint atomically, then report. Search, DHGS and retraining plug in their
epoch body; none of them copies this bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import (
    capture_rng_state,
    latest_intact_checkpoint,
    load_checkpoint,
    restore_rng_state,
    write_epoch_checkpoint,
)
from .config import TrainConfig, config_to_dict
from .identity import same_computation
from .engine import Hooks
from .schedules import ScheduleSpec

__all__ = ["ResumeMismatchError", "run_epochs", "schedule_values", "set_lr"]


class ResumeMismatchError(ValueError):
    """The checkpoint in the run folder was written by a different configuration."""


def schedule_values(config: TrainConfig) -> list[float]:
    """One learning rate per epoch (epoch 1 first) from the config's schedule."""
    spec = ScheduleSpec.from_dict(config_to_dict(config.schedule))
    return [float(v) for v in spec.values(config.epochs)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def run_epochs(
    *,
    config: TrainConfig,
    workdir: str | Path,
    spec: dict[str, Any],
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    lr_optimizer: str,
    epoch_body: Callable[[int, float], dict[str, Any]],
    hooks: Hooks,
    on_epoch_end: Callable[[int, dict[str, Any], list[dict[str, Any]]], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> list[dict[str, Any]]:
    """Runs epochs ``last finished + 1 .. config.epochs`` and returns the whole per-epoch history.

    Args:
        spec: what the model is (JSON-able), saved in every checkpoint so the model can be rebuilt.
        model: the unwrapped model (its ``state_dict`` includes architecture weights).
        optimizers: saved and restored by name.
        lr_optimizer: which optimizer the schedule drives.
        epoch_body: ``(epoch, lr) -> metrics`` for one epoch.
        on_epoch_end: called with (epoch, metrics, history) before the checkpoint is written, e.g. to
            save the best weights.
        scaler: fp16's loss scaler: saved and restored with the optimizers, so a resume scales as before.

    Raises:
        ResumeMismatchError: the run folder holds checkpoints of a different configuration.
    """
    checkpoint_dir = Path(workdir) / "checkpoints"
    config_dict = config_to_dict(config)
    history: list[dict[str, Any]] = []
    start = 0
    # A damaged newest file (checksum mismatch, truncation) is set aside with a warning naming both files.
    latest = latest_intact_checkpoint(checkpoint_dir, log=hooks.log)
    if latest is not None:
        state = load_checkpoint(latest)
        if not same_computation(state["config"], config_dict):
            raise ResumeMismatchError(
                f"{latest} was written by a different configuration; use a new run folder or the same config"
            )
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        history = json.loads(state["history"])
        start = int(state["epoch"])
        hooks.log(f"resumed from {latest} at epoch {start}/{config.epochs}")

    lrs = schedule_values(config)
    for epoch in range(start + 1, config.epochs + 1):
        lr = lrs[epoch - 1]
        set_lr(optimizers[lr_optimizer], lr)
        metrics = {"epoch": epoch, "lr": lr, **epoch_body(epoch, lr)}
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, history)
        path = None
        if hooks.is_writer:
            path = write_epoch_checkpoint(
                checkpoint_dir,
                epoch,
                {
                    "kind": config.kind,
                    "spec": spec,
                    "config": config_dict,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                    "schedule": {"kind": config.schedule.kind, "values": lrs},
                    "rng": capture_rng_state(),
                    # JSON text: weights-only loading accepts it, and it keeps genotype dicts intact.
                    "history": json.dumps(history),
                },
            )
        hooks.report(metrics, path)
        if hooks.should_stop():
            break
    return history
