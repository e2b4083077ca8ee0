"""One checkpoint format for every loop (cell search, DHGS, retraining): atomic writes, weights-only reads.

A checkpoint is a plain dict (see :class:`Checkpoint` for the keys) saved with ``torch.save``. Loading uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, so a checkpoint from a shared
folder cannot execute code. The price: only tensors, dicts, lists, tuples, strings, numbers, booleans and
``None`` may be stored. Numpy arrays and numpy scalars are refused (``float(x)`` them first); RNG states are
stored in such a form by :func:`capture_rng_state`.

Writes go to a hidden temp file in the target folder, are flushed and fsync'ed, optionally read back
weights-only, and only then ``os.replace``'d over the target: a crash at any point leaves either the old
checkpoint or the new one, never half a file (DESIGN.md, "writes checkpoints atomically").

Every checkpoint gets a ``<name>.sha256`` beside it (``sha256sum`` format, so ``sha256sum -c`` checks it by
hand), written after the file is in place; :func:`load_checkpoint` refuses a file whose bytes no longer
match it. Damage that happens *after* a write (a truncating copy, a full disk, a flipped bit) is thus caught
when the file is read, and :func:`latest_intact_checkpoint` falls back to the newest intact epoch file,
setting the damaged one aside. A file without a sidecar (written before checksums, or a kill between the
rename and the sidecar) is still accepted when it loads weights-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypedDict

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_KINDS",
    "Checkpoint",
    "CheckpointError",
    "CheckpointVersionError",
    "CorruptCheckpointError",
    "CheckpointFallbackWarning",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "validate_checkpoint_state",
    "make_checkpoint_state",
    "restore_training_state",
    "capture_rng_state",
    "restore_rng_state",
    "list_epoch_checkpoints",
    "latest_checkpoint",
    "latest_intact_checkpoint",
    "epoch_of",
    "verify_checkpoint",
    "checksum_path",
    "write_epoch_checkpoint",
]

# Bump when the meaning of a key changes; load_checkpoint refuses other versions instead of guessing.
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_KINDS = ("cell_search", "hypercuboid_search", "retrain")

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that breaks the format; the message names the file or key, the rule and the value."""


class CheckpointVersionError(CheckpointError):
    """The file was written in another ``format_version`` (or has none)."""


class CorruptCheckpointError(CheckpointError):
    """The file cannot be read as a weights-only torch checkpoint (truncated, garbage, unsafe objects)."""


class CheckpointFallbackWarning(RuntimeWarning):
    """A damaged checkpoint was set aside and an older intact one is used instead (the message names both)."""


CHECKSUM_SUFFIX = ".sha256"
# Set aside, not deleted: the bytes may still matter to whoever investigates; the name no longer matches
# ``epoch_NNNN.pt``, so no reader picks it up again.
DAMAGED_SUFFIX = ".damaged"


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar holding ``path``'s SHA-256 (``epoch_0003.pt`` -> ``epoch_0003.pt.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _recorded_sha256(path: Path) -> str | None:
    """The digest the sidecar recorded for ``path``; None when there is no sidecar.

    Raises:
        CorruptCheckpointError: the sidecar exists but does not hold a SHA-256 hex digest.
    """
    sidecar = checksum_path(path)
    try:
        text = sidecar.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CorruptCheckpointError(f"{path}: its checksum file {sidecar.name} must hold a SHA-256 hex digest, "
                                     f"got {text[:80]!r}")  # fmt: skip
    return digest


def _check_sha256(path: Path) -> None:
    """Raises :class:`CorruptCheckpointError` when ``path``'s bytes differ from what its sidecar recorded."""
    expected = _recorded_sha256(path)
    if expected is None:
        return
    actual = _file_sha256(path)
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path}: SHA-256 {actual[:16]}... does not match {expected[:16]}... recorded in "
            f"{checksum_path(path).name} when it was written: the file was damaged after the write"
        )


