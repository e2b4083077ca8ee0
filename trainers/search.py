"""Differentiable searches: cell search (DARTS family) and DHGS over the HyperCuboid (spec 3, 7, 8).

Both are the same bilevel loop: for every training batch, one architecture step (Adam) on a batch of
the architecture half of the training data, then one weight step (SGD, clipped) on the training batch,
through :func:`trainers.engine.train_one_epoch`. What differs is the supernet and how its architecture
is read out each epoch (a genotype, or a HyperCuboid path).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces import hypercuboid, paths
from search_spaces.supernet import SearchNetwork, build_search_network

from .architect import Architect
from .config import CellSearchConfig, HyperCuboidSearchConfig, config_to_dict
from .data import DataSplits, cycle_batches, load_data, make_loader
from .engine import Hooks, apply_memory_format, evaluate, memory_format_for, resolve_device, to_device, train_one_epoch
from .loop import run_epochs
from .precision import resolve_precision
from .metrics import normalized_entropy, op_count, parameter_free_share
from .summary import CellSearchSummary, HyperCuboidSearchSummary

__all__ = ["run_cell_search", "run_hypercuboid_search", "describe_cell_search", "describe_hypercuboid"]


def describe_cell_search(model: SearchNetwork) -> dict[str, Any]:
    """The per-epoch readout of a cell search: both parses and the collapse signals."""
    genotype = model.genotype()
    no_hack = model.genotype(skip_primitive=None)
    weights = model.arch_weights()
    return {
        "genotype": genotype.to_dict(),
        "genotype_no_hack": no_hack.to_dict(),
        "arch_entropy_normal": normalized_entropy(weights["normal"]),
        "arch_entropy_reduce": normalized_entropy(weights["reduce"]),
        "param_free_share": parameter_free_share(genotype),
        "param_free_share_no_hack": parameter_free_share(no_hack),
        "none_count_normal_no_hack": op_count(no_hack, "none", "normal"),
        # The softmaxed architecture weights (edges x ops per cell): the report's heatmaps.
        "arch_weights": {"ops": list(model.primitives),
                         **{cell: _rounded(w) for cell, w in weights.items()}},
    }


def _rounded(weights: torch.Tensor) -> list[Any]:
    """Nested lists of 4-decimal floats: a heatmap needs no more, and the epoch row stays small."""
    return torch.round(weights.detach().float().cpu(), decimals=4).tolist()


def describe_hypercuboid(model: hypercuboid.HyperCuboidSupernet) -> dict[str, Any]:
    """The per-epoch readout of DHGS: the max-weight path, its weight, greedy paths and group entropies."""
    weights = model.arch_weights().detach()
    channels = model.channels
    head = model.head_channels
    path = paths.extract_path(weights, channels, head_channels=head)
    entropies = hypercuboid.entropy_per_group(weights)
    return {
        "path": path.to_dict(),
        "path_weight": float(paths.path_weight(weights, path, channels)),
        "path_greedy_top_down": paths.greedy_path(weights, channels, direction="top_down", head_channels=head).to_dict(),
        "path_greedy_bottom_up": paths.greedy_path(weights, channels, direction="bottom_up", head_channels=head).to_dict(),
        "arch_entropy_groups_nats": [[float(v) for v in row] for row in entropies],
        "arch_entropy_mean_nats": float(entropies.mean()),
        # The same, as a share of its maximum (each group's uniform entropy, ln of its size): 1.0 is uniform.
        "arch_entropy_normalized": float(entropies.mean()) / math.log(weights[0, 0].numel()),
        # [stride, layer, C_in, C_out, op], each [stride, layer] group summing to 1: the path-weight heatmaps.
        "arch_weights": {"ops": list(paths.HYPERCUBOID_OPS), "channels": list(channels),
                         "weights": _rounded(weights)},
    }


@dataclass
class _Subject:
    model: nn.Module
    spec: dict[str, Any]
    describe: Any


def _bilevel_search(
    config: CellSearchConfig | HyperCuboidSearchConfig,
    subject_factory: Any,
    *,
    workdir: str | Path,
    device: str | torch.device | None,
    hooks: Hooks | None,
) -> CellSearchSummary | HyperCuboidSearchSummary:
    hooks = hooks or Hooks()
    device = resolve_device(device)
    memory_format = memory_format_for(config.memory_format, device)
    precision = resolve_precision(config.precision, device)
    scaler = precision.grad_scaler()
    torch.manual_seed(config.seed)
    splits: DataSplits = load_data(config.data, purpose="search")
    subject: _Subject = subject_factory(splits)
    model = apply_memory_format(subject.model.to(device), memory_format)
    weight_optimizer = torch.optim.SGD(
        model.weight_parameters(), lr=config.schedule.max_lr,
        momentum=config.optim.momentum, weight_decay=config.optim.weight_decay,
    )  # fmt: skip
    architect = Architect(model, config.arch, config.optim, precision, scaler)
    bs = config.data.batch_size

    def epoch_body(epoch: int, lr: float) -> dict[str, Any]:
        # One persistent stream per epoch (never rebuilt per step); exact after a resume at the boundary.
        arch_stream = cycle_batches(splits.valid, batch_size=bs, seed=config.seed, epoch=epoch,
                                    num_workers=config.data.num_workers)  # fmt: skip
        arch_losses: list[float] = []

        def architecture_step(step: int, x: torch.Tensor, y: torch.Tensor) -> None:
            x_val, y_val = to_device(next(arch_stream), device, memory_format)
            arch_losses.append(architect.step(x, y, x_val, y_val, lr=lr, weight_optimizer=weight_optimizer))

        train_batches = make_loader(splits.train, batch_size=bs, shuffle=True, seed=config.seed, epoch=epoch,
                                    drop_last=True, num_workers=config.data.num_workers)  # fmt: skip
        start = time.perf_counter()
        arch_step = architecture_step if config.arch.searches_in(epoch) else None  # none in the warm-up
        train = train_one_epoch(
            model, train_batches, weight_optimizer, epoch=epoch, device=device, memory_format=memory_format,
            grad_clip=config.optim.grad_clip, before_step=arch_step,
            max_steps=config.max_steps_per_epoch, hooks=hooks, precision=precision, scaler=scaler,
        )  # fmt: skip
        valid = evaluate(
            model,
            make_loader(splits.valid, batch_size=config.data.eval_batch_size, shuffle=False, seed=0, epoch=0,
                        num_workers=config.data.num_workers),
            device=device, memory_format=memory_format, hooks=hooks, epoch=epoch, precision=precision,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        return {
            "train_loss": train.loss,
            "train_acc": train.top1,
            "valid_loss": valid.loss,
            "valid_acc": valid.top1,
            # Mean over the epoch's architecture steps; none in a weight-only warm-up epoch.
            **({"arch_loss": sum(arch_losses) / len(arch_losses)} if arch_losses else {}),
            "epoch_seconds": seconds,
            # Every training image is seen twice per step (weights) and once more for the architecture.
            "images_per_second": train.samples / seconds if seconds > 0 else 0.0,
            "precision": precision.name,  # what "auto" became on this device
            **subject.describe(model),
        }

    def log_epoch(epoch: int, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        hooks.log(
            f"[{config.kind}] epoch {epoch}/{config.epochs} lr {metrics['lr']:.3g} "
            f"train {metrics['train_loss']:.3f}/{metrics['train_acc']:.3f} "
            f"valid {metrics['valid_loss']:.3f}/{metrics['valid_acc']:.3f} "
            f"{metrics['images_per_second']:.0f} img/s"
        )

    history = run_epochs(
        config=config, workdir=workdir, spec=subject.spec, model=model,
        optimizers={"weights": weight_optimizer, "arch": architect.optimizer}, lr_optimizer="weights",
        epoch_body=epoch_body, hooks=hooks, on_epoch_end=log_epoch, scaler=scaler,
    )  # fmt: skip
    return summarize_search(history, config)


def summarize_search(history: list[dict[str, Any]], config: Any) -> CellSearchSummary | HyperCuboidSearchSummary:
    """Chooses the architecture of the best search-validation epoch (spec 3.5) and keeps the last one.
    Epochs of the architecture warm-up (``arch.warmup_epochs``) are not candidates: nothing chose their
    architecture."""
    if not history:
        raise ValueError("summarize_search: no finished epoch to choose from")
    searched = [m for m in history if config.arch.searches_in(m["epoch"])] or history
    best = max(searched, key=lambda m: (m["valid_acc"], -m["epoch"]))
    common = dict(kind=config.kind, config=config_to_dict(config), history=history, epochs_run=len(history),
                  finished=history[-1]["epoch"] == config.epochs, best_epoch=best["epoch"],
                  best_valid_acc=best["valid_acc"], last_valid_acc=history[-1]["valid_acc"])  # fmt: skip
    if config.kind == "cell_search":
        return CellSearchSummary(**common, best_genotype=best["genotype"], last_genotype=history[-1]["genotype"],
                                 best_genotype_no_hack=best["genotype_no_hack"])  # fmt: skip
    return HyperCuboidSearchSummary(**common, best_path=best["path"], last_path=history[-1]["path"])


def run_cell_search(
    config: CellSearchConfig, *, workdir: str | Path, device: str | torch.device | None = None,
    hooks: Hooks | None = None,
) -> CellSearchSummary:
    """Runs (or resumes) a differentiable cell search; returns the summary with the chosen genotype.

    Example:
        >>> from trainers.recipes import get_recipe
        >>> summary = run_cell_search(get_recipe("digits_search"), workdir="runs/s0")  # doctest: +SKIP
    """

    def factory(splits: DataSplits) -> _Subject:
        model = build_search_network(
            config.space, C=config.init_channels, num_classes=splits.info.num_classes, layers=config.layers,
            steps=config.steps, multiplier=config.multiplier, stem_multiplier=config.stem_multiplier,
            in_channels=splits.info.in_channels, weighting=config.weighting,
            activation_checkpointing=config.activation_checkpointing,
        )  # fmt: skip
        return _Subject(model, {"search": config_to_dict(config)}, describe_cell_search)

    return _bilevel_search(config, factory, workdir=workdir, device=device, hooks=hooks)


def run_hypercuboid_search(
    config: HyperCuboidSearchConfig, *, workdir: str | Path, device: str | torch.device | None = None,
    hooks: Hooks | None = None,
) -> HyperCuboidSearchSummary:
    """Runs (or resumes) DHGS over the HyperCuboid; returns the summary with the extracted path."""

    def factory(splits: DataSplits) -> _Subject:
        model = hypercuboid.HyperCuboidSupernet(
            channels=config.channels, layers=config.layers, num_classes=splits.info.num_classes,
            in_channels=splits.info.in_channels, weighting=config.weighting, prune=config.prune,
            head_channels=config.head_channels,
        )  # fmt: skip
        return _Subject(model, {"search": config_to_dict(config)}, describe_hypercuboid)

    return _bilevel_search(config, factory, workdir=workdir, device=device, hooks=hooks)
