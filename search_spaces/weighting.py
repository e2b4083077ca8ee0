"""How a supernet mixes candidate ops: ``scalar`` (DARTS) or ``max_w`` (sharpDARTS, spec section 6).

Both take the softmax weights of one group (one edge of a cell, or one (stride, layer) group of the
HyperCuboid) and return the coefficient each op's output is multiplied by.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .registry import Registry

__all__ = ["WEIGHTINGS", "Weighting", "get_weighting", "list_weightings", "scalar", "max_w"]

Weighting = Callable[..., torch.Tensor]
WEIGHTINGS: Registry[Weighting] = Registry("weighting")


@WEIGHTINGS.decorator("scalar")
def scalar(weights: torch.Tensor, dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """DARTS: ``coef_i = w_i``."""
    return weights


@WEIGHTINGS.decorator("max_w")
def max_w(weights: torch.Tensor, dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """Max-W: ``coef_i = 1 - max_j w_j + w_i`` over the group in ``dim``.

    The strongest op gets exactly 1 and no op is scaled toward zero. As in the reference, the max is
    **not** detached: its gradient flows into the arg-max weight.
    """
    m = weights.amax(dim=dim, keepdim=True)
    return 1.0 - m + weights


def get_weighting(name: str) -> Weighting:
    """``scalar`` or ``max_w``."""
    return WEIGHTINGS.get(name)


def list_weightings() -> list[str]:
    return WEIGHTINGS.names()
