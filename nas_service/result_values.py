"""Values as the results store keeps them, and where they came from: JSON-able values, metrics, flattened
configs, arm ids, best and last epochs, hardware and package versions. No file I/O here (that is
:mod:`nas_service.results`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import numbers
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Literal

from .digests import canonical_json, digest

__all__ = ["ResultsError", "jsonable", "to_json", "metric_value", "utc", "ResultsSchemaError", "ResultsWarning", "flatten_config", "arm_id", "best_and_last",
           "hardware_description", "package_versions", "code_version"]  # fmt: skip


class ResultsError(ValueError):
    """A row, key or argument the results store cannot accept (the message names the rule and the value)."""


class ResultsSchemaError(ResultsError):
    """A part file written with a newer schema version than this reader understands."""


class ResultsWarning(UserWarning):
    """A part file that could not be read (e.g. truncated by a crash on a file system without rename)."""


# --------------------------------------------------------------------------------------------------------
# Values: metrics, configs, JSON


def jsonable(value: Any) -> Any:
    """Plain JSON data for `value`; objects with ``to_dict()`` (Genotype, HyperCuboidPath) become dicts."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        # Standard JSON has no NaN/Infinity (DuckDB and Spark JSON readers refuse them): write null.
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return jsonable(value.to_dict())
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch 0-d values
        return jsonable(value.item())
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise ResultsError(f"value must be JSON-serializable (numbers, strings, lists, dicts), got {value!r}")


def to_json(value: Any) -> str:
    # Sorted keys and no spaces: the same value always gives the same text (stable ids, cheap diffs).
    return canonical_json(jsonable(value))


def metric_value(name: str, value: Any) -> Any:
    """A metric as stored: numbers -> float, bools stay bools, text stays text, dicts/lists -> JSON text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return metric_value(name, value.item())
    try:
        return to_json(value)
    except ResultsError as err:
        raise ResultsError(f"metric {name!r}: {err}") from None


def _config_value(value: Any) -> Any:
    """A flattened config leaf: scalars keep their type, lists and objects become JSON text."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return _config_value(value.item())
    return to_json(value)


def flatten_config(config: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into dotted keys, one column per leaf.

    Nested mappings are joined with dots; lists, tuples and objects with ``to_dict()`` become JSON text
    (so a channel list stays one cell); an empty mapping becomes ``"{}"`` so it is not lost; scalars keep
    their Python type (numpy scalars become Python ones).

    Example::

        >>> flatten_config({"weighting": "max_w", "data": {"batch_size": 64}, "channels": [16, 32]},
        ...                prefix="config.")
        {'config.weighting': 'max_w', 'config.data.batch_size': 64, 'config.channels': '[16,32]'}

    Args:
        config: the resolved config.
        prefix: prepended to every key (the trial table uses ``"config."``).

    Returns:
        A flat dict in the config's own key order.

    Raises:
        ResultsError: two paths flatten to the same key (e.g. ``{"a.b": 1, "a": {"b": 2}}``), or a leaf is
            not JSON-serializable.
    """
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], path: str) -> None:
        for key, value in node.items():
            name = f"{path}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, f"{name}.")
                continue
            if name in out:
                raise ResultsError(f"config keys must flatten to distinct names, {name!r} appears twice")
            out[name] = to_json(value) if isinstance(value, Mapping) else _config_value(value)

    walk(config, prefix)
    return out


def _drop_seeds(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, (list, tuple)):
        return [_drop_seeds(v) for v in value]
    return value


def arm_id(stage: str, config: Mapping[str, Any]) -> str:
    """A stable id for a stage's configuration without the seed, so rows of one arm group over seeds.

    Every key named ``seed`` (at any depth) is dropped, the rest is hashed as canonical JSON.

    Returns:
        ``"<stage>:<12 hex digits>"``, the same on every machine and run for equal configs.
    """
    return f"{stage}:{digest(jsonable(_drop_seeds(config)), 12)}"


def best_and_last(
    epochs: Iterable[Mapping[str, Any]], *, metric: str, mode: Literal["max", "min"] = "max",
) -> tuple[int | None, dict[str, Any], dict[str, Any]]:
    """Pick the best and the last epoch of a trial's per-epoch metric dicts, for a trial row.

    Args:
        epochs: per-epoch metric dicts, each with an ``epoch`` key.
        metric: the metric that decides "best" (e.g. ``"valid_acc"``); NaN and missing values never win.
        mode: ``"max"`` or ``"min"``.

    Returns:
        ``(best_epoch, best_metrics, last_metrics)``; ``best_epoch`` is None (and ``best_metrics`` empty)
        when no epoch has a finite value for `metric`. Ties keep the earlier epoch.

    Raises:
        ResultsError: `mode` is not ``"max"``/``"min"`` or an epoch dict has no ``epoch``.
    """
    if mode not in ("max", "min"):
        raise ResultsError(f"mode must be 'max' or 'min', got {mode!r}")
    rows = list(epochs)
    for row in rows:
        if "epoch" not in row:
            raise ResultsError(f"every epoch dict needs an 'epoch' key, got keys {sorted(row)}")
    rows.sort(key=lambda r: int(r["epoch"]))
    best: Mapping[str, Any] | None = None
    for row in rows:
        value = row.get(metric)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            continue
        if best is None or (value > best[metric] if mode == "max" else value < best[metric]):
            best = row
    last = dict(rows[-1]) if rows else {}
    return (int(best["epoch"]) if best is not None else None), (dict(best) if best else {}), last


# --------------------------------------------------------------------------------------------------------
# Provenance


def _cpu_model() -> str | None:
    try:  # Linux only; elsewhere the core count alone is reported.
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:  # not the store: a local probe
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def hardware_description(*, cpus: int | None = None, gpus: Iterable[str] | None = None) -> str:
    """A short description of the hardware a trial ran on.

    Example: ``"cpu:2 cores (AMD EPYC 7B13) / 1x NVIDIA H100 80GB HBM3"``.

    Args:
        cpus: cores the trial had; default: the cores this process may run on.
        gpus: GPU names; default: the CUDA devices torch sees, if torch is already imported (this module
            never imports torch itself: it costs seconds and the store must stay light).

    Returns:
        The description, GPUs grouped by name.
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    model = _cpu_model()
    text = f"cpu:{cpus} cores" + (f" ({model})" if model else "")
    if gpus is None:
        gpus = []
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    names = list(gpus)
    if names:
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        text += " / " + ", ".join(f"{n}x {name}" for name, n in counts.items())
    return text


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that decide a result.

    Keys: ``python``, ``torch``, ``ray``, ``nas_service``, and ``code``: the git commit of the code
    (:func:`code_version`), else the package version.

    Read from installed package metadata (nothing is imported); a missing package gives None.
    """
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": version("torch"), "ray": version("ray"),
            "nas_service": version("nas-service"), "code": code_version() or version("nas-service")}  # fmt: skip


@lru_cache(maxsize=1)
def code_version() -> str | None:
    """The git commit the code runs from (``<sha>`` or ``<sha>-dirty``), or None outside a checkout
    (an installed wheel: then the package version says it)."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def utc(value: Any, field: str) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ResultsError(f"{field} must be an ISO 8601 timestamp, got {value!r}") from None
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        value = value.to_pydatetime()
    if not isinstance(value, dt.datetime):
        raise ResultsError(f"{field} must be a datetime or ISO 8601 text, got {value!r}")
    # A naive time is taken as UTC: the store only ever writes UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)
