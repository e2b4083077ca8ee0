"""Typed, frozen training configurations with dict round trips (the named recipes are in :mod:`trainers.recipes`).

A config is plain data: nested frozen dataclasses of primitives and tuples, so it hashes (trial ids),
serialises to JSON (Ray, checkpoints, result rows) and cannot change mid-run. pydantic reads dicts into
them strictly (no bool or float for an int, no bool or string for a float) and refuses unknown fields,
naming the field path, so a typo in a spec never silently falls back to a default.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from types import EllipsisType
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

from search_spaces.names import WEIGHTING_NAMES as WEIGHTINGS  # the names only: no torch

from .schedules import ScheduleError, ScheduleSpec

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
    "config_from_dict",
    "config_to_dict",
    "with_overrides",
]

class ConfigError(ValueError):
    """A bad configuration value, ``<path>: <rule>, got <value!r>`` (e.g. ``arch.betas[1]: must be a number,
    got 'x'``), its parts held in ``path``, ``rule``, ``value`` and ``got`` (the value as shown; None for an
    unknown field, which reads ``<path>: unknown field; known fields: [...]``)."""

    def __init__(self, path: str, rule: str, value: Any = None, got: str | None | EllipsisType = ...) -> None:
        self.path, self.rule, self.value, self.got = path, rule, value, repr(value) if got is ... else got
        super().__init__(path, rule, value, self.got)  # the arguments, so that it pickles

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}" + ("" if self.got is None else f", got {self.got}")


# JSON and YAML give lists for tuples. The registry is the only list of weighting names.
_FROM_LIST = BeforeValidator(lambda value: tuple(value) if isinstance(value, list) else value)
_WeightingName = Literal[tuple(WEIGHTINGS.names())]  # type: ignore[valid-type]
# The numeric precisions a run may ask for (trainers.precision resolves "auto" on the run's device).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
ScheduleConfig = ScheduleSpec  # a config's schedule is the schedule module's description: one class


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
        random_shift: digits only: translate training images by up to this many pixels (zero fill), 0: off.

    The transforms (:mod:`trainers.transforms`) read the augmentation fields of this same object.
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
    random_shift: int = 0

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "data.batch_size", ">= 1", self.batch_size)
        # A batch is held in memory at once (the images, then every activation of the network): 2**20 images
        # is already far beyond any device, and a typo such as 10**12 would otherwise fail only inside a trial.
        for name in ("batch_size", "eval_batch_size"):
            _check(getattr(self, name) <= 2**20, f"data.{name}", "<= 1048576 (2**20; the whole batch is held in "
                   "memory at once)", getattr(self, name))  # fmt: skip
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", ">= 1", self.eval_batch_size)
        _check(self.cutout >= 0, "data.cutout", ">= 0 (0 = off)", self.cutout)
        _check(self.cutout_holes >= 1, "data.cutout_holes", ">= 1", self.cutout_holes)
        _check(self.random_shift >= 0, "data.random_shift", ">= 0 (0 = off)", self.random_shift)
        _check(0.0 < self.train_portion < 1.0, "data.train_portion", "in (0, 1)", self.train_portion)


@dataclass(frozen=True)
class OptimConfig:
    """SGD for the network weights."""

    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class ArchOptimConfig:
    """Adam for the architecture weights (spec section 8).

    ``warmup_epochs``: epochs of weight-only training before the first architecture step (0: the paper,
    architecture steps from the first batch), so that every candidate op or path is trained before the
    architecture weights start to choose between them.
    """

    lr: float = 3e-4
    betas: Annotated[tuple[float, float], _FROM_LIST] = (0.5, 0.999)
    weight_decay: float = 1e-3
    order: Literal[1, 2] = 1
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        _check(self.order in (1, 2), "arch.order", "1 (first order) or 2 (unrolled)", self.order)
        _check(self.warmup_epochs >= 0, "arch.warmup_epochs", ">= 0", self.warmup_epochs)

    def searches_in(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) takes architecture steps: every epoch after the warm-up."""
        return epoch > self.warmup_epochs


