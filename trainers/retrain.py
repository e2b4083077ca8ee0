"""Retraining a genotype or a HyperCuboid path from scratch, and scoring checkpoints (spec sections 4, 7.4, 9).

Evaluation protocol: the best epoch is chosen on a validation split held out of the training data, and
the test set is reported at that epoch and at the last one. The paper's protocol (best epoch picked on the
test set, which is optimistic) is available with ``select_on_test=True`` and every result says which
protocol produced it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.genotypes import default_op_set, resolve_genotype
from search_spaces.networks import build_path_network
from search_spaces.networks import build_network, count_multiply_adds, count_parameters
from search_spaces.paths import resolve_path

from .checkpoints import load_checkpoint, save_checkpoint
from .config import RetrainConfig, config_to_dict
from .data import DatasetInfo, get_dataset_info, load_data, load_test_set, make_loader
from .engine import Hooks, apply_memory_format, evaluate, memory_format_for, resolve_device, train_one_epoch
from .loop import run_epochs
from .precision import resolve_precision
from .summary import RetrainSummary

__all__ = [
    "PROTOCOL_VALIDATION",
    "PROTOCOL_PAPER",
    "model_spec",
    "build_model",
    "run_retrain",
    "score_checkpoint",
]

PROTOCOL_VALIDATION = "validation-selected"
PROTOCOL_PAPER = "paper: best epoch selected on the test set (optimistic)"


def model_spec(config: RetrainConfig, info: DatasetInfo) -> dict[str, Any]:
    """Everything needed to rebuild the network, as JSON-able data (saved in every checkpoint)."""
    common = {"in_channels": info.in_channels, "input_size": info.input_size, "num_classes": info.num_classes}
    if config.path is not None:
        return {"model": "path", "path": resolve_path(config.path).to_dict(), **common}
    genotype = resolve_genotype(config.genotype)
    op_set = config.op_set if config.op_set is not None else default_op_set(config.genotype)
    return {
        "model": config.network,
        "genotype": genotype.to_dict(),
        "op_set": op_set,
        "init_channels": config.init_channels,
        "layers": config.layers,
        "mid_channels": config.mid_channels,
        "auxiliary": config.auxiliary,
        **common,
    }


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Builds the network a :func:`model_spec` describes (``build_model(ckpt["spec"])`` always works)."""
    if spec["model"] == "path":
        return build_path_network(resolve_path(spec["path"]), num_classes=spec["num_classes"],
                                  in_channels=spec["in_channels"])  # fmt: skip
    return build_network(
        resolve_genotype(spec["genotype"]), kind=spec["model"], op_set=spec["op_set"], C=spec["init_channels"],
        layers=spec["layers"], num_classes=spec["num_classes"], auxiliary=spec["auxiliary"],
        C_mid=spec["mid_channels"], in_channels=spec["in_channels"], input_size=spec["input_size"],
    )  # fmt: skip


