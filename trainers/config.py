"""Typed, frozen training configurations with dict round trips, and the named recipes of the paper.

A config is plain data: nested frozen dataclasses of primitives and tuples, so it hashes (trial ids),
serialises to JSON (Ray, checkpoints, result rows) and cannot change mid-run. ``from_dict`` refuses
unknown fields, naming the field path, so a typo in a spec never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar

from search_spaces.registry import Registry

__all__ = [
    "ConfigError",
    "DataConfig",
    "ScheduleConfig",
    "OptimConfig",
    "ArchOptimConfig",
    "CellSearchConfig",
    "HyperCuboidSearchConfig",
    "RetrainConfig",
    "TrainConfig",
    "RECIPES",
    "get_recipe",
    "list_recipes",
    "config_from_dict",
    "config_to_dict",
    "with_overrides",
    "RESULT_NEUTRAL_FIELDS",
    "without_result_neutral_fields",
]

# Fields that say where the data is or how a run spends memory, not what it computes: a run may resume
# with other values (the checkpoint check ignores them) and trial ids leave them out.
RESULT_NEUTRAL_FIELDS: tuple[tuple[str, ...], ...] = (
    ("data", "root"), ("data", "download"), ("data", "num_workers"), ("activation_checkpointing",),
)  # fmt: skip


def without_result_neutral_fields(config: Mapping[str, Any], extra: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """A deep copy of a config dict without :data:`RESULT_NEUTRAL_FIELDS` (and the ``extra`` paths)."""
    out = copy.deepcopy(dict(config))
    for path in RESULT_NEUTRAL_FIELDS + extra:
        node: Any = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


class ConfigError(ValueError):
    """A bad configuration value; the message names the field path, the rule and the value."""


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is fed.

    Args:
        dataset: a registered data set (``digits``, ``cifar10``, ``cifar10.1``, ``imagenet``).
        root: folder holding the files (not needed for ``digits``).
        batch_size: per step (the global batch in DDP; split across workers).
        cutout: Cutout length in pixels, 0 for off; ``cutout_holes`` holes per image.
        autoaugment: AutoAugment policy of the data set (CIFAR-10 or ImageNet).
        validation_size: images held out of the training set for model selection (retraining).
        train_portion: the search split: the first part trains weights, the rest architecture weights.
        imagenet_std_bug: reproduce the reference's ImageNet normalisation (std = mean); off by default.
        download: let torchvision download CIFAR-10 when the network allows.
    """

    dataset: str = "digits"
    root: str | None = None
    batch_size: int = 64
    eval_batch_size: int = 256
    cutout: int = 0
    cutout_holes: int = 1
    autoaugment: bool = False
    validation_size: int | None = None
    train_portion: float = 0.5
    imagenet_std_bug: bool = False
    download: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "data.batch_size", ">= 1", self.batch_size)
        _check(self.cutout >= 0, "data.cutout", ">= 0", self.cutout)
        _check(0.0 < self.train_portion < 1.0, "data.train_portion", "in (0, 1)", self.train_portion)


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule (one value per epoch): ``cpa``, ``cosine`` or ``constant``."""

    kind: Literal["cpa", "cosine", "constant"] = "cpa"
    max_lr: float = 0.025
    min_lr: float = 1e-4
    power: float = 2.0
    warmup_epochs: int = 5

    def __post_init__(self) -> None:
        from .schedules import ScheduleSpec  # the schedule module owns the rules (power >= 1, lr range)

        try:
            ScheduleSpec(self.kind, self.max_lr, self.min_lr, self.power, self.warmup_epochs)
        except ValueError as err:
            raise ConfigError(f"schedule.{err}") from None


@dataclass(frozen=True)
class OptimConfig:
    """SGD for the network weights."""

    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class ArchOptimConfig:
    """Adam for the architecture weights (spec section 8)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    order: Literal[1, 2] = 1

    def __post_init__(self) -> None:
        _check(self.order in (1, 2), "arch.order", "1 (first order) or 2 (unrolled)", self.order)


@dataclass(frozen=True)
class _Common:
    epochs: int = 10
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    amp: bool = False
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _check(
            self.memory_format in ("auto", "channels_last", "contiguous"),
            "memory_format", "one of auto, channels_last, contiguous", self.memory_format,
        )  # fmt: skip
        if self.schedule.kind == "cpa":
            _check(self.schedule.warmup_epochs < self.epochs, "schedule.warmup_epochs", "< epochs",
                   (self.schedule.warmup_epochs, self.epochs))  # fmt: skip