class Checkpoint(TypedDict, total=False):
    """The keys of a checkpoint. ``kind``, ``epoch`` and ``model`` are required; ``format_version`` is
    stamped by :func:`save_checkpoint`. No other top-level keys are accepted: loop-specific state goes
    under ``extra``.

    Attributes:
        format_version: :data:`CHECKPOINT_FORMAT_VERSION` of the writer.
        kind: ``"cell_search"``, ``"hypercuboid_search"`` or ``"retrain"``.
        spec: what the model is, JSON-able (genotype / HyperCuboid path / search space config), so the
            model can be rebuilt from the checkpoint alone.
        config: the resolved run config, JSON-able (``trainers.config.config_to_dict``).
        epoch: the last *finished* epoch (counted from 1; 0 = before the first epoch).
        model: ``state_dict`` of the unwrapped model; architecture weights are registered parameters,
            so they are in it.
        optimizers: optimizer ``state_dict`` by name (e.g. ``"weights"``, ``"arch"``).
        scaler: ``torch.amp.GradScaler.state_dict()`` when mixed precision is on.
        schedule: the schedule, e.g. ``ScheduleSpec.to_dict()`` and/or its per-epoch values.
        rng: :func:`capture_rng_state` taken at the end of ``epoch``.
        history: per-epoch metrics, as JSON text (or a list of dicts of primitives).
        extra: anything else a loop needs to resume (best metric so far, genotype per epoch...).
    """

    format_version: int
    kind: Literal["cell_search", "hypercuboid_search", "retrain"]
    spec: dict[str, Any]
    config: dict[str, Any]
    epoch: int
    model: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    scaler: dict[str, Any]
    schedule: dict[str, Any]
    rng: dict[str, Any]
    history: str | list[dict[str, Any]]
    extra: dict[str, Any]


_REQUIRED = ("kind", "epoch", "model")
_KNOWN = frozenset(Checkpoint.__annotations__)


# ---------------------------------------------------------------------------------------------------------
# schema


