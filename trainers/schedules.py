"""Per-epoch learning-rate schedules: Cosine Power Annealing (sharpDARTS), DARTS cosine, constant.

Every schedule returns **one learning rate per epoch** for epochs ``1..E`` (index ``e - 1`` holds epoch
``e``), as a float64 numpy array. Trainers set the rate once at the start of each epoch, never per step,
exactly as the reference scripts do (spec section 5).

Schedules live in a registry (:data:`SCHEDULES`) so specs name them (``cpa``, ``cosine``, ``constant``)
and tests parametrize over them. :class:`ScheduleSpec` is the frozen, JSON-able description that a
config (as its ``schedule``) or a checkpoint carries.

Two cosine curves, on purpose:

* ``cpa`` with ``power=1`` and no warmup is the *min-max normalised* half cosine:
  ``lr(e) = min + (max - min) * c(e) / c(1)`` with ``c(e) = (1 + cos(pi e / E)) / 2``; epoch 1 is exactly
  ``max_lr`` and epoch E exactly ``min_lr`` (the "p = 1 gives plain cosine" of spec section 5).
* ``cosine`` is what DARTS' ``CosineAnnealingLR(optimizer, T_max=E, eta_min=min)`` produced as the
  reference scripts ran it (``scheduler.step()`` at the *start* of each epoch, so epoch ``e`` used
  ``last_epoch = e``): ``lr(e) = min + (max - min) * c(e)``. Epoch E is exactly ``min_lr``, epoch 1 is
  slightly below ``max_lr``. This is the schedule of the paper's 60-epoch headline searches (spec 8),
  so it is reproduced as run rather than "fixed". The two differ only by the factor ``1 / c(1)``
  (about ``1 + (pi / 2E)^2``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from types import EllipsisType
from typing import Any, Literal

import numpy as np

from search_spaces.registry import Registry

__all__ = [
    "MAX_EPOCHS",
    "ScheduleError",
    "Schedule",
    "SCHEDULES",
    "ScheduleSpec",
    "build_schedule",
    "list_schedules",
    "cosine_power_annealing",
    "cosine",
    "constant",
]


class ScheduleError(ValueError):
    """A bad schedule argument: ``str(err)`` is ``<argument>: <rule>, got <value>``.

    ``name``, ``rule`` and ``value`` hold the parts (``trainers.config`` turns them into a ``ConfigError``);
    ``got`` is the shown value when it is not ``repr(value)``, or None for a message without one.
    """

    def __init__(self, name: str, rule: str, value: Any = None, got: str | None | EllipsisType = ...) -> None:
        self.name, self.rule, self.value, self.got = name, rule, value, repr(value) if got is ... else got
        super().__init__(name, rule, value, self.got)  # the arguments, so that it pickles

    def __str__(self) -> str:
        return f"{self.name}: {self.rule}" + ("" if self.got is None else f", got {self.got}")


Schedule = Callable[..., np.ndarray]
SCHEDULES: Registry[Schedule] = Registry("schedule")

# The most epochs a schedule (and a training config, trainers.config) takes. A schedule is an array of one rate
# per epoch (and ScheduleSpec caches it as Python floats): `nas-service schedule cpa --epochs 1000000000` took
# about 23 GB before the kernel killed it. 100000 is 50x the paper's longest run (2000 epochs), a few megabytes.
MAX_EPOCHS = 100_000


# ---------------------------------------------------------------------------------------------------------
# validation helpers: every message says which argument, which rule, which value


def _int_arg(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ScheduleError(name, f"must be an integer >= {minimum}", value)
    if value < minimum:
        raise ScheduleError(name, f"must be >= {minimum}", value)
    return int(value)


def _epochs_arg(name: str, value: Any) -> int:
    epochs = _int_arg(name, value, minimum=1)
    if epochs > MAX_EPOCHS:
        raise ScheduleError(name, f"must be <= {MAX_EPOCHS} (a schedule holds one learning rate per epoch; the "
                                  f"paper's longest run has 2000 epochs)", value)  # fmt: skip
    return epochs


def _float_arg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ScheduleError(name, "must be a finite number", value)
    return float(value)


def _check_lr_range(max_lr: Any, min_lr: Any) -> tuple[float, float]:
    max_lr, min_lr = _float_arg("max_lr", max_lr), _float_arg("min_lr", min_lr)
    if not 0.0 <= min_lr <= max_lr:
        raise ScheduleError("learning rates", "must satisfy 0 <= min_lr <= max_lr", (min_lr, max_lr),
                            f"{min_lr=}, {max_lr=}")  # fmt: skip
    return max_lr, min_lr


# ---------------------------------------------------------------------------------------------------------
# schedules


@SCHEDULES.decorator("cpa")
def cosine_power_annealing(
    epochs: int,
    max_lr: float,
    min_lr: float,
    power: float,
    warmup_epochs: int = 0,
    start_epoch: int = 1,
    restart_lr: bool = True,
) -> np.ndarray:
    """Cosine Power Annealing (Hundt et al., sharpDARTS), one learning rate per epoch.

    Follows ``cnn/cosine_power_annealing.py`` as specified in spec section 5. With ``e' = e - W`` and
    ``E' = E - W`` (``W`` warmup epochs, ``e = 1..E``):

    1. ``c = (1 + cos(pi e' / E')) / 2``, the half cosine from 1 to 0;
    2. ``q = c`` if ``p == 1`` else ``q = p ** (c + 1)`` (which lies in ``[p, p^2]``);
    3. min-max normalise ``q`` over the whole array, so the largest value is 1 and the last epoch 0;
    4. warmup: epochs ``1..W+1`` get the linear ramp ``(1..W+1) / (W+1)``, reaching 1 at epoch ``W+1``;
    5. ``lr = min_lr + (max_lr - min_lr) * q``.

    After warmup this is the closed form
    ``lr(e) = min + (max - min) * (p ** (c + 1) - p) / (p**2 - p)``; without warmup epoch 1 is exactly
    ``max_lr``. The last epoch is exactly ``min_lr``. Larger ``p`` decays faster early and spends
    longer near ``min_lr``. Two edge cases: a single epoch (``E = 1``, where "first" and "last" coincide)
    is ``max_lr``; with ``W = E - 1`` the ramp covers every epoch, so the run ends at ``max_lr`` (as in the
    reference) and the last-epoch-is-``min_lr`` property needs ``W + 1 < E``.

    Args:
        epochs: total epochs ``E`` of the run (``1..MAX_EPOCHS``).
        max_lr: peak learning rate (reached at epoch ``W + 1``).
        min_lr: final learning rate (``0 <= min_lr <= max_lr``).
        power: the exponent base ``p`` (>= 1); 1 is plain (normalised) cosine.
        warmup_epochs: ``W``, with ``0 <= W < E``.
        start_epoch: first epoch of a resumed run (``1 <= start_epoch <= E``).
        restart_lr: when resuming (``start_epoch > 1``), True returns the whole curve from epoch 1 (the
            schedule restarts, as the reference's fine-tuning runs did); False returns the tail for
            epochs ``start_epoch..E`` (continuing where the run left off).

    Returns:
        float64 array: ``E`` values, or ``E - start_epoch + 1`` when ``restart_lr`` is False.

    Raises:
        ScheduleError: an argument breaks one of the rules above.

    Example:
        >>> lrs = cosine_power_annealing(120, 0.025, 1e-4, 2, warmup_epochs=5)
        >>> float(lrs[5]), float(lrs[-1])  # epoch W+1 = 6 and epoch 120
        (0.025, 0.0001)
    """
    epochs = _epochs_arg("epochs", epochs)
    max_lr, min_lr = _check_lr_range(max_lr, min_lr)
    power = _float_arg("power", power)
    if power < 1.0:
        raise ScheduleError("power", "must be >= 1", power)
    warmup_epochs = _int_arg("warmup_epochs", warmup_epochs, minimum=0)
    if warmup_epochs >= epochs:
        raise ScheduleError("warmup_epochs", "must be < epochs", (warmup_epochs, epochs),
                            f"{warmup_epochs=}, {epochs=}")  # fmt: skip
    start_epoch = _int_arg("start_epoch", start_epoch, minimum=1)
    if start_epoch > epochs:
        raise ScheduleError("start_epoch", "must be <= epochs", (start_epoch, epochs),
                            f"{start_epoch=}, {epochs=}")  # fmt: skip

    e = np.arange(1, epochs + 1, dtype=np.float64)
    # Shifting by W puts the cosine's peak (e' = 0) at epoch W+1; the W warmup epochs before it have
    # e' < 0, where c < 1, so they never become the maximum of the normalisation below.
    e_shift, span = e - warmup_epochs, float(epochs - warmup_epochs)
    c = (1.0 + np.cos(np.pi * e_shift / span)) / 2.0
    q = c if power == 1.0 else np.power(power, c + 1.0)
    lo, hi = q.min(), q.max()
    if hi > lo:
        q = (q - lo) / (hi - lo)
    else:
        # Only E = 1 without warmup: c(1) = c(E) = 0, so the range is empty; the run starts at max_lr.
        q = np.ones_like(q)
    if warmup_epochs > 0:
        # W+1 ramp values, the last of which (epoch W+1) is exactly 1.0 (the reference's ramp).
        q[: warmup_epochs + 1] = np.arange(1, warmup_epochs + 2, dtype=np.float64) / (warmup_epochs + 1)
    # min + (max - min) * 1 can land one ulp off max (about 2% of random rate pairs), so the peak is
    # pinned: "epoch W+1 is max_lr" then holds bit for bit. q == 0 already gives min_lr exactly.
    lrs = np.where(q == 1.0, max_lr, min_lr + (max_lr - min_lr) * q)
    if start_epoch > 1 and not restart_lr:
        lrs = lrs[start_epoch - 1 :]
    return lrs


@SCHEDULES.decorator("cosine")
def cosine(epochs: int, max_lr: float, min_lr: float) -> np.ndarray:
    """Plain cosine annealing as DARTS ran it: ``lr(e) = min + (max - min) * (1 + cos(pi e / E)) / 2``.

    These are the values of ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E, eta_min=min_lr)``
    with ``scheduler.step()`` called at the start of every epoch (``quark0/darts cnn/train_search.py``),
    so epoch ``e`` uses ``last_epoch = e``: epoch E is exactly ``min_lr`` and epoch 1 is a little below
    ``max_lr``. It is *not* min-max normalised; ``cosine_power_annealing(power=1)`` is, and differs by the
    factor ``1 / c(1)`` (see the module docstring).

    Args:
        epochs: total epochs ``E`` (``1..MAX_EPOCHS``).
        max_lr: the optimizer's initial learning rate (``T = 0`` of the cosine).
        min_lr: ``eta_min`` (``0 <= min_lr <= max_lr``).

    Returns:
        float64 array of ``E`` values.

    Raises:
        ScheduleError: an argument breaks one of the rules above.
    """
    epochs = _epochs_arg("epochs", epochs)
    max_lr, min_lr = _check_lr_range(max_lr, min_lr)
    e = np.arange(1, epochs + 1, dtype=np.float64)
    return min_lr + (max_lr - min_lr) * (1.0 + np.cos(np.pi * e / epochs)) / 2.0


@SCHEDULES.decorator("constant")
def constant(epochs: int, lr: float) -> np.ndarray:
    """The same learning rate every epoch.

    Args:
        epochs: total epochs (``1..MAX_EPOCHS``).
        lr: the rate (>= 0).

    Raises:
        ScheduleError: ``epochs < 1`` or a negative / non-finite ``lr``.
    """
    epochs = _epochs_arg("epochs", epochs)
    lr = _float_arg("lr", lr)
    if lr < 0.0:
        raise ScheduleError("lr", "must be >= 0", lr)
    return np.full(epochs, lr, dtype=np.float64)


def list_schedules() -> list[str]:
    """The registered schedule kinds (``cpa``, ``cosine``, ``constant``)."""
    return SCHEDULES.names()


def _parameters(kind: str) -> list[str]:
    """The keyword arguments (beyond ``epochs``) that the schedule ``kind`` accepts."""
    params = inspect.signature(SCHEDULES.get(kind)).parameters
    return [name for name in params if name != "epochs"]


def build_schedule(kind: str, epochs: int, **kwargs: Any) -> np.ndarray:
    """The per-epoch learning rates of the registered schedule ``kind``.

    Args:
        kind: a registered schedule (see :func:`list_schedules`).
        epochs: total epochs.
        **kwargs: the schedule's own arguments, e.g. ``max_lr``, ``min_lr``, ``power``, ``warmup_epochs``
            for ``cpa``; ``lr`` for ``constant``.

    Returns:
        float64 array, index ``e - 1`` holding epoch ``e``.

    Raises:
        UnknownNameError: ``kind`` is not registered (the message lists the known kinds).
        ScheduleError: an argument the schedule does not take, or a bad value.

    Example:
        >>> build_schedule("constant", 3, lr=0.1).tolist()
        [0.1, 0.1, 0.1]
    """
    fn = SCHEDULES.get(kind)
    accepted = _parameters(kind)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ScheduleError(f"schedule {kind!r}", f"unknown argument(s) {unknown}; it takes {accepted}",
                            unknown, None)  # fmt: skip
    return fn(epochs, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# the frozen description a config or checkpoint carries


# The registry is the only list of kinds; configs read this Literal from it (pydantic checks dicts with it).
ScheduleKind = Literal[tuple(SCHEDULES.names())]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ScheduleSpec:
    """What schedule a run uses, independent of its length (epochs come in when values are asked for).

    This is also the ``schedule`` of a training config (``trainers.config.ScheduleConfig`` is this class),
    so ``config.schedule.values(config.epochs)`` works. Fields a kind does not take are not used:
    ``power`` and ``warmup_epochs`` apply to ``cpa`` only, and ``constant`` runs at ``max_lr``.

    Values are checked, not converted: a spec written with ``power=2`` keeps the int, so a config's
    dict (and the trial id hashed from it) stays as written. ``2`` and ``2.0`` still compare and hash
    equal. Reading a config dict (``trainers.config``) turns ints into floats for the float fields.

    Args:
        kind: a registered schedule (``cpa``, ``cosine``, ``constant``).
        max_lr: peak (``cpa``), initial (``cosine``) or only (``constant``) learning rate.
        min_lr: final learning rate (``0 <= min_lr <= max_lr``).
        power: CPA exponent base ``p >= 1``.
        warmup_epochs: CPA warmup ``W >= 0`` (``W < epochs`` is checked when values are built).

    Raises:
        ScheduleError / UnknownNameError: on construction, for a bad field.
    """

    kind: ScheduleKind = "cpa"
    max_lr: float = 0.025
    min_lr: float = 1e-4
    power: float = 2.0
    warmup_epochs: int = 5

    def __post_init__(self) -> None:
        SCHEDULES.get(self.kind)  # unknown kinds fail here, listing the known ones
        _check_lr_range(self.max_lr, self.min_lr)
        if _float_arg("power", self.power) < 1.0:
            raise ScheduleError("power", "must be >= 1", float(self.power))
        _int_arg("warmup_epochs", self.warmup_epochs, minimum=0)

    def _kwargs(self) -> dict[str, Any]:
        available = {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "power": self.power,
            "warmup_epochs": self.warmup_epochs,
            "lr": self.max_lr,
        }
        return {name: available[name] for name in _parameters(self.kind) if name in available}

    def values(self, epochs: int) -> np.ndarray:
        """One learning rate per epoch for a run of ``epochs`` (a fresh array; index ``e - 1``)."""
        return np.array(_cached_values(self, epochs))

    def lr_at(self, epoch: int, *, epochs: int) -> float:
        """The learning rate to set at the start of ``epoch`` (counted from 1) of a run of ``epochs``.

        Raises:
            ScheduleError: ``epoch`` outside ``1..epochs``.
        """
        epoch = _int_arg("epoch", epoch, minimum=1)
        epochs = _epochs_arg("epochs", epochs)
        if epoch > epochs:
            raise ScheduleError("epoch", "must be <= epochs", (epoch, epochs), f"{epoch=}, {epochs=}")
        return _cached_values(self, epochs)[epoch - 1]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (checkpoints, result rows)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleSpec:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ScheduleError`` naming them."""
        if not isinstance(data, Mapping):
            raise ScheduleError("schedule", "must be a mapping", data)
        known = {"kind", "max_lr", "min_lr", "power", "warmup_epochs"}
        unknown = sorted(set(data) - known)
        if unknown:
            rule = f"unknown field(s) {unknown}; known fields: {sorted(known)}"
            raise ScheduleError("schedule", rule, unknown, None)
        return cls(**dict(data))


@functools.lru_cache(maxsize=64)
def _cached_values(spec: ScheduleSpec, epochs: int) -> tuple[float, ...]:
    # Trainers call lr_at once per epoch; caching keeps that O(1) for a 2000-epoch run. A tuple of
    # Python floats, so cached values can never be mutated by a caller.
    return tuple(float(v) for v in build_schedule(spec.kind, epochs, **spec._kwargs()))
