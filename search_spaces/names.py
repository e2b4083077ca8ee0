"""The names of the pluggable kinds whose implementations need torch: op sets and their ops, weightings,
multiply-add conventions. Plain data, no torch.

Spec validation, planning and the command line check names against these lists without importing torch
(``nas-service validate`` should not pay torch's second of start-up to say ``sep_conv_9x9`` is unknown).
The torch modules register one implementation under each name: :mod:`search_spaces.ops` a factory per op,
:mod:`search_spaces.weighting` a function per weighting; ``tests/test_cli_light.py`` checks that both
sides list the same names in the same order. :mod:`search_spaces.networks` counts multiply-adds by the
conventions named here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from .registry import Registry

__all__ = [
    "MADDS_CONVENTIONS",
    "MaddsConvention",
    "OP_NAMES",
    "WEIGHTING_NAMES",
    "op_names",
    "op_sets_defining",
]

# Op set -> the op names it defines, in registration order (:data:`search_spaces.ops.OP_SETS` builds them).
OP_NAMES: Registry[tuple[str, ...]] = Registry("op set")
OP_NAMES.register(
    "darts",
    ("none", "avg_pool_3x3", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
     "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7", "nor_conv_3x3", "nor_conv_5x5", "nor_conv_7x7"),
)  # fmt: skip
OP_NAMES.register(
    "sharp",
    ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
     "dil_conv_3x3", "dil_conv_5x5", "flood_conv_3x3", "flood_conv_5x5", "dil_flood_conv_3x3",
     "dil_flood_conv_5x5", "choke_conv_3x3", "dil_choke_conv_3x3", "conv_7x1_1x7"),
)  # fmt: skip

# Weighting -> what it does (:data:`search_spaces.weighting.WEIGHTINGS` holds the functions).
WEIGHTING_NAMES: Registry[str] = Registry("weighting")
WEIGHTING_NAMES.register("scalar", "DARTS: each op's output times its softmax weight")
WEIGHTING_NAMES.register("max_w", "sharpDARTS Max-W: times 1 - max_j w_j + w_i, so the strongest op gets 1")

# How :func:`search_spaces.networks.count_multiply_adds` counts: convolutions and linear layers only, or
# also BN, ReLU and pools as the sharpDARTS flops counter behind the paper's numbers.
MaddsConvention = Literal["conv_linear", "reference"]
MADDS_CONVENTIONS: tuple[str, ...] = get_args(MaddsConvention)


def op_names(op_set: str) -> tuple[str, ...]:
    """The op names ``op_set`` defines; raises ``UnknownNameError`` listing the op sets."""
    return OP_NAMES.get(op_set)


def op_sets_defining(names: Iterable[str]) -> list[str]:
    """The op sets that define every op in ``names``."""
    wanted = set(names)
    return [op_set for op_set, ops in OP_NAMES.items() if wanted <= set(ops)]