@dataclass(frozen=True)
class _Common:
    # How pydantic reads a training config and the dataclasses it nests: strictly, refusing unknown fields.
    __pydantic_config__ = {"strict": True, "extra": "forbid"}
    epochs: int = 10
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    # fp32, or autocast to bf16 / fp16 (trainers.precision); auto: bf16 where the device computes it natively.
    precision: Literal[PRECISIONS] = "fp32"  # type: ignore[valid-type]
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        from .schedules import MAX_EPOCHS  # the schedule holds one learning rate per epoch: one bound for both

        _check(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _check(self.epochs <= MAX_EPOCHS, "epochs", f"<= {MAX_EPOCHS} (the schedule holds a learning rate per "
               "epoch; the paper's longest run has 2000)", self.epochs)  # fmt: skip
        # torch.manual_seed takes the seed, and the results store keeps it as a non-negative 64-bit integer.
        _check(0 <= self.seed <= 2**63 - 1, "seed", "in [0, 2**63 - 1] (torch seeds from it and the results "
               "store keeps it as a non-negative 64-bit integer)", self.seed)  # fmt: skip
        _check(self.memory_format in ("auto", "channels_last", "contiguous"), "memory_format",
               "one of auto, channels_last, contiguous", self.memory_format)  # fmt: skip
        arch = getattr(self, "arch", None)
        if arch is not None and arch.order == 2:
            _check(self.precision != "fp16", "precision",
                   "fp32, bf16 or auto with arch.order 2 (the finite-difference Hessian of the unrolled step "
                   "needs more range than fp16 has)", self.precision)  # fmt: skip
        if self.schedule.kind == "cpa":
            _check(self.schedule.warmup_epochs < self.epochs, "schedule.warmup_epochs", "< epochs",
                   (self.schedule.warmup_epochs, self.epochs))  # fmt: skip


@dataclass(frozen=True)
class CellSearchConfig(_Common):
    """Differentiable cell search (DARTS / SharpSepConvDARTS / sharpDARTS / SharperDARTS)."""

    kind: Literal["cell_search"] = "cell_search"
    space: str = "sharp_darts"
    weighting: _WeightingName = "scalar"
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
        _check_arch_warmup(self)


@dataclass(frozen=True)
class HyperCuboidSearchConfig(_Common):
    """Differentiable Hyperparameter Grid Search over the HyperCuboid (spec section 7)."""

    kind: Literal["hypercuboid_search"] = "hypercuboid_search"
    weighting: _WeightingName = "scalar"
    channels: Annotated[tuple[int, ...], _FROM_LIST] = (32, 64, 128, 256)
    layers: int = 4
    prune: bool = False
    head_channels: int = 768
    arch: ArchOptimConfig = field(default_factory=ArchOptimConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "channels",
               "a non-empty list of positive widths", self.channels)  # fmt: skip
        _check_arch_warmup(self)


def _check_arch_warmup(config: CellSearchConfig | HyperCuboidSearchConfig) -> None:
    _check(config.arch.warmup_epochs < config.epochs, "arch.warmup_epochs",
           "< epochs (at least one epoch must search)", (config.arch.warmup_epochs, config.epochs))  # fmt: skip


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
_KINDS: dict[str, type] = {cls.kind: cls for cls in typing.get_args(TrainConfig)}


def _check(ok: bool, path: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(path, f"must be {rule}", value)


# ---------------------------------------------------------------------------------------------------------
# dict round trip

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return plain(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Builds the config of ``data["kind"]``; unknown fields and bad values raise ``ConfigError``.

    A config written before ``precision`` existed carries ``amp: false`` (fp32, what it computed) and is
    read as ``precision: fp32``; ``amp: true`` meant fp16 autocast on CUDA.
    """
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        kind = data.get("kind") if isinstance(data, dict) else data
        raise ConfigError("kind", f"must be one of {sorted(_KINDS)}", kind)
    if "amp" in data and "precision" not in data and isinstance(data["amp"], bool):
        data = {k: v for k, v in data.items() if k != "amp"} | {"precision": "fp16" if data["amp"] else "fp32"}
    return _read(_KINDS[data["kind"]], data)  # type: ignore[return-value]


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """A copy of a training config with nested ``overrides`` (e.g. ``{"data": {"batch_size": 32}}``)."""
    return _read(type(config), _deep_merge(config_to_dict(config), overrides))


@functools.cache
def _validator(cls: type) -> SchemaValidator:
    """pydantic's validator of ``cls``, each dataclass taking dicts too (strict mode takes only instances)."""
    schema = TypeAdapter(cls).core_schema
    nodes: list[Any] = [schema]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict) and node.get("type") == "dataclass":
            node["strict"] = False
        nodes.extend(node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())
    return SchemaValidator(schema)


def _read(cls: type[C], data: Any) -> C:
    """``cls`` from ``data``. Of several refusals, the first in reading order becomes the ``ConfigError``."""
    unknown = ("unexpected_keyword_argument", "invalid_key")
    try:
        return _validator(cls).validate_python(data)
    except ValidationError as err:
        error = min(err.errors(), key=lambda e: _reading_order(data, e["loc"], e["type"] in unknown))
    loc, kind, value = error["loc"], error["type"], error["input"]
    if kind == "value_error":  # a __post_init__ check of the dataclass at loc
        cause = error["ctx"]["error"]
        if isinstance(cause, ScheduleError):
            raise ConfigError(_dotted(loc + (cause.name,)), cause.rule, cause.value, cause.got) from None
        raise cause from None  # a ConfigError, naming its field path itself
    if kind in unknown:
        known = sorted(f.name for f in fields(_type_at(cls, loc[:-1])))
        path = _dotted(loc[:-1] + (str(loc[-1]),))
        raise ConfigError(path, f"unknown field; known fields: {known}", value, None)
    if kind in ("missing", "too_long"):  # a fixed-length tuple of another length (fields have defaults)
        loc, value = loc[:-1] if kind == "missing" else loc, list(value)
        length = len(typing.get_args(_type_at(cls, loc)))
        raise ConfigError(_dotted(loc), f"must be a list of {length}", value)
    raise ConfigError(_dotted(loc) or "config", _rule(_type_at(cls, loc)), value)


def _rule(tp: Any) -> str:
    """In words, the rule that a value given for the declared type ``tp`` broke."""
    if typing.get_origin(tp) is Literal:
        return f"must be one of {list(typing.get_args(tp))}"
    words = {float: "a number", int: "an integer", bool: "true or false", str: "a string", tuple: "a list"}
    return "must be " + ("a mapping" if is_dataclass(tp) else words.get(typing.get_origin(tp) or tp, str(tp)))


def _type_at(tp: Any, loc: tuple[Any, ...]) -> Any:
    """The declared type at ``loc`` (field names, tuple indices) below the dataclass ``tp``."""
    for part in loc:
        args = typing.get_args(tp)
        tp = typing.get_type_hints(tp)[part] if is_dataclass(tp) else args[0 if args[-1] is ... else part]
    return tp


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("arch", "betas", 1)`` -> ``"arch.betas[1]"``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _reading_order(data: Any, loc: tuple[Any, ...], unknown: bool) -> list[tuple[int, Any]]:
    """Sort key of a refusal at ``loc``: per level, a mapping's unknown fields by name, then keys as given."""
    key: list[tuple[int, Any]] = []
    for i, part in enumerate(loc):
        if unknown and i == len(loc) - 1:
            return key + [(0, str(part))]
        keys = list(data) if isinstance(data, dict) else list(range(len(data or ())))  # a mapping or a list
        key.append((1, keys.index(part) if part in keys else len(keys)))
        data = data[part] if part in keys else None
    return key


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    nested = {k: _deep_merge(base[k], v) for k, v in update.items()
              if isinstance(v, dict) and isinstance(base.get(k), dict)}  # fmt: skip
    return {**base, **update, **nested}