def run_retrain(
    config: RetrainConfig,
    *,
    workdir: str | Path,
    device: str | torch.device | None = None,
    hooks: Hooks | None = None,
) -> RetrainSummary:
    """Trains (or resumes training) the configured genotype or path; returns the summary.

    The best weights (by the protocol's selection split) are kept in ``<workdir>/best.pt`` for scoring on
    other test sets.
    """
    hooks = hooks or Hooks()
    device = resolve_device(device)
    memory_format = memory_format_for(config.memory_format, device)
    torch.manual_seed(config.seed)
    splits = load_data(config.data, purpose="train")
    spec = model_spec(config, splits.info)
    model = apply_memory_format(build_model(spec).to(device), memory_format)
    params = count_parameters(model)
    # Before the DDP wrap and before training: one eval forward of one image, the paper's "+x" column.
    madds = count_multiply_adds(model, (splits.info.in_channels, splits.info.input_size, splits.info.input_size))
    trained = hooks.wrap_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.schedule.max_lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay)  # fmt: skip
    precision = resolve_precision(config.precision, device)
    scaler = precision.grad_scaler()
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    eval_bs = config.data.eval_batch_size
    select_key = "test_top1" if config.select_on_test else "valid_top1"
    if splits.valid is None and not config.select_on_test:
        raise ValueError(
            f"data.validation_size: data set {config.data.dataset!r} has no validation split to select the best "
            "epoch on; set data.validation_size > 0 (or select_on_test: true for the paper's protocol)"
        )

    def loader(dataset: Any) -> Any:
        return hooks.wrap_loader(make_loader(dataset, batch_size=eval_bs, shuffle=False, seed=0, epoch=0,
                                             num_workers=config.data.num_workers))  # fmt: skip

    def epoch_body(epoch: int, lr: float) -> dict[str, Any]:
        # Drop path ramps linearly: p * epoch / epochs, epoch counted from 1 (spec section 9).
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = config.drop_path_prob * epoch / config.epochs
        batches = hooks.wrap_loader(
            make_loader(splits.train, batch_size=config.data.batch_size, shuffle=True, seed=config.seed,
                        epoch=epoch, drop_last=False, num_workers=config.data.num_workers)
        )  # fmt: skip
        if hasattr(batches, "sampler") and hasattr(batches.sampler, "set_epoch"):
            batches.sampler.set_epoch(epoch)
        start = time.perf_counter()
        train = train_one_epoch(
            trained, batches, optimizer, epoch=epoch, device=device, memory_format=memory_format,
            criterion=criterion, grad_clip=config.optim.grad_clip, aux_weight=config.aux_weight if config.auxiliary else 0.0,
            max_steps=config.max_steps_per_epoch, hooks=hooks, precision=precision, scaler=scaler,
        )  # fmt: skip
        metrics: dict[str, Any] = {"train_loss": train.loss, "train_top1": train.top1}
        for split_name, dataset in (("valid", splits.valid), ("test", splits.test)):
            if dataset is not None:
                stats = evaluate(model, loader(dataset), device=device, memory_format=memory_format,
                                 hooks=hooks, epoch=epoch, precision=precision)  # fmt: skip
                metrics.update({f"{split_name}_loss": stats.loss, f"{split_name}_top1": stats.top1,
                                f"{split_name}_top5": stats.top5})  # fmt: skip
        seconds = time.perf_counter() - start
        metrics.update(epoch_seconds=seconds, images_per_second=train.samples / seconds if seconds else 0.0,
                       drop_path_prob=getattr(model, "drop_path_prob", 0.0),
                       precision=precision.name)  # fmt: skip
        return metrics

    def keep_best(epoch: int, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        previous = [m[select_key] for m in history[:-1] if select_key in m]
        if hooks.is_writer and (not previous or metrics[select_key] > max(previous)):
            save_checkpoint(Path(workdir) / "best.pt", {
                "kind": "retrain", "spec": spec, "config": config_to_dict(config), "epoch": epoch,
                "model": model.state_dict(),
            })  # fmt: skip
        hooks.log(
            f"[retrain] epoch {epoch}/{config.epochs} lr {metrics['lr']:.3g} train {metrics['train_loss']:.3f}/"
            f"{metrics['train_top1']:.3f}" + "".join(
                f" {s} {metrics[s + '_top1']:.3f}" for s in ("valid", "test") if s + "_top1" in metrics)
        )  # fmt: skip

    history = run_epochs(
        config=config, workdir=workdir, spec=spec, model=model, optimizers={"weights": optimizer},
        lr_optimizer="weights", epoch_body=epoch_body, hooks=hooks, on_epoch_end=keep_best, scaler=scaler,
    )  # fmt: skip
    return summarize_retrain(history, config, spec, params, madds)


def summarize_retrain(
    history: list[dict[str, Any]], config: RetrainConfig, spec: dict[str, Any], params: int,
    multiply_adds: int | None = None,
) -> RetrainSummary:
    """Best epoch by the protocol's selection split; test metrics at that epoch and at the last one."""
    select_key = "test_top1" if config.select_on_test else "valid_top1"
    best = max(history, key=lambda m: (m[select_key], -m["epoch"]))
    last = history[-1]
    return RetrainSummary(
        kind="retrain", protocol=PROTOCOL_PAPER if config.select_on_test else PROTOCOL_VALIDATION,
        config=config_to_dict(config), spec=spec, params=params, multiply_adds=multiply_adds, history=history,
        epochs_run=len(history), finished=last["epoch"] == config.epochs, best_epoch=best["epoch"],
        best_valid_top1=best.get("valid_top1"), test_top1_at_best=best.get("test_top1"),
        test_top5_at_best=best.get("test_top5"), test_top1_last=last.get("test_top1"),
        test_top5_last=last.get("test_top5"),
    )  # fmt: skip


def score_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    *,
    root: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Scores a retrain checkpoint (e.g. ``best.pt``) on the test set of ``dataset`` (e.g. CIFAR-10.1).

    The model is rebuilt from the checkpoint's spec and runs in the precision it was trained in; the data
    set must have the same input shape and classes as the one the model was trained on.
    """
    device = resolve_device(device)
    state = load_checkpoint(checkpoint)
    spec = state["spec"]
    info = get_dataset_info(dataset)
    if (info.in_channels, info.num_classes) != (spec["in_channels"], spec["num_classes"]):
        raise ValueError(
            f"dataset {dataset!r} has {info.in_channels} channels and {info.num_classes} classes; the checkpoint's "
            f"model expects {spec['in_channels']} and {spec['num_classes']}"
        )
    model = build_model(spec).to(device)
    model.load_state_dict(state["model"])
    test = load_test_set(dataset, root=root)
    # Scored in the precision it was trained in (a config from before ``precision`` existed was fp32).
    precision = resolve_precision(state["config"].get("precision", "fp32"), device)
    stats = evaluate(model, make_loader(test, batch_size=batch_size, shuffle=False, seed=0, epoch=0), device=device,
                     precision=precision)  # fmt: skip
    protocol = PROTOCOL_PAPER if state["config"].get("select_on_test") else PROTOCOL_VALIDATION
    return {"dataset": dataset, "epoch": state["epoch"], "top1": stats.top1, "top5": stats.top5,
            "loss": stats.loss, "samples": stats.samples, "protocol": protocol}  # fmt: skip