@dataclass(frozen=True)
class CellSearchConfig(_Common):
    """Differentiable cell search (DARTS / SharpSepConvDARTS / sharpDARTS / SharperDARTS)."""

    kind: Literal["cell_search"] = "cell_search"
    space: str = "sharp_darts"
    weighting: Literal["scalar", "max_w"] = "scalar"
    # Recompute each supernet edge's activations in backward instead of keeping them: the same results in
    # about 0.4x the memory for about 1.45x the step time (benchmarks/search_step.py --checkpointing off on).
    activation_checkpointing: bool = False
    init_channels: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    arch: ArchOptimConfig = field(default_factory=ArchOptimConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.weighting in ("scalar", "max_w"), "weighting", "scalar or max_w", self.weighting)


@dataclass(frozen=True)
class HyperCuboidSearchConfig(_Common):
    """Differentiable Hyperparameter Grid Search over the HyperCuboid (spec section 7)."""

    kind: Literal["hypercuboid_search"] = "hypercuboid_search"
    weighting: Literal["scalar", "max_w"] = "scalar"
    channels: tuple[int, ...] = (32, 64, 128, 256)
    layers: int = 4
    prune: bool = False
    head_channels: int = 768
    arch: ArchOptimConfig = field(default_factory=ArchOptimConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.weighting in ("scalar", "max_w"), "weighting", "scalar or max_w", self.weighting)
        _check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
               "a non-empty list of positive widths", self.channels)  # fmt: skip


@dataclass(frozen=True)
class RetrainConfig(_Common):
    """Training a genotype (cell network) or a HyperCuboid path (linear network) from scratch.

    Exactly one of ``genotype`` / ``path`` is given: a published name or a JSON mapping.
    ``select_on_test`` is the paper's protocol (best epoch picked on the test set); it is off by default
    and every result produced with it says so.
    """

    kind: Literal["retrain"] = "retrain"
    genotype: str | None = None
    path: str | None = None
    op_set: str | None = None
    network: Literal["cifar", "imagenet"] = "cifar"
    init_channels: int = 36
    layers: int = 20
    mid_channels: int | None = None
    auxiliary: bool = True
    aux_weight: float = 0.4
    drop_path_prob: float = 0.2
    label_smoothing: float = 0.0
    select_on_test: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check((self.genotype is None) != (self.path is None), "genotype/path",
               "exactly one of genotype or path", (self.genotype, self.path))  # fmt: skip
        _check(0.0 <= self.drop_path_prob < 1.0, "drop_path_prob", "in [0, 1)", self.drop_path_prob)


TrainConfig = CellSearchConfig | HyperCuboidSearchConfig | RetrainConfig
_KINDS: dict[str, type] = {
    "cell_search": CellSearchConfig,
    "hypercuboid_search": HyperCuboidSearchConfig,
    "retrain": RetrainConfig,
}