def validate_checkpoint_state(state: Mapping[str, Any], *, where: str = "checkpoint") -> None:
    """Checks ``state`` against the schema of :class:`Checkpoint` (types of the top-level keys).

    Args:
        state: the dict to be saved (``format_version`` may be absent).
        where: names the file or caller in error messages.

    Raises:
        CheckpointError: a missing required key, an unknown key, or a value of the wrong type.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: must be a dict, got {type(state).__name__}")
    unknown = sorted(set(state) - _KNOWN)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown key(s) {unknown}; known keys: {sorted(_KNOWN)} "
            "(put loop-specific state under 'extra')"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{where}: missing required key(s) {missing}")
    if state["kind"] not in CHECKPOINT_KINDS:
        raise CheckpointError(
            f"{where}: 'kind' must be one of {list(CHECKPOINT_KINDS)}, got {state['kind']!r}"
        )
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(
            f"{where}: 'epoch' must be an integer >= 0 (the last finished epoch), got {epoch!r}"
        )
    for key in ("model", "optimizers", "scaler", "schedule", "rng", "extra"):
        if key in state and not isinstance(state[key], Mapping):
            raise CheckpointError(f"{where}: {key!r} must be a dict, got {type(state[key]).__name__}")
    for name, opt_state in state.get("optimizers", {}).items():
        if not isinstance(name, str) or not isinstance(opt_state, Mapping):
            raise CheckpointError(
                f"{where}: 'optimizers' maps names to state dicts, got {name!r}: {type(opt_state).__name__}"
            )
    for key in ("spec", "config"):
        if key in state:
            try:
                json.dumps(state[key])
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{where}: {key!r} must be JSON-able ({err})") from None
    if "history" in state and not isinstance(state["history"], (str, list)):
        kind = type(state["history"]).__name__
        raise CheckpointError(f"{where}: 'history' must be JSON text or a list, got {kind}")


# ---------------------------------------------------------------------------------------------------------
# atomic save, checked load


def _temp_path(path: Path) -> Path:
    # Same folder (os.replace is only atomic within one file system), hidden, unique per writer.
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable. Some file systems (and Windows) cannot fsync a folder; the rename
    is still atomic there, only its durability across a power cut is weaker."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any], *, verify: bool = True) -> Path:
    """Writes ``state`` to ``path`` atomically and stamps ``format_version``.

    The bytes go to a temp file beside ``path``; it is flushed and fsync'ed, read back with
    ``weights_only=True`` when ``verify`` (memory-mapped, so cheap), and renamed over ``path``; then its
    SHA-256 goes to :func:`checksum_path` (atomically too). An old sidecar is removed before the rename, so
    a kill never leaves a digest beside bytes it does not describe. On any failure the temp file is removed
    and an existing ``path`` is untouched.

    Args:
        path: target file; its folder is created if needed.
        state: a :class:`Checkpoint` dict.
        verify: read the written file back weights-only before it replaces ``path``, so a state that
            could never be resumed (a numpy scalar, a custom object) fails now, not at resume time.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: ``state`` breaks the schema, carries another ``format_version``, or holds
            objects weights-only loading refuses.
    """
    path = Path(path)
    validate_checkpoint_state(state, where=str(path))
    version = state.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: state has format_version {version!r}; this code writes {CHECKPOINT_FORMAT_VERSION}"
        )
    payload = {**state, "format_version": CHECKPOINT_FORMAT_VERSION}

    def verify_weights_only(tmp: Path) -> None:
        try:
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # the unpickler reports unsafe objects through several types
            raise CorruptCheckpointError(
                f"{path}: the state cannot be loaded back with weights_only=True ({type(err).__name__}: "
                f"{_first_line(err)}); store only tensors, dicts, lists, tuples, str, int, float, bool, "
                "None (e.g. float(x) for numpy scalars)"
            ) from err

    def write(handle: BinaryIO) -> None:
        torch.save(payload, handle)  # looked up at call time, so tests can simulate a crash mid-write

    digest: list[str] = []

    def before_replace(tmp: Path) -> None:
        if verify:
            verify_weights_only(tmp)
        digest.append(_file_sha256(tmp))
        checksum_path(path).unlink(missing_ok=True)  # the old digest must not outlive the old bytes

    _atomic_write(path, write, before_replace=before_replace)
    # sha256sum's format: `sha256sum -c epoch_0003.pt.sha256` in the folder checks the file by hand.
    atomic_write_text(checksum_path(path), f"{digest[0]}  {path.name}\n")
    return path


def _atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    *,
    before_replace: Callable[[Path], None] | None = None,
) -> Path:
    """Temp file beside ``path`` -> ``write`` -> flush + fsync -> ``before_replace(tmp)`` -> ``os.replace``.

    On any failure (including KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        # "x" creates the file with the usual umask permissions (mkstemp would make it owner-only).
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``); creates the folder.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically (e.g. ``summary.json``), like :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def _first_line(err: BaseException) -> str:
    """The informative line of an error: for torch's long weights-only refusal, the line naming the
    refused global (e.g. ``numpy._core.multiarray.scalar``), else the first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". Please")[0]
    return text.splitlines()[0] if text else repr(err)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (weights only) and checks its version.

    Args:
        path: the file.
        map_location: passed to ``torch.load``; CPU by default so any process can read it.

    Returns:
        The :class:`Checkpoint` dict.

    Raises:
        FileNotFoundError: no such file (the message names it).
        CorruptCheckpointError: its bytes differ from the SHA-256 recorded beside it, or it is unreadable,
            truncated, not a dict, or holds objects weights-only loading refuses.
        CheckpointVersionError: no ``format_version``, or another one than :data:`CHECKPOINT_FORMAT_VERSION`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    _check_sha256(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # A damaged file surfaces as EOFError, KeyError, RuntimeError (zip reader), OSError or
        # UnpicklingError depending on where the damage is; all mean the same thing to the caller.
        raise CorruptCheckpointError(
            f"{path}: not a readable weights-only checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from err
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path}: must hold a dict, got {type(state).__name__}")
    version = state.get("format_version")
    if version is None:
        raise CheckpointVersionError(f"{path}: has no 'format_version'; not written by save_checkpoint")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: format_version {version!r}, but this code reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    validate_checkpoint_state(state, where=str(path))
    return state


# ---------------------------------------------------------------------------------------------------------
# RNG state in a weights-only form


def capture_rng_state() -> dict[str, Any]:
    """The global torch (CPU, and CUDA when initialised), numpy and Python ``random`` states.

    Weights-only safe: torch states stay uint8 tensors; numpy's MT19937 state and Python's Mersenne
    Twister state become lists of ints. Generators a component owns (``np.random.default_rng``,
    ``torch.Generator``) are that component's to save.

    CUDA states are captured only when CUDA is already initialised in this process: asking for them
    otherwise would create a context on every visible GPU, and a process that never touched CUDA has no
    CUDA draws to repeat.
    """
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, mt_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(mt_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` captured, so the same draws follow.

    CUDA states are restored per device; with fewer or no GPUs than at capture time, the devices present
    are restored (a warning says the run is no longer bit-for-bit reproducible).

    Raises:
        CheckpointError: a part is missing or malformed.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"rng: must be a dict from capture_rng_state(), got {type(state).__name__}")
    missing = [key for key in ("torch", "numpy", "python") if key not in state]
    if missing:
        raise CheckpointError(f"rng: missing part(s) {missing}; expected the dict of capture_rng_state()")
    try:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
        np_state = state["numpy"]
        np.random.set_state(
            (
                np_state["bit_generator"],
                np.asarray(np_state["keys"], dtype=np.uint32),
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
        py_state = state["python"]
        mt_state = tuple(int(x) for x in py_state["state"])
        random.setstate((int(py_state["version"]), mt_state, py_state["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"rng: malformed state ({type(err).__name__}: {_first_line(err)})") from err
    cuda_states = state.get("cuda")
    if cuda_states:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available != len(cuda_states):
            warnings.warn(
                f"rng: checkpoint holds CUDA states of {len(cuda_states)} device(s), this process sees "
                f"{available}; restoring {min(available, len(cuda_states))}, so CUDA draws will differ",
                RuntimeWarning,
                stacklevel=2,
            )
        for device, cuda_state in enumerate(cuda_states[:available]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8).cpu(), device)


# ---------------------------------------------------------------------------------------------------------
# building and applying states from live objects


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel prefix every key with "module."; checkpoints always hold the bare model's keys.
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def make_checkpoint_state(
    *,
    kind: str,
    epoch: int,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    spec: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    schedule: Any = None,
    scaler: Any = None,
    history: str | list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    capture_rng: bool = True,
) -> Checkpoint:
    """A :class:`Checkpoint` dict from live objects (state dicts taken now, RNG captured now).

    Args:
        model: the model; a DDP / DataParallel wrapper is unwrapped.
        schedule: a ``ScheduleSpec`` (its ``to_dict()`` is stored) or a dict.
        scaler: a ``GradScaler`` (its ``state_dict()`` is stored) or None.
        Others: see :class:`Checkpoint`; ``None`` leaves the key out.

    Raises:
        CheckpointError: the result breaks the schema.
    """
    state: dict[str, Any] = {"kind": kind, "epoch": epoch, "model": _unwrap(model).state_dict()}
    if optimizers is not None:
        state["optimizers"] = {name: opt.state_dict() for name, opt in optimizers.items()}
    if spec is not None:
        state["spec"] = dict(spec)
    if config is not None:
        state["config"] = dict(config)
    if schedule is not None:
        state["schedule"] = schedule.to_dict() if hasattr(schedule, "to_dict") else dict(schedule)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if history is not None:
        state["history"] = history
    if extra is not None:
        state["extra"] = dict(extra)
    if capture_rng:
        state["rng"] = capture_rng_state()
    validate_checkpoint_state(state)
    return state  # type: ignore[return-value]


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    scaler: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> int:
    """Loads a checkpoint's model, optimizers, scaler and RNG into live objects.

    Args:
        state: a loaded :class:`Checkpoint`.
        model: receives ``state["model"]`` (a DDP / DataParallel wrapper is unwrapped).
        optimizers: each name must be in ``state["optimizers"]``.
        strict: passed to ``load_state_dict`` of the model.

    Returns:
        The last finished epoch; the run continues at ``epoch + 1``.

    Raises:
        CheckpointError: an optimizer (or the scaler / RNG) asked for is not in the checkpoint.
    """
    _unwrap(model).load_state_dict(state["model"], strict=strict)
    saved = state.get("optimizers", {})
    for name, opt in (optimizers or {}).items():
        if name not in saved:
            raise CheckpointError(
                f"optimizers: no state for {name!r} in the checkpoint; it has {sorted(saved)}"
            )
        opt.load_state_dict(saved[name])
    if scaler is not None:
        if "scaler" not in state:
            raise CheckpointError(
                "scaler: the checkpoint has no GradScaler state (written without mixed precision?)"
            )
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        if "rng" not in state:
            raise CheckpointError(
                "rng: the checkpoint has no RNG state; pass restore_rng=False to continue anyway"
            )
        restore_rng_state(state["rng"])
    return int(state["epoch"])


# ---------------------------------------------------------------------------------------------------------
# per-epoch files in a run folder


def list_epoch_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``epoch_XXXX.pt`` in ``folder``, by epoch; empty if the folder is missing.

    Temp files of interrupted writes (hidden ``.epoch_....tmp``) never match.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _EPOCH_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    # Numeric order: epoch_10000.pt (five digits past 9999) sorts after epoch_9999.pt.
    return sorted(found)


def epoch_of(path: str | os.PathLike[str]) -> int:
    """The epoch in an epoch file's name (``epoch_0003.pt`` -> 3).

    Raises:
        CheckpointError: the name is not ``epoch_NNNN.pt``.
    """
    match = _EPOCH_FILE.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not an epoch checkpoint name (epoch_NNNN.pt)")
    return int(match.group(1))


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The ``epoch_XXXX.pt`` with the highest epoch in ``folder``, or None when there is none."""
    found = list_epoch_checkpoints(folder)
    return found[-1][1] if found else None


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Checks that ``path`` is intact without building its tensors: its SHA-256 against the sidecar, or,
    for a file without one, a memory-mapped weights-only read.

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: the file is damaged (the message says how).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if _recorded_sha256(path) is not None:
        _check_sha256(path)
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # see load_checkpoint: damage surfaces through several types
        raise CorruptCheckpointError(
            f"{path}: not a readable weights-only checkpoint ({type(err).__name__}: {_first_line(err)})"
        ) from err


