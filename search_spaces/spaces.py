"""Primitive sets (spec section 2.4) and the named cell search spaces = (primitive set, op set)."""

from __future__ import annotations

from dataclasses import dataclass

from .names import op_names
from .registry import Registry

__all__ = [
    "PRIMITIVE_SETS",
    "SEARCH_SPACES",
    "SearchSpace",
    "get_primitives",
    "get_search_space",
    "list_primitive_sets",
    "list_search_spaces",
]

PRIMITIVE_SETS: Registry[tuple[str, ...]] = Registry("primitive set")

PRIMITIVE_SETS.register(
    "darts",
    ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
     "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
)  # fmt: skip
PRIMITIVE_SETS.register(
    "sharp_darts",
    ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3",
     "flood_conv_3x3", "dil_flood_conv_3x3", "choke_conv_3x3", "dil_choke_conv_3x3"),
)  # fmt: skip
PRIMITIVE_SETS.register(
    "sharper_darts",
    ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
     "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "flood_conv_3x3", "flood_conv_5x5",
     "dil_flood_conv_3x3"),
)  # fmt: skip


@dataclass(frozen=True)
class SearchSpace:
    """A cell search space: which op names compete on every edge, and which op set implements them."""

    name: str
    primitives: tuple[str, ...]
    op_set: str
    description: str = ""

    def __post_init__(self) -> None:
        ops = op_names(self.op_set)
        missing = [p for p in self.primitives if p not in ops]
        if missing:
            raise ValueError(f"search space {self.name!r}: op set {self.op_set!r} lacks ops {missing}")


SEARCH_SPACES: Registry[SearchSpace] = Registry("search space")

for _space in (
    SearchSpace("darts", PRIMITIVE_SETS.get("darts"), "darts", "DARTS: 8 ops, original op forms"),
    SearchSpace(
        "sharp_sep_conv_darts", PRIMITIVE_SETS.get("darts"), "sharp", "SharpSepConvDARTS: DARTS names, sharp ops"
    ),
    SearchSpace("sharp_darts", PRIMITIVE_SETS.get("sharp_darts"), "sharp", "sharpDARTS: 9 ops, flood and choke"),
    SearchSpace("sharper_darts", PRIMITIVE_SETS.get("sharper_darts"), "sharp", "SharperDARTS: 12 ops"),
):
    SEARCH_SPACES.register(_space.name, _space)


def get_primitives(name: str) -> tuple[str, ...]:
    return PRIMITIVE_SETS.get(name)


def list_primitive_sets() -> list[str]:
    return PRIMITIVE_SETS.names()


def get_search_space(name: str) -> SearchSpace:
    """Returns the named search space (``darts``, ``sharp_sep_conv_darts``, ``sharp_darts``, ``sharper_darts``)."""
    return SEARCH_SPACES.get(name)


def list_search_spaces() -> list[str]:
    return SEARCH_SPACES.names()
