"""A configuration's identity: what it computes, as opposed to where its data lives or how it spends memory.

Trial ids hash it, a checkpoint resumes only under a config with the same identity, and a finished DDP run
counts as finished for it. One rule for all three: :func:`same_computation`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["RESULT_NEUTRAL_FIELDS", "LATER_FIELDS", "REPLACED_FIELDS", "without_result_neutral_fields", "without_later_defaults",
           "same_computation"]  # fmt: skip

# Fields that say where the data is or how a run spends memory, not what it computes: a run may resume
# with other values (the checkpoint check ignores them) and trial ids leave them out.
RESULT_NEUTRAL_FIELDS: tuple[tuple[str, ...], ...] = (
    ("data", "root"), ("data", "download"), ("data", "num_workers"), ("activation_checkpointing",),
)  # fmt: skip


# Fields added after trial ids were first recorded, with the default that computes what configs without
# them computed: left out of a config's identity while at that default, so adding a field never turns
# finished trials into new ones. A new field with such a default goes here.
LATER_FIELDS: dict[tuple[str, ...], Any] = {("data", "random_shift"): 0, ("arch", "warmup_epochs"): 0}

# Top-level fields that replaced an older one: ``new: (value, old, old value)``. At ``value`` the config
# computes what the old field at ``old value`` computed, and its identity spells it the old way, so replacing
# a field never turns finished trials into new ones. (``amp: false`` was fp32; ``amp: true``, fp16 autocast
# on CUDA only, was never recorded in an example.)
REPLACED_FIELDS: dict[str, tuple[Any, str, Any]] = {"precision": ("fp32", "amp", False)}


def _without(config: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """A deep copy of a config dict without ``paths`` (a :data:`LATER_FIELDS` path only at its default), with
    :data:`REPLACED_FIELDS` spelled the old way where they compute what the old field did."""
    out = copy.deepcopy(dict(config))
    for path in paths:
        node: Any = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and (path not in LATER_FIELDS or node.get(path[-1]) == LATER_FIELDS[path]):
            node.pop(path[-1], None)
    for new, (value, old, old_value) in REPLACED_FIELDS.items():
        if new in out and out[new] == value:
            del out[new]
            out[old] = old_value
    return out


def without_later_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict as it was written before the :data:`LATER_FIELDS` existed (for stable names)."""
    return _without(config, tuple(LATER_FIELDS))


def without_result_neutral_fields(config: Mapping[str, Any], extra: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
    """A deep copy of a config dict without :data:`RESULT_NEUTRAL_FIELDS` (and the ``extra`` paths), and
    without the :data:`LATER_FIELDS` that hold their default: what the config computes."""
    return _without(config, RESULT_NEUTRAL_FIELDS + extra + tuple(LATER_FIELDS))


def same_computation(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two config dicts compute the same thing (they may differ in result-neutral fields): the one
    rule for "may this checkpoint resume, or stand as finished, for that config?"."""
    return without_result_neutral_fields(a) == without_result_neutral_fields(b)
