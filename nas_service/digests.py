"""The one content digest of the service: SHA-256 of canonical JSON (sorted keys), shortened. Trial ids, arm
ids, Tune experiment names and Ray Train run names all come from it, so they are the same on every machine
and in every run for the same content."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "digest"]


def canonical_json(obj: Any, *, compact: bool = True) -> str:
    """``obj`` as JSON with sorted keys, ASCII only; ``compact``: no spaces after separators.

    (Tune experiment and Ray Train run names were first derived with json's default separators; they keep
    ``compact=False`` so existing experiments resume under the same names.)"""
    separators = (",", ":") if compact else None
    return json.dumps(obj, sort_keys=True, separators=separators, ensure_ascii=True)


def digest(obj: Any, length: int, *, compact: bool = True) -> str:
    """The first ``length`` hex digits of the SHA-256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj, compact=compact).encode("utf-8")).hexdigest()[:length]
