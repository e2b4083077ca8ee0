"""Search-health metrics: how peaked the architecture weights are and how much capacity a parse keeps."""

from __future__ import annotations

import math

import torch

from search_spaces.genotypes import Genotype
from search_spaces.ops import is_parameter_free

__all__ = ["entropy", "normalized_entropy", "parameter_free_share", "op_count"]


def entropy(weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    w = weights.detach().double().clamp_min(1e-30)
    return -(w * w.log()).sum(dim=dim)


def normalized_entropy(weights: torch.Tensor, dim: int = -1) -> float:
    """Mean entropy divided by the uniform distribution's: 1 = undecided, 0 = one-hot."""
    n = weights.shape[dim]
    return float(entropy(weights, dim).mean()) / math.log(n) if n > 1 else 0.0


def parameter_free_share(genotype: Genotype, cells: tuple[str, ...] = ("normal", "reduce")) -> float:
    """Share of edges whose op has no weights (``none``, ``skip_connect``, pools): the collapse signal."""
    edges = [e for cell in cells for e in getattr(genotype, cell)]
    return sum(is_parameter_free(op) for op, _ in edges) / len(edges)


def op_count(genotype: Genotype, op_name: str, cell: str = "normal") -> int:
    return sum(op == op_name for op, _ in getattr(genotype, cell))
