"""The results store: every trial-epoch and every finished trial as Parquet, for pandas, DuckDB and Spark.

Layout (see ``docs/results_schema.md``)::

    <storage>/<experiment>/results/
        epochs/trial=<trial_id>/epoch=<epoch:05d>-attempt=<attempt>.parquet   one row per trial-epoch
        trials/trial=<trial_id>/attempt=<attempt>.parquet                     one row per finished trial

Why immutable part files keyed by (trial, epoch, attempt): the same code must work on a local disk, a
network file system and an object store. An object store has no atomic rename and no append, but a PUT of
one object is atomic; so every row is one small object whose name is derived from its key, written in one
``open_output_stream`` call, and never modified afterwards. A resumed trial writes under a higher attempt
instead of overwriting, and readers keep the highest attempt per key, so a crash and resume neither loses
nor duplicates a row. On file systems that do rename atomically (local disk, NFS through the local file
system, HDFS) the part is written under a hidden temp name first and then moved into place, because there
a plain write is visible to readers while it is half done. Readers ignore hidden names ('.' or '_').

Every access goes through :mod:`pyarrow.fs` (never ``open``/``os.replace``), so ``storage`` may be a local
path or any URI pyarrow understands (``file://``, ``s3://``, ``gs://``, ``hdfs://``).

One tiny Parquet file per epoch is the price of cheap, crash-safe, lock-free writes from many trials at
once; at our scale (hundreds to a few thousand epochs per experiment) reading them back takes well under a
second on local disk. Compaction into larger files (rewrite, then delete parts covered by the rewrite) can
come later without changing the schema or the dedup rule.

This module imports pandas and pyarrow, never ray or torch.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import numbers
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .location import ExperimentLocation, is_uri, name_problem
from .result_values import (  # noqa: F401  (re-exported: the store's public names)
    ResultsError,
    ResultsSchemaError,
    ResultsWarning,
    arm_id,
    best_and_last,
    flatten_config,
    hardware_description,
    metric_value,
    package_versions,
    to_json,
    utc,
)

__all__ = [
    "EXPORT_FORMATS",
    "RESULTS_SCHEMA_VERSION",
    "STATUSES",
    "TABLES",
    "TERMINAL_STATUSES",
    "ResultsError",
    "ResultsSchemaError",
    "ResultsStore",
    "ResultsWarning",
    "arm_id",
    "best_and_last",
    "epoch_columns",
    "flatten_config",
    "hardware_description",
    "package_versions",
    "read_epochs",
    "read_trials",
    "resolve_location",
    "serialize",
    "trial_columns",
]

# Bump only for changes an old reader would misread (a renamed or retyped column, a changed meaning, a new
# key or layout). Adding a nullable column is not a bump: readers take the union of columns.
RESULTS_SCHEMA_VERSION = 1
# The experiment's own description beside its tables: a leading '_' keeps Parquet readers off it.
EXPERIMENT_RECORD = "_experiment.json"
# A compacted part: per trial in its folder (when the trial ends), or for the whole table at the table's root
# (when the experiment is complete, or `nas-service compact`). It holds exactly the deduplicated rows of the
# parts it replaces, so while both exist (a kill between writing it and deleting them) readers get the same rows.
COMPACTED = "compacted.parquet"
# Unreadable parts a rerun set aside (nas_service.store_repair); hidden from readers by the leading "_".
DAMAGED_FOLDER = "_damaged"

TABLES = ("epochs", "trials")
STATUSES = ("finished", "diverged", "errored")
# A trial in one of these states is done for good: `finished` ran to the end, `diverged` (NaN loss) is
# recorded and never retried. `errored` trials are resumed from their checkpoint, so they are not done.
TERMINAL_STATUSES = frozenset({"finished", "diverged"})
EXPORT_FORMATS = ("csv", "parquet", "json")

TableName = Literal["epochs", "trials"]
ExportFormat = Literal["csv", "parquet", "json"]

_UTC_TS = pa.timestamp("us", tz="UTC")
_META_VERSION = b"nas_service.results.schema_version"
_META_TABLE = b"nas_service.results.table"

# Fixed columns, in the order readers return them. Dynamic columns (metrics, config.*, best.*, last.*,
# extra.*) follow, sorted by name within their group.
_EPOCH_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("schema_version", pa.int32()),
    ("experiment", pa.string()),
    ("stage", pa.string()),
    ("trial_id", pa.string()),
    ("attempt", pa.int64()),
    ("seed", pa.int64()),
    ("epoch", pa.int64()),
    ("written_at", _UTC_TS),
)
_TRIAL_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("schema_version", pa.int32()),
    ("experiment", pa.string()),
    ("stage", pa.string()),
    ("stage_kind", pa.string()),
    ("trial_id", pa.string()),
    ("attempt", pa.int64()),
    ("arm", pa.string()),
    ("seed", pa.int64()),
    ("status", pa.string()),
    ("lineage_trial_id", pa.string()),
    ("lineage_stage", pa.string()),
    ("protocol", pa.string()),
    ("genotype_json", pa.string()),
    ("path_json", pa.string()),
    ("params", pa.int64()),
    ("multiply_adds", pa.int64()),
    ("epochs_completed", pa.int64()),
    ("best_epoch", pa.int64()),
    ("best_metric", pa.string()),
    ("wall_seconds", pa.float64()),
    ("cpu_seconds", pa.float64()),
    ("gpu_seconds", pa.float64()),
    ("hardware", pa.string()),
    ("version.python", pa.string()),
    ("version.torch", pa.string()),
    ("version.ray", pa.string()),
    ("version.nas_service", pa.string()),
    ("version.code", pa.string()),
    ("checkpoint", pa.string()),
    ("finished_at", _UTC_TS),
    ("error", pa.string()),
    ("config_json", pa.string()),
)
_FIXED = {"epochs": _EPOCH_FIELDS, "trials": _TRIAL_FIELDS}
# Dedup key and tie-breaks per table: the row with the highest attempt (then the latest time) wins.
_KEYS = {"epochs": ("trial_id", "epoch"), "trials": ("trial_id",)}
_TIEBREAK = {"epochs": ("attempt", "written_at"), "trials": ("attempt", "finished_at")}
_ORDER = {"epochs": ("stage", "trial_id", "epoch"), "trials": ("stage", "trial_id")}
# Dynamic column groups of the trial table, in output order; anything else sorts after them.
_TRIAL_GROUPS = ("config.", "best.", "last.", "extra.")

# Keys a trial row may carry (besides the fixed identity ones the store fills in). Anything else is a typo
# or belongs under `extra`; rejecting it keeps a misspelt field from becoming a silent new column.
_TRIAL_ROW_KEYS = frozenset({
    "stage", "stage_kind", "status", "seed", "arm", "lineage_trial_id", "lineage_stage", "protocol",
    "genotype", "genotype_json", "path", "path_json", "params", "multiply_adds", "epochs_completed", "best_epoch",
    "best_metric", "best", "last", "wall_seconds", "cpu_seconds", "gpu_seconds", "hardware", "versions",
    "checkpoint", "finished_at", "error", "config", "extra",
    "trial_id", "attempt", "experiment", "schema_version",
})  # fmt: skip
_VERSION_KEYS = ("python", "torch", "ray", "nas_service", "code")

# --------------------------------------------------------------------------------------------------------
# Locations


def resolve_location(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """Turn a local path or a storage URI into a pyarrow file system and a path inside it.

    Args:
        location: a local path (relative paths and ``~`` are made absolute) or a URI pyarrow understands
            (``file:///abs/path``, ``s3://bucket/prefix``, ``gs://...``, ``hdfs://host:port/path``).
            URIs must be percent-encoded (a space is ``%20``).

    Returns:
        ``(filesystem, path)`` with no trailing slash on the path.

    Raises:
        ResultsError: the location is empty or pyarrow cannot parse the URI.
    """
    text = os.fspath(location)
    if not text:
        raise ResultsError("storage location must be a non-empty path or URI, got ''")
    if is_uri(text):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, ValueError) as err:
            raise ResultsError(f"storage URI must be one pyarrow understands, got {text!r}: {err}") from err
    else:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    return fs, (path.rstrip("/") or "/")


def _join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/") if head != "/" else "", *(p.strip("/") for p in rest)])


def _supports_atomic_rename(fs: pafs.FileSystem) -> bool:
    """Whether a move within one folder is atomic, so temp-then-move hides half-written parts.

    Object stores (S3, GCS, Azure) are deliberately absent: their "move" is copy plus delete, but a single
    PUT is atomic, which is all we need. Unknown file systems get the PUT path too.
    """
    if isinstance(fs, pafs.SubTreeFileSystem):
        return _supports_atomic_rename(fs.base_fs)
    hdfs = getattr(pafs, "HadoopFileSystem", None)
    return isinstance(fs, pafs.LocalFileSystem) or (hdfs is not None and isinstance(fs, hdfs))


def _check_name(kind: str, value: Any) -> str:
    # Trial ids and experiment names become folder names: the one rule of names (nas_service.location), which
    # the spec's names follow too, so a name that `validate` accepts is one the store takes.
    problem = name_problem(value)
    if problem is not None:
        raise ResultsError(f"{kind} {problem}, got {value!r}")
    return value


def _check_count(kind: str, value: Any, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ResultsError(f"{kind} must be a non-negative integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------------
# Arrow tables


def _value_type(value: Any) -> pa.DataType:
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def _one_row(table: TableName, row: Mapping[str, Any]) -> pa.Table:
    fixed = _FIXED[table]
    fixed_names = {name for name, _ in fixed}
    fields = [pa.field(name, typ) for name, typ in fixed]
    fields += [pa.field(name, _value_type(row[name]))
               for name in _dynamic_order(table, row) if name not in fixed_names]
    schema = pa.schema(fields, metadata={_META_VERSION: str(RESULTS_SCHEMA_VERSION).encode(),
                                         _META_TABLE: table.encode()})  # fmt: skip
    return pa.Table.from_pylist([dict(row)], schema=schema)


def _dynamic_order(table: str, names: Iterable[str]) -> list[str]:
    fixed = [name for name, _ in _FIXED[table]]
    rest = sorted(set(names) - set(fixed))
    if table == "trials":
        def group(name: str) -> int:
            return next((i for i, p in enumerate(_TRIAL_GROUPS) if name.startswith(p)), len(_TRIAL_GROUPS))
        rest.sort(key=lambda n: (group(n), n))
    return fixed + rest


def _empty(table: str) -> pa.Table:
    return pa.schema([pa.field(n, t) for n, t in _FIXED[table]]).empty_table()


def _target_type(types: list[pa.DataType]) -> pa.DataType:
    """The one type a column gets when parts disagree (a metric that was null in one epoch, int vs float)."""
    distinct = list(dict.fromkeys(t for t in types if not pa.types.is_null(t)))
    if not distinct:
        return pa.null()
    if len(distinct) == 1:
        return distinct[0]
    if all(pa.types.is_integer(t) for t in distinct):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
        return pa.float64()
    if all(pa.types.is_timestamp(t) for t in distinct):
        return _UTC_TS
    return pa.string()  # mixed kinds (e.g. bool and text): text keeps every value readable


def _unified_schema(table: str, schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for parts whose columns differ: the union of columns in the table's order, each column's
    type reconciled by :func:`_target_type`; the store's metadata (schema version, table) attached."""
    types: dict[str, list[pa.DataType]] = {name: [typ] for name, typ in _FIXED[table]}
    for schema in schemas:
        for field in schema:
            types.setdefault(field.name, []).append(field.type)
    target = {name: _target_type(ts) for name, ts in types.items()}
    return pa.schema([pa.field(name, target[name]) for name in _dynamic_order(table, target)],
                     metadata={_META_VERSION: str(RESULTS_SCHEMA_VERSION).encode(), _META_TABLE: table.encode()})


def _pandas_type(typ: pa.DataType) -> Any:
    # Nullable integer and boolean dtypes, so a seed or an epoch stays an integer even beside nulls.
    if pa.types.is_integer(typ):
        return pd.Int64Dtype()
    if pa.types.is_boolean(typ):
        return pd.BooleanDtype()
    return None


def _deduplicated(table: str, data: pa.Table) -> pa.Table:
    """The winning row per key, in the table's row order, types untouched: the highest attempt wins; a tie
    (the same key written twice) keeps the later write."""
    if data.num_rows == 0:
        return data
    key, tiebreak, order = list(_KEYS[table]), list(_TIEBREAK[table]), list(_ORDER[table])
    frame = data.select(list(dict.fromkeys(key + tiebreak + order))).to_pandas(types_mapper=_pandas_type)
    frame["_row"] = range(len(frame))
    frame = frame.sort_values(key + tiebreak, kind="stable", na_position="first").drop_duplicates(key, keep="last")
    return data.take(frame.sort_values(order, kind="stable")["_row"].to_numpy())


def _to_frame(table: str, data: pa.Table) -> pd.DataFrame:
    return _deduplicated(table, data).to_pandas(types_mapper=_pandas_type)


# --------------------------------------------------------------------------------------------------------
# The store


class ResultsStore:
    """Parquet results of one experiment under ``<location>/<experiment>/results/``.

    Example::

        store = ResultsStore("runs", "quickstart")            # or "s3://bucket/runs", "file:///abs/runs"
        store.write_epoch("t1", 0, {"stage": "search", "seed": 0, "epoch": 0, "valid_acc": 0.9})
        store.write_trial("t1", 0, {"stage": "search", "status": "finished", "config": {...}})
        store.epochs(), store.trials()                       # deduplicated DataFrames

    Args:
        location: storage root, a local path or a URI (see :func:`resolve_location`); with `filesystem`, a
            path inside that file system.
        experiment: the experiment name (a folder name).
        filesystem: an explicit pyarrow file system (tests, or a configured S3FileSystem with credentials).

    Raises:
        ResultsError: bad location or experiment name.
    """

    def __init__(self, location: str | os.PathLike[str], experiment: str, *,
                 filesystem: pafs.FileSystem | None = None) -> None:  # fmt: skip
        if filesystem is None:
            self.filesystem, base = resolve_location(location)
        else:
            text = os.fspath(location)
            self.filesystem, base = filesystem, text.rstrip("/") or ("/" if text.startswith("/") else "")
        self.experiment = _check_name("experiment", experiment)
        self.root = _join(base, experiment, "results") if base else _join(experiment, "results")
        self._atomic_rename = _supports_atomic_rename(self.filesystem)
        self._made_dirs: set[str] = set()

    @classmethod
    def of(cls, location: ExperimentLocation) -> ResultsStore:
        """The store of an experiment's :class:`~nas_service.location.ExperimentLocation`."""
        return cls(location.storage, location.name)

    @classmethod
    def from_experiment_path(cls, path: str | os.PathLike[str]) -> ResultsStore:
        """The store of an experiment folder given as one path or URI.

        Example: ``ResultsStore.from_experiment_path("s3://bucket/runs/quickstart")``.
        """
        fs, full = resolve_location(path)
        base, _, experiment = full.rpartition("/")
        if not base and full.startswith("/"):
            base = "/"  # an experiment folder at the root of a local disk
        return cls(base, experiment, filesystem=fs)

    def experiment_exists(self) -> bool:
        """Whether the experiment's folder exists and holds ``results/`` (every run writes it as it starts),
        so readers refuse a path that names no experiment: a typo, or a folder such as ``/etc``."""
        return self.filesystem.get_file_info(self.root).type == pafs.FileType.Directory

    def __repr__(self) -> str:
        return f"ResultsStore({self.root!r}, filesystem={self.filesystem.type_name})"

    # ---- writing

    def write_epoch(self, trial_id: str, attempt: int, row: Mapping[str, Any]) -> str:
        """Write one trial-epoch row as its own immutable part file.

        Args:
            trial_id: the trial's deterministic id.
            attempt: which run of the trial wrote it; must grow when a trial resumes, so a rewritten epoch
                replaces the old one at read time.
            row: ``stage`` and ``epoch`` (required), ``seed`` (optional), and every metric of the epoch.
                Numbers are stored as float64, bools as bool, text as text, dicts/lists (e.g. a genotype)
                as JSON text. ``experiment``, ``trial_id``, ``attempt`` may be present if they agree.

        Returns:
            The part's path inside the store's file system.

        Raises:
            ResultsError: a missing or invalid identity field, or a metric that cannot be stored.
        """
        _check_name("trial_id", trial_id)
        attempt = _check_count("attempt", attempt)  # type: ignore[assignment]
        values = dict(row)
        self._check_identity(values, trial_id, attempt)
        stage = values.pop("stage", None)
        if not isinstance(stage, str) or not stage:
            raise ResultsError(f"epoch row needs a non-empty 'stage', got {stage!r}")
        epoch = _check_count("epoch", values.pop("epoch", None))
        seed = _check_count("seed", values.pop("seed", None), nullable=True)
        record: dict[str, Any] = {
            "schema_version": RESULTS_SCHEMA_VERSION, "experiment": self.experiment, "stage": stage,
            "trial_id": trial_id, "attempt": attempt, "seed": seed, "epoch": epoch,
            "written_at": dt.datetime.now(dt.timezone.utc),
        }  # fmt: skip
        for name, value in values.items():
            if not isinstance(name, str) or not name:
                raise ResultsError(f"metric names must be non-empty strings, got {name!r}")
            if name in record:
                raise ResultsError(f"metric {name!r} collides with a fixed column of the epoch table")
            record[name] = metric_value(name, value)
        return self._put("epochs", trial_id, f"epoch={epoch:05d}-attempt={attempt}.parquet",
                         _one_row("epochs", record))  # fmt: skip

    def write_trial(self, trial_id: str, attempt: int, row: Mapping[str, Any]) -> str:
        """Write the row of a trial that ended (finished, diverged or errored) as an immutable part file.

        Args:
            trial_id: the trial's deterministic id.
            attempt: which run of the trial ended; a later attempt replaces this row at read time.
            row: ``stage`` and ``status`` (required) and any of: ``stage_kind``, ``seed`` (default:
                ``config["seed"]``), ``config`` (the full resolved config: stored as ``config_json`` and as
                flattened ``config.*`` columns), ``arm`` (default: :func:`arm_id` of stage and config),
                ``lineage_trial_id``, ``lineage_stage``, ``protocol``, ``genotype``/``path`` (an object with
                ``to_dict()``, a dict or JSON text), ``params``, ``epochs_completed``, ``best_epoch``,
                ``best_metric``, ``best``/``last`` (metric dicts at those epochs: their numeric entries
                become ``best.<name>``/``last.<name>``), ``wall_seconds``, ``cpu_seconds``,
                ``gpu_seconds``, ``hardware`` (default: :func:`hardware_description`), ``versions``
                (overrides of :func:`package_versions`), ``checkpoint``, ``finished_at`` (default: now,
                UTC), ``error``, ``extra`` (a dict stored as ``extra.<name>`` columns).

        Returns:
            The part's path inside the store's file system.

        Raises:
            ResultsError: an unknown key (listing the known ones), a bad status, or an invalid value.
        """
        _check_name("trial_id", trial_id)
        attempt = _check_count("attempt", attempt)  # type: ignore[assignment]
        values = dict(row)
        unknown = sorted(set(values) - _TRIAL_ROW_KEYS, key=str)
        if unknown:
            raise ResultsError(f"trial row keys must be among {sorted(_TRIAL_ROW_KEYS)}; unknown: {unknown}"
                               " (put anything else under 'extra')")  # fmt: skip
        self._check_identity(values, trial_id, attempt)
        stage = values.get("stage")
        if not isinstance(stage, str) or not stage:
            raise ResultsError(f"trial row needs a non-empty 'stage', got {stage!r}")
        status = values.get("status")
        if status not in STATUSES:
            raise ResultsError(f"trial status must be one of {list(STATUSES)}, got {status!r}")
        config = values.get("config") or {}
        if not isinstance(config, Mapping):
            raise ResultsError(f"trial 'config' must be a mapping, got {type(config).__name__}")
        seed = values.get("seed", config.get("seed"))
        versions = {**package_versions(), **(values.get("versions") or {})}

        record: dict[str, Any] = {
            "schema_version": RESULTS_SCHEMA_VERSION, "experiment": self.experiment, "stage": stage,
            "stage_kind": _opt_text("stage_kind", values.get("stage_kind")), "trial_id": trial_id,
            "attempt": attempt, "arm": values.get("arm") or arm_id(stage, config),
            "seed": _check_count("seed", seed, nullable=True), "status": status,
            "lineage_trial_id": _opt_text("lineage_trial_id", values.get("lineage_trial_id")),
            "lineage_stage": _opt_text("lineage_stage", values.get("lineage_stage")),
            "protocol": _opt_text("protocol", values.get("protocol")),
            "genotype_json": _architecture_json("genotype", values),
            "path_json": _architecture_json("path", values),
            "params": _check_count("params", values.get("params"), nullable=True),
            "multiply_adds": _check_count("multiply_adds", values.get("multiply_adds"), nullable=True),
            "epochs_completed": _check_count("epochs_completed", values.get("epochs_completed"),
                                             nullable=True),
            "best_epoch": _check_count("best_epoch", values.get("best_epoch"), nullable=True),
            "best_metric": _opt_text("best_metric", values.get("best_metric")),
            "wall_seconds": _opt_float("wall_seconds", values.get("wall_seconds")),
            "cpu_seconds": _opt_float("cpu_seconds", values.get("cpu_seconds")),
            "gpu_seconds": _opt_float("gpu_seconds", values.get("gpu_seconds")),
            "hardware": _opt_text("hardware", values.get("hardware") or hardware_description()),
            **{f"version.{k}": _opt_text(f"versions.{k}", versions.get(k)) for k in _VERSION_KEYS},
            "checkpoint": _opt_text("checkpoint", values.get("checkpoint")),
            "finished_at": utc(values.get("finished_at"), "finished_at"),
            "error": _opt_text("error", values.get("error")),
            "config_json": to_json(config),
        }  # fmt: skip
        record.update(flatten_config(config, prefix="config."))
        for which in ("best", "last"):
            metrics = values.get(which) or {}
            if not isinstance(metrics, Mapping):
                raise ResultsError(f"trial '{which}' must map metric names to values, got {metrics!r}")
            for name, value in metrics.items():
                # Numbers only: a genotype at the best epoch lives in genotype_json, text has no mean.
                if isinstance(value, numbers.Real) and not isinstance(value, bool):
                    record[f"{which}.{name}"] = float(value)
        for name, value in (values.get("extra") or {}).items():
            record[f"extra.{name}"] = metric_value(f"extra.{name}", value)
        return self._put("trials", trial_id, f"attempt={attempt}.parquet", _one_row("trials", record))

    def _check_identity(self, values: dict[str, Any], trial_id: str, attempt: int) -> None:
        # The store owns these columns; a row may repeat them (e.g. a dict built for logging) but must agree.
        expected = {"trial_id": trial_id, "attempt": attempt, "experiment": self.experiment,
                    "schema_version": RESULTS_SCHEMA_VERSION}  # fmt: skip
        for name, want in expected.items():
            if name in values:
                got = values.pop(name)
                if got != want:
                    raise ResultsError(
                        f"row field {name!r} must equal {want!r} (set by the store), got {got!r}")

    def _put(self, table: str, trial_id: str, file_name: str, data: pa.Table) -> str:
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink)
        return self._write_atomic(_join(self.root, table, f"trial={trial_id}"), file_name, sink.getvalue())

    def _write_atomic(self, folder: str, file_name: str, payload: bytes | pa.Buffer) -> str:
        final = _join(folder, file_name)
        if folder not in self._made_dirs:
            # Object stores need no folders, but local, mock and HDFS file systems do; once per folder.
            self.filesystem.create_dir(folder, recursive=True)
            self._made_dirs.add(folder)
        if not self._atomic_rename:
            # One PUT: an object store makes it visible whole or not at all. No rename, no delete.
            with self.filesystem.open_output_stream(final) as out:
                out.write(payload)
            return final
        # A hidden temp name in the same folder, then an atomic rename: readers never see half a file,
        # and a crash leaves only a hidden leftover that readers skip.
        temp = _join(folder, f".{file_name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.filesystem.open_output_stream(temp) as out:
                out.write(payload)
            self.filesystem.move(temp, final)
        except BaseException:
            try:
                self.filesystem.delete_file(temp)  # our own temp file, never a part
            except OSError:
                pass
            raise
        return final

    def write_experiment_record(self, record: Mapping[str, Any]) -> str:
        """Keeps what a report needs besides the rows (the resolved spec, the package versions) as
        ``results/_experiment.json``; rewritten whole by every run, so it describes the latest one."""
        payload = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        return self._write_atomic(self.root, EXPERIMENT_RECORD, payload)

    def experiment_record(self) -> dict[str, Any] | None:
        """The record :meth:`write_experiment_record` kept, or None (a store written before it existed)."""
        path = _join(self.root, EXPERIMENT_RECORD)
        if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.filesystem.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    # ---- reading

    def part_paths(self, table: TableName, *, trial_ids: Iterable[str] | None = None) -> list[str]:
        """The visible part files of `table` (hidden and temp names skipped), sorted.

        Args:
            table: ``"epochs"`` or ``"trials"``.
            trial_ids: only these trials' folders (cheap: nothing else is listed).
        """
        _check_table(table)
        base = _join(self.root, table)
        folders = [base] if trial_ids is None else [_join(base, f"trial={_check_name('trial_id', t)}")
                                                    for t in trial_ids]  # fmt: skip
        paths = []
        if trial_ids is not None and self.filesystem.get_file_info(_join(base, COMPACTED)).type == pafs.FileType.File:
            paths.append(_join(base, COMPACTED))  # the table-wide part holds rows of every trial
        for folder in folders:
            selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
            for info in self.filesystem.get_file_info(selector):
                if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                    continue
                relative = info.path[len(base):].strip("/").split("/")
                if any(part.startswith((".", "_")) for part in relative):
                    continue
                paths.append(info.path)
        return sorted(paths)

    def read_table(self, table: TableName, *, trial_ids: Iterable[str] | None = None,
                   stages: Iterable[str] | None = None,
                   on_bad_part: Literal["warn", "raise"] = "warn") -> pa.Table:  # fmt: skip
        """Every visible part of `table`, concatenated (not deduplicated) in one unified schema.

        Read with :mod:`pyarrow.dataset`: each part's footer is read once (concurrently: an object store
        answers each request with latency), the parts' schemas are unified (the union of columns, types
        reconciled), and the trial and stage filters are pushed down to the row groups, so only the asked
        rows of a table-wide compacted file are decoded.

        Args:
            table: ``"epochs"`` or ``"trials"``.
            trial_ids: only these trials (and only their folders are listed).
            stages: only these stages' rows.
            on_bad_part: an unreadable part (e.g. truncated on a file system without atomic writes), or a
                foreign one (a Parquet file without the table's identity columns, or marked as the other
                table's), is skipped with a :class:`ResultsWarning` (``"warn"``) or raises (``"raise"``).

        Raises:
            ResultsSchemaError: a part was written by a newer schema version than this reader knows.
        """
        if on_bad_part not in ("warn", "raise"):
            raise ResultsError(f"on_bad_part must be 'warn' or 'raise', got {on_bad_part!r}")
        wanted = None if trial_ids is None else sorted(set(trial_ids))
        rows = None if wanted is None else pc.field("trial_id").isin(wanted)
        if stages is not None:
            in_stages = pc.field("stage").isin(sorted(set(stages)))
            rows = in_stages if rows is None else rows & in_stages
        for _ in range(5):
            paths = self.part_paths(table, trial_ids=wanted)
            found = self._fragments(table, paths)
            try:
                return self._scan(table, paths, found, rows, on_bad_part)
            except FileNotFoundError:
                pass  # a compaction deleted parts after we listed them: their rows are in the part it wrote
        raise ResultsError(f"results parts of {table} kept vanishing while being read (a compaction loop?)")

    def _fragments(self, table: str, paths: list[str]) -> list[ds.ParquetFileFragment | Exception]:
        """Each part as a dataset fragment with its footer read (concurrently), or the error reading it
        (a foreign part: the :class:`ResultsError` saying why; a part gone meanwhile: FileNotFoundError)."""
        parquet = ds.ParquetFileFormat()

        def footer(path: str) -> ds.ParquetFileFragment | Exception:
            try:
                fragment = parquet.make_fragment(path, filesystem=self.filesystem)
                fragment.ensure_complete_metadata()
            except (pa.ArrowException, OSError) as err:
                if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                    return FileNotFoundError(path)
                return err
            return _foreign(table, fragment.physical_schema) or fragment

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(paths)))) as pool:
            return list(pool.map(footer, paths))

    def _scan(self, table: str, paths: list[str], found: list[Any], rows: Any, on_bad_part: str) -> pa.Table:
        """The rows of the readable fragments matching ``rows`` (a dataset filter), in one schema."""
        if any(isinstance(f, FileNotFoundError) for f in found):
            raise FileNotFoundError("a part vanished")
        good: list[tuple[str, ds.ParquetFileFragment]] = []
        for path, fragment in zip(paths, found):
            if isinstance(fragment, Exception):
                self._bad_part(table, path, fragment, on_bad_part)
            else:
                _check_version(path, fragment)
                good.append((path, fragment))
        if not good:
            return _empty(table)
        schema = _unified_schema(table, (f.physical_schema for _, f in good))

        def scan(fragments: list[ds.ParquetFileFragment]) -> pa.Table:
            dataset = ds.FileSystemDataset(fragments, schema, ds.ParquetFileFormat(), self.filesystem)
            return dataset.to_table(filter=rows)

        try:
            return scan([f for _, f in good])
        except (pa.ArrowException, OSError):
            pass  # damage past a footer (a data page): find the part that has it, one part at a time
        parts = []
        for path, fragment in good:
            try:
                parts.append(scan([fragment]))
            except (pa.ArrowException, OSError) as err:
                if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                    raise FileNotFoundError(path) from err
                self._bad_part(table, path, err, on_bad_part)
        return pa.concat_tables(parts) if parts else _empty(table)

    @staticmethod
    def _bad_part(table: str, path: str, err: Exception, on_bad_part: str) -> None:
        if on_bad_part == "raise":
            rule = f"must be a readable Parquet file of the {table} table"
            raise ResultsError(f"results part {path!r} {rule}: {err}") from err
        warnings.warn(f"skipping results part {path!r}: {err}", ResultsWarning, stacklevel=4)

    def epochs(self, *, trial_ids: Iterable[str] | None = None, stages: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per (trial_id, epoch), the highest attempt winning, sorted by stage, trial_id, epoch.

        Columns: the fixed ones of :func:`epoch_columns`, then every metric seen in any part, by name.
        """
        return _to_frame("epochs", self.read_table("epochs", trial_ids=trial_ids, stages=stages))

    def trials(self, *, trial_ids: Iterable[str] | None = None, stages: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per trial_id, the highest attempt winning, sorted by stage, trial_id.

        Columns: the fixed ones of :func:`trial_columns`, then ``config.*``, ``best.*``, ``last.*``,
        ``extra.*``, each by name.
        """
        return _to_frame("trials", self.read_table("trials", trial_ids=trial_ids, stages=stages))

    def trial_statuses(self) -> dict[str, str]:
        """The latest status of every trial that has a trial row: ``{trial_id: status}``."""
        frame = self.trials()
        return dict(zip(frame["trial_id"], frame["status"]))

    def finished_trial_ids(self) -> set[str]:
        """Trials done for good (status in :data:`TERMINAL_STATUSES`: finished, or diverged which is not
        retried), i.e. the ones a resumed run must not start again. Errored trials are not included."""
        return {t for t, status in self.trial_statuses().items() if status in TERMINAL_STATUSES}

    def unreadable_parts(self, table: TableName) -> list[tuple[str, str]]:
        """``(path, why)`` of each part of ``table`` that exists but is not readable Parquet (truncated,
        zeroed, garbage). Foreign files (readable, but not this table's) are not included: they are someone
        else's, reported and skipped by :meth:`read_table`, never moved."""
        paths = self.part_paths(table)
        found = []
        for path, part in zip(paths, self._fragments(table, paths)):
            if not isinstance(part, Exception):
                try:  # the footer reads; the data pages must too
                    ds.FileSystemDataset([part], part.physical_schema, ds.ParquetFileFormat(), self.filesystem).to_table()
                    continue
                except (pa.ArrowException, OSError) as err:
                    part = err
            if not isinstance(part, (ResultsError, FileNotFoundError)):  # foreign, or compacted away meanwhile
                found.append((path, str(part).splitlines()[0] if str(part) else type(part).__name__))
        return found

    def set_aside(self, path: str) -> str:
        """Moves a part to ``results/_damaged/`` (same relative path; readers skip ``_`` folders), so its
        bytes are kept for whoever investigates while no reader or compaction trips over it again."""
        if not path.startswith(self.root + "/"):
            raise ResultsError(f"set_aside: {path!r} is not under this store's results folder {self.root!r}")
        target = _join(self.root, DAMAGED_FOLDER, path[len(self.root) + 1:])
        folder = target.rpartition("/")[0]
        self.filesystem.create_dir(folder, recursive=True)
        self.filesystem.move(path, target)
        return target

    # ---- compaction

    def compact_trial(self, trial_id: str) -> int:
        """Rewrites one trial's parts of each table as one part in its folder (``compacted.parquet``) and
        deletes the parts it replaces; returns how many parts went. Run it once the trial has ended.

        Safe under a kill at any instant: the compacted part is written whole (atomic rename or one PUT)
        before any part is deleted, and it holds the same deduplicated rows, so readers see the same table
        whether or not the deletes happened; a rerun finishes the job.
        """
        _check_name("trial_id", trial_id)
        removed = 0
        for table in TABLES:
            folder = _join(self.root, table, f"trial={trial_id}")
            paths = [p for p in self.part_paths(table, trial_ids=[trial_id]) if p.startswith(folder + "/")]
            if not paths or paths == [_join(folder, COMPACTED)]:
                continue
            removed += self._replace_parts(table, paths, folder)
        return removed

    def compact(self) -> dict[str, int]:
        """Rewrites each table as one part at the table's root (``<table>/compacted.parquet``, every column in
        one schema, so plain Parquet readers see them all) and deletes the parts it replaces; returns how
        many parts went per table. As safe under a kill as :meth:`compact_trial`; parts written while it runs
        (a running experiment) are kept and read beside it."""
        out = {}
        for table in TABLES:
            paths = self.part_paths(table)
            root_part = _join(self.root, table, COMPACTED)
            out[table] = 0 if paths in ([], [root_part]) else self._replace_parts(table, paths, _join(self.root, table))
        return out

    def _replace_parts(self, table: str, paths: list[str], folder: str) -> int:
        """Writes the deduplicated rows of ``paths`` as ``folder/compacted.parquet``, then deletes the others."""
        data = self._read_parts(table, paths)
        meta = {_META_VERSION: str(RESULTS_SCHEMA_VERSION).encode(), _META_TABLE: table.encode()}
        data = _deduplicated(table, data).replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink, row_group_size=64 * 1024)
        target = self._write_atomic(folder, COMPACTED, sink.getvalue())
        removed = 0
        for path in paths:
            if path == target:
                continue
            try:
                self.filesystem.delete_file(path)
                removed += 1
            except FileNotFoundError:
                pass  # another compaction got there first
        if isinstance(self.filesystem, pafs.LocalFileSystem):  # object stores have no folders to leave behind
            for emptied in {p.rpartition("/")[0] for p in paths} - {folder}:
                if not self.filesystem.get_file_info(pafs.FileSelector(emptied, allow_not_found=True)):
                    self.filesystem.delete_dir(emptied)
                    self._made_dirs.discard(emptied)  # a later write into it must create it again
        return removed

    def _read_parts(self, table: str, paths: list[str]) -> pa.Table:
        """The parts, unified; an unreadable or foreign part stops a compaction rather than being dropped
        with it (or folded in)."""
        found = self._fragments(table, paths)
        for path, part in zip(paths, found):
            if isinstance(part, ResultsError):
                raise ResultsError(f"results part {path!r} cannot be compacted: {part}; move it out of results/")
        return self._scan(table, paths, found, None, "raise")

    def export(self, table: TableName, destination: str | os.PathLike[str], *,
               format: ExportFormat | None = None) -> str:  # fmt: skip
        """Write the deduplicated `table` to one file (local path or URI).

        Args:
            table: ``"epochs"`` or ``"trials"``.
            destination: the file to write; its parent folder is created.
            format: ``"csv"``, ``"parquet"`` or ``"json"`` (records); default: from the file extension.

        Returns:
            The written path inside its file system.

        Raises:
            ResultsError: unknown table or format.
        """
        _check_table(table)
        fmt = format or os.path.splitext(os.fspath(destination))[1].lstrip(".").lower()
        frame = self.epochs() if table == "epochs" else self.trials()
        payload = serialize(frame, fmt)  # type: ignore[arg-type]
        fs, path = resolve_location(destination)
        parent = path.rpartition("/")[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(payload)
        return path


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ResultsError(f"table must be one of {list(TABLES)}, got {table!r}")


# The columns every part of a table has held since the first schema: a Parquet file without them is not a
# part of the table (a file dropped into results/ by hand, or by another tool), and read as one it would
# become a row of nulls with stray columns.
_IDENTITY = {"epochs": ("stage", "trial_id", "attempt", "epoch"), "trials": ("stage", "trial_id", "attempt")}


def _foreign(table: str, schema: pa.Schema) -> ResultsError | None:
    """Why a part with this ``schema`` is not a part of ``table`` (None when it is one)."""
    marked = (schema.metadata or {}).get(_META_TABLE)
    if marked is not None and marked != table.encode():
        return ResultsError(f"it is marked as a part of the {marked.decode(errors='replace')!r} table, "
                            f"not of {table!r}")  # fmt: skip
    missing = [name for name in _IDENTITY[table] if name not in schema.names]
    if missing:
        return ResultsError(f"it lacks the {table} table's columns {missing} (its columns: "
                            f"{schema.names[:8]}{' ...' if len(schema.names) > 8 else ''}): not a part "
                            f"of this table")  # fmt: skip
    return None


def _check_version(path: str, fragment: ds.ParquetFileFragment) -> None:
    """Refuses a part a newer schema wrote: by its metadata, or its ``schema_version`` column's statistics
    (both from the footer: no row is read)."""
    meta = fragment.physical_schema.metadata or {}
    versions = {int(meta[_META_VERSION])} if _META_VERSION in meta else set()
    for group in fragment.row_groups:
        stats = (group.statistics or {}).get("schema_version") or {}
        if stats.get("max") is not None:
            versions.add(int(stats["max"]))
    newest = max(versions, default=RESULTS_SCHEMA_VERSION)
    if newest > RESULTS_SCHEMA_VERSION:
        raise ResultsSchemaError(
            f"results part {path!r} has schema_version {newest}; this nas-service reads versions up to "
            f"{RESULTS_SCHEMA_VERSION}: upgrade nas-service to read it"
        )


def _opt_text(field: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ResultsError(f"{field} must be text or None, got {value!r}")


def _opt_float(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ResultsError(f"{field} must be a number or None, got {value!r}")
    return float(value)


def _architecture_json(kind: str, values: Mapping[str, Any]) -> str | None:
    """genotype_json / path_json from `genotype`/`path` (object, dict or JSON text) or the column name."""
    given = [key for key in (kind, f"{kind}_json") if values.get(key) is not None]
    if len(given) > 1:
        raise ResultsError(f"give the {kind} once, as {kind!r} or {kind + '_json'!r}, not both")
    if not given:
        return None
    value = values[given[0]]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ResultsError(
                f"{given[0]} text must be JSON (resolve published names first), got {value!r}") from None
    return to_json(value)


def epoch_columns() -> list[str]:
    """The fixed columns of the epoch table, in order (metrics follow, by name)."""
    return [name for name, _ in _EPOCH_FIELDS]


def trial_columns() -> list[str]:
    """The fixed columns of the trial table, in order.

    ``config.*``, ``best.*``, ``last.*`` and ``extra.*`` columns follow, each group by name.
    """
    return [name for name, _ in _TRIAL_FIELDS]


def read_epochs(location: str | os.PathLike[str], experiment: str, *,
                filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:  # fmt: skip
    """The deduplicated epoch table of an experiment (see :meth:`ResultsStore.epochs`)."""
    return ResultsStore(location, experiment, filesystem=filesystem).epochs()


def read_trials(location: str | os.PathLike[str], experiment: str, *,
                filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:  # fmt: skip
    """The deduplicated trial table of an experiment (see :meth:`ResultsStore.trials`)."""
    return ResultsStore(location, experiment, filesystem=filesystem).trials()


def serialize(frame: pd.DataFrame, format: ExportFormat) -> bytes:
    """A table as the bytes of one file: ``csv``, ``parquet`` or ``json`` (a list of records, ISO times).

    Raises:
        ResultsError: unknown format.
    """
    if format == "csv":
        return frame.to_csv(index=False).encode()
    if format == "json":
        return frame.to_json(orient="records", date_format="iso", date_unit="us").encode()
    if format == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        return buffer.getvalue()
    raise ResultsError(f"export format must be one of {list(EXPORT_FORMATS)}, got {format!r}")