def set_aside_damaged(path: str | os.PathLike[str]) -> Path:
    """Renames a damaged checkpoint (and its sidecar) to ``<name>.damaged`` so no reader takes it again."""
    path = Path(path)
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, target)
    sidecar = checksum_path(path)
    if sidecar.exists():
        os.replace(sidecar, checksum_path(target))
    return target


def latest_intact_checkpoint(
    folder: str | os.PathLike[str], *, log: Callable[[str], None] | None = None
) -> Path | None:
    """The newest ``epoch_XXXX.pt`` in ``folder`` that :func:`verify_checkpoint` accepts, or None.

    Damaged newer files are set aside (:func:`set_aside_damaged`) with a :class:`CheckpointFallbackWarning`
    naming the damaged file and the one used instead, so a run resumes from the newest intact epoch rather
    than failing on every retry; with none intact, the run starts over (the warning says so).

    Args:
        log: also receives the warning's text (e.g. the training log).
    """
    damaged: list[str] = []
    chosen = None
    for _, path in reversed(list_epoch_checkpoints(folder)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            damaged.append(f"{path.name} ({_first_line(err).removeprefix(f'{path}: ')})")
            set_aside_damaged(path)
            continue
        chosen = path
        break
    if damaged:
        instead = f"resuming from {chosen.name} instead" if chosen else "no intact checkpoint left: starting over"
        message = (f"damaged checkpoint(s) in {folder} set aside as *{DAMAGED_SUFFIX}: {'; '.join(damaged)}; "
                   f"{instead}")  # fmt: skip
        warnings.warn(message, CheckpointFallbackWarning, stacklevel=2)
        if log is not None:
            log(message)
    return chosen


def write_epoch_checkpoint(
    folder: str | os.PathLike[str], epoch: int, state: Mapping[str, Any], keep_last: int | None = 2
) -> Path:
    """Writes ``folder/epoch_{epoch:04d}.pt`` atomically, then prunes older epoch files.

    Pruning happens only after the new file is in place, so a crash never leaves fewer than the previous
    checkpoints. Files of *later* epochs than ``epoch`` are left alone (they belong to another run
    history; deleting what the caller did not expect is worse than keeping it).

    Args:
        folder: the run's checkpoint folder (created if needed).
        epoch: the epoch just finished; ``state["epoch"]`` must agree (it is filled in when absent).
        state: a :class:`Checkpoint` dict.
        keep_last: how many epoch files to keep, the new one included; None keeps all.

    Returns:
        The path written.

    Raises:
        CheckpointError: bad ``epoch`` / ``keep_last``, or ``state["epoch"] != epoch``.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"epoch: must be an integer >= 0, got {epoch!r}")
    bad_keep = isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    if keep_last is not None and bad_keep:
        raise CheckpointError(f"keep_last: must be an integer >= 1 or None, got {keep_last!r}")
    if "epoch" in state and state["epoch"] != epoch:
        raise CheckpointError(
            f"epoch: the file is for epoch {epoch} but state['epoch'] is {state['epoch']!r}"
        )
    folder = Path(folder)
    path = save_checkpoint(folder / f"epoch_{epoch:04d}.pt", {**state, "epoch": epoch})
    if keep_last is not None:
        older = [p for n, p in list_epoch_checkpoints(folder) if n < epoch]
        for stale in older[: max(0, len(older) - (keep_last - 1))]:
            stale.unlink(missing_ok=True)
            checksum_path(stale).unlink(missing_ok=True)
    return path


def _copy_with_sidecar(source: Path, target: Path) -> None:
    """Copies a checkpoint and its checksum sidecar; the target never pairs old bytes with a new digest
    (its old sidecar goes first, the new one comes last) and never holds half a file (temp + rename)."""
    checksum_path(target).unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(source, tmp)
    os.replace(tmp, target)
    if checksum_path(source).exists():
        shutil.copy2(checksum_path(source), checksum_path(target))


def copy_run_files(source: str | os.PathLike[str], workdir: str | os.PathLike[str], *, only_if_newer: bool = False) -> int:
    """Copies the newest ``epoch_XXXX.pt`` (into ``workdir/checkpoints/``) and ``best.pt`` of ``source``,
    each with its checksum sidecar.

    ``source`` is a folder laid out flat (a Ray checkpoint's directory). The epoch file lands under a
    temp name and is renamed, so a kill never leaves half a checkpoint. With ``only_if_newer`` nothing is
    copied unless ``source``'s epoch is newer than the newest *intact* one already in ``workdir`` (a damaged
    newest file there is set aside, so an intact copy of the same epoch replaces it).

    Returns:
        the epoch of the copied file, or 0 when nothing was copied.
    """
    latest = list_epoch_checkpoints(source)
    if not latest:
        return 0
    epoch, path = latest[-1]
    target = Path(workdir) / "checkpoints"
    have = latest_intact_checkpoint(target) if only_if_newer else None
    if have is not None and epoch_of(have) >= epoch:
        return 0
    target.mkdir(parents=True, exist_ok=True)
    _copy_with_sidecar(path, target / path.name)
    if (Path(source) / "best.pt").exists():
        _copy_with_sidecar(Path(source) / "best.pt", Path(workdir) / "best.pt")
    return epoch


def stage_run_files(checkpoint: str | os.PathLike[str], workdir: str | os.PathLike[str], into: str | os.PathLike[str]) -> Path:
    """Lays out one epoch file and the run's ``best.pt`` flat in ``into`` (what a Ray checkpoint holds),
    each with its checksum sidecar."""
    folder = Path(into)
    folder.mkdir(parents=True, exist_ok=True)
    for source in (Path(checkpoint), Path(workdir) / "best.pt"):
        if source.exists():
            shutil.copy2(source, folder / source.name)
            if checksum_path(source).exists():
                shutil.copy2(checksum_path(source), folder / checksum_path(source).name)
    return folder
