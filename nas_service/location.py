"""Where one experiment's files live: the only place that decides "local path or URI".

Layout under ``<storage>/<experiment>/`` (a local folder or a URI pyarrow understands)::

    results/      Parquet tables (nas_service.results)
    tune/<stage>-<h>/  one Ray Tune experiment per stage and trial set
    trials/<id>/  a trial's own checkpoints (local storage; scratch in the temp dir for URI storage)
    ddp/<run>/    Ray Train's checkpoints of a DDP retrain trial

Build one :class:`ExperimentLocation` from the spec's storage and pass it down; nothing else parses a
storage string.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NAME_RE", "NAME_RULE", "name_problem", "folder_problem", "is_uri", "is_remote", "resolve_storage",
           "ExperimentLocation"]  # fmt: skip

# Experiment names, stage names and trial ids become folder names (<storage>/<experiment>/, tune/<stage>-<h>/,
# results/.../trial=<id>/): a safe alphabet, never hidden ('.', '_': readers skip such names), never '..'.
# The one rule: the spec's names (nas_service.spec_models.Name) and the results store both check it.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
NAME_RULE = (f"must match the pattern {NAME_RE.pattern}: it names a folder, so it starts with a letter or digit "
             f"(a leading '.' or '_' hides it from readers; '..' climbs out) and holds only letters, digits, '_', "
             f"'.' and '-', at most 200")  # fmt: skip


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be an experiment name, stage name or trial id (:data:`NAME_RULE`); None if fine."""
    return None if isinstance(value, str) and NAME_RE.match(value) else NAME_RULE


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the local ``path`` cannot be (or become) a folder: it, or the nearest existing path above it, is
    not a folder. None when it is a folder or can be made one (``mkdir -p``)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            return None if folder.is_dir() else f"{str(folder)!r} is a file, not a folder"
    return None


def is_uri(text: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, file, ...) rather than a local path."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.replace("+", "").isalnum()


def is_remote(storage: str) -> bool:
    """Storage that other hosts reach by itself (an object store), unlike a local or ``file://`` path."""
    return is_uri(storage) and not storage.startswith("file://")


def resolve_storage(text: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """A storage as it is kept: URIs unchanged; a local path with ``~`` expanded, made absolute against
    ``base_dir`` (default: the current folder)."""
    if is_uri(text):
        return text
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return os.path.normpath(path)


@dataclass(frozen=True)
class ExperimentLocation:
    """``<storage>/<name>`` and its folders.

    Args:
        storage: a local folder or a URI (``s3://bucket/runs``, ``file:///abs/runs``).
        name: the experiment's name (one folder).
    """

    storage: str
    name: str

    @property
    def local_base(self) -> Path | None:
        """The storage as a local folder (``file://`` included), or None for a remote URI."""
        if not is_uri(self.storage):
            return Path(self.storage)
        if self.storage.startswith("file://"):
            return Path(self.storage[len("file://") :])
        return None

    @property
    def root(self) -> str:
        """``<storage>/<name>`` for display."""
        if is_uri(self.storage):
            return f"{self.storage.rstrip('/')}/{self.name}"
        return str(Path(self.storage) / self.name)

    def under(self, leaf: str) -> str:
        """``<storage>/<name>/<leaf>`` as Ray wants it: a URI, or an absolute local path."""
        if is_uri(self.storage):
            return f"{self.storage.rstrip('/')}/{self.name}/{leaf}"
        return str(Path(self.storage).resolve() / self.name / leaf)

    @property
    def tune(self) -> str:
        return self.under("tune")

    @property
    def ddp(self) -> str:
        return self.under("ddp")

    def trial_workdir(self, trial_id: str) -> Path:
        """A trial's own folder on local storage; scratch space in the temp dir for remote storage."""
        base = self.local_base
        if base is None:
            return Path(tempfile.gettempdir()) / "nas-service" / self.name / "trials" / trial_id
        return base / self.name / "trials" / trial_id