def _check(ok: bool, path: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path}: must be {rule}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------
# dict round trip

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: must be {tp}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: must be a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_convert(item if args[-1] is Ellipsis else args[i], v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string, got {value!r}")
        return value
    return value


def _build(cls: type[C], data: Any, path: str) -> C:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{path}." if path else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; known fields: {sorted(known)}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    # __post_init__ checks name their full field path themselves (e.g. "data.batch_size").
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Builds the config of ``data["kind"]``; unknown fields and bad values raise ``ConfigError``."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        kind = data.get("kind") if isinstance(data, dict) else data
        raise ConfigError(f"kind: must be one of {sorted(_KINDS)}, got {kind!r}")
    return _build(_KINDS[data["kind"]], data, "")  # type: ignore[return-value]


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """A copy of ``config`` with nested ``overrides`` (e.g. ``{"data": {"batch_size": 32}}``) applied."""
    merged = _deep_merge(config_to_dict(config), overrides)
    return _build(type(config), merged, "")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Recipes: the paper's settings (spec sections 7.3, 8, 9) and small digits presets for CPUs.

RECIPES: Registry[TrainConfig] = Registry("recipe")

_CIFAR_SEARCH_DATA = DataConfig(dataset="cifar10", batch_size=64, train_portion=0.5)

RECIPES.register(
    "darts_search_60",  # the paper's headline searches: 60 epochs, DARTS cosine 0.025 -> 0.001, batch 32
    CellSearchConfig(
        epochs=60, seed=2, space="sharp_sep_conv_darts",
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=32),
        schedule=ScheduleConfig(kind="cosine", max_lr=0.025, min_lr=0.001, warmup_epochs=0),
    ),
)  # fmt: skip
RECIPES.register(
    "sharp_search_120",  # README / Max-W / Sharper searches: 120 epochs, CPA p=2 w=5, cutout + AutoAugment
    CellSearchConfig(
        epochs=120, seed=22, space="sharp_darts",
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=48, cutout=16, autoaugment=True),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-4, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "hypercuboid_search_120",  # spec 7.3
    HyperCuboidSearchConfig(
        epochs=120, seed=10, channels=(32, 64, 128, 256), layers=4,
        data=dataclasses.replace(_CIFAR_SEARCH_DATA, batch_size=48, cutout=16, autoaugment=True),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-4, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "cifar10_retrain",  # spec 9: 2000 epochs, C=36, 20 cells, CPA 0.025 -> 1e-8, cutout 16, AutoAugment
    RetrainConfig(
        genotype="SHARPSEPCONV_DARTS", epochs=2000, seed=0, network="cifar", init_channels=36, layers=20,
        mid_channels=32, auxiliary=True, drop_path_prob=0.2,
        data=DataConfig(dataset="cifar10", batch_size=64, cutout=16, autoaugment=True, validation_size=5000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.025, min_lr=1e-8, power=2, warmup_epochs=5),
    ),
)  # fmt: skip
RECIPES.register(
    "imagenet_retrain",  # spec 9: 300 epochs, C=48, 14 cells, CPA p=10 w=10, wd 1e-4, no clipping, 2x112 cutout
    RetrainConfig(
        genotype="SHARPER_MAX_W", epochs=300, seed=0, network="imagenet", init_channels=48, layers=14,
        mid_channels=96, auxiliary=True, drop_path_prob=0.0,
        data=DataConfig(dataset="imagenet", batch_size=448, cutout=112, cutout_holes=2, autoaugment=True,
                        validation_size=50000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05 * 448 / 256, min_lr=0.00075, power=10, warmup_epochs=10),
        optim=OptimConfig(momentum=0.9, weight_decay=1e-4, grad_clip=None),
    ),
)  # fmt: skip
RECIPES.register(
    "hypercuboid_retrain",  # spec 7.5: linear path network, batch 512, lr 0.1
    RetrainConfig(
        path="MULTI_CHANNEL_HANDMADE_PATH", epochs=2000, seed=0, auxiliary=False, drop_path_prob=0.0,
        data=DataConfig(dataset="cifar10", batch_size=512, cutout=16, autoaugment=True, validation_size=5000),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.1, min_lr=1e-8, power=2, warmup_epochs=5),
    ),
)  # fmt: skip

# Digits presets: the same code paths, sized to finish in a minute or two on a 2-core CPU.
_DIGITS = DataConfig(dataset="digits", batch_size=32, eval_batch_size=512)
RECIPES.register(
    "digits_search",
    CellSearchConfig(
        epochs=6, seed=0, space="sharp_darts", init_channels=8, layers=3, steps=2, multiplier=2,
        stem_multiplier=2, data=_DIGITS,
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-3, power=2, warmup_epochs=1),
        arch=ArchOptimConfig(lr=3e-3),
    ),
)  # fmt: skip
RECIPES.register(
    "digits_hypercuboid_search",
    HyperCuboidSearchConfig(
        epochs=6, seed=0, channels=(8, 16), layers=2, head_channels=64, data=_DIGITS,
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-3, power=2, warmup_epochs=1),
        arch=ArchOptimConfig(lr=3e-3),
    ),
)  # fmt: skip
RECIPES.register(
    "digits_retrain",
    RetrainConfig(
        genotype="DARTS_V2", epochs=8, seed=0, network="cifar", init_channels=8, layers=3, mid_channels=8,
        auxiliary=True, drop_path_prob=0.1, data=dataclasses.replace(_DIGITS, validation_size=None),
        schedule=ScheduleConfig(kind="cpa", max_lr=0.05, min_lr=1e-4, power=2, warmup_epochs=1),
    ),
)  # fmt: skip


def get_recipe(name: str) -> TrainConfig:
    """A named preset; derive variants with :func:`with_overrides`."""
    return RECIPES.get(name)


def list_recipes() -> list[str]:
    return RECIPES.names()
