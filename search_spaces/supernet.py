"""The cell-based search network of DARTS / sharpDARTS (spec sections 3.1-3.3, 6).

Every edge of a search cell is a :class:`MixedOp` over the space's primitives; the architecture weights
(one ``(edges, ops)`` tensor per cell type) are registered ``nn.Parameter``\\ s kept apart from the network
weights: they are saved in ``state_dict``, move with ``.to()``, and are reached through
:meth:`SearchNetwork.arch_parameters` (the weight optimizer uses :meth:`SearchNetwork.weight_parameters`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .genotypes import Genotype, parse_genotype
from .ops import FactorizedReduce, ReLUConvBN, get_op_set
from .spaces import get_search_space
from .weighting import get_weighting

__all__ = ["MixedOp", "SearchCell", "SearchNetwork", "build_search_network"]


class MixedOp(nn.Module):
    """All candidate ops of one edge; the output is ``sum_i coef_i * op_i(x)``.

    The ``none`` op is never instantiated or run: its output is zero whatever its coefficient, so skipping
    it changes neither the output nor any gradient (its weight still competes in the softmax).
    Pools are followed by a non-affine BN, as in DARTS. The ops' shared leading ReLU runs once per edge and
    each coefficient is folded into its op's last BN (see :func:`_plan`); ``self.ops`` still holds every op
    whole, so state dicts and the ops themselves are as built.

    With ``checkpoint=True`` the edge keeps only its input for backward and recomputes its ops' activations
    there (see :func:`_checkpointed_edge`): the same values and gradients for a fraction of the memory.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], op_set: str, checkpoint: bool = False) -> None:
        super().__init__()
        ops = get_op_set(op_set)
        self.ops = nn.ModuleList()
        active = []
        for index, name in enumerate(primitives):
            if name == "none":
                continue
            op = ops.build(name, C, C, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)
            active.append(index)
        self.register_buffer("active", torch.tensor(active, dtype=torch.long), persistent=False)
        self.stride = stride
        self.checkpoint = checkpoint
        # How each op runs inside the edge (plain tuples: the modules stay registered once, under ``ops``):
        # (starts with the ReLU the edge shares, modules in between, final non-affine BN or None).
        self._plans = tuple(_plan(op) for op in self.ops)
        self._any_shared_relu = any(shares for shares, _, _ in self._plans)

    def forward(self, x: torch.Tensor, coefs: torch.Tensor, _selected: bool = False) -> torch.Tensor:
        """``coefs``: one per primitive (``none`` included); ``_selected``: already one per active op."""
        if not _selected:
            coefs = coefs.index_select(0, self.active)
            if self.checkpoint and torch.is_grad_enabled():
                return _checkpointed_edge(self, x, coefs)
        relu_x = torch.relu(x) if self._any_shared_relu else x
        out: torch.Tensor | None = None
        for coef, (shares_relu, body, bn) in zip(coefs, self._plans):
            h = relu_x if shares_relu else x
            for module in body:
                h = module(h)
            y = coef * h if bn is None else _scaled_batch_norm(bn, h, coef)
            out = y if out is None else out + y
        assert out is not None
        return out


def _plan(op: nn.Module) -> tuple[bool, tuple[nn.Module, ...], nn.BatchNorm2d | None]:
    """Splits an op for :meth:`MixedOp.forward`.

    Two rewrites that change no value and save memory and time: the leading ReLU most ops apply to the
    same edge input is computed once per edge, and ``coef * BN(h)`` of a non-affine BN is computed as a BN
    whose weight is ``coef``, whose backward needs only what the BN keeps anyway (``coef * y`` would keep
    ``y``, one more activation per op).
    """
    if not isinstance(op, nn.Sequential):
        return False, (op,), None
    modules = list(op)
    shares_relu = isinstance(modules[0], nn.ReLU)
    last = modules[-1]
    bn = last if isinstance(last, nn.BatchNorm2d) and not last.affine else None
    body = modules[int(shares_relu) : len(modules) - (bn is not None)]
    return shares_relu, tuple(body), bn


def _scaled_batch_norm(bn: nn.BatchNorm2d, h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * bn(h)`` for a non-affine ``bn``, with ``bn``'s own statistics bookkeeping."""
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or bn.running_mean is None
    track = not bn.training or bn.track_running_stats
    # A materialised weight: with an expanded (stride-0) one, PyTorch 2.14's CPU batch-norm backward returns
    # garbage input gradients for channels-last inputs (test_mixed_op_equals_the_weighted_sum_of_its_ops).
    return nn.functional.batch_norm(
        h, bn.running_mean if track else None, bn.running_var if track else None,
        scale.expand(bn.num_features).contiguous(), None, use_batch_stats, factor, bn.eps,
    )  # fmt: skip


def _checkpointed_edge(edge: MixedOp, x: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """Runs ``edge`` under activation checkpointing, recomputing exactly what the first run computed.

    Two things the plain ``torch.utils.checkpoint`` call would get wrong here: the recomputation would
    update the BN running statistics a second time (so it runs with them frozen), and it runs in backward,
    after a ``torch.func.functional_call`` (the unrolled second-order step) has put the module's own weights
    back (so it runs on the tensors the first run used, captured here).
    """
    tensors = {**dict(edge.named_parameters()), **dict(edge.named_buffers())}
    recomputing = False

    def run(x: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        nonlocal recomputing
        if not recomputing:
            recomputing = True
            return edge(x, coefs, _selected=True)
        with _running_stats_frozen(edge):
            return functional_call(edge, tensors, (x, coefs), {"_selected": True})

    return checkpoint(run, x, coefs, use_reentrant=False)


@contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BN layers inside keep their running statistics (momentum 0 leaves them exactly as they are)."""
    saved = []
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
            saved.append((bn, bn.momentum, bn.num_batches_tracked.clone()))
            bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum, tracked in saved:
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)


class SearchCell(nn.Module):
    """A search cell: ``steps`` nodes, node i fed by a MixedOp from every earlier state (spec 3.2)."""

    def __init__(
        self,
        *,
        steps: int,
        multiplier: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[str],
        op_set: str,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(C, stride, primitives, op_set, checkpoint=activation_checkpointing))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = sum(self.edges[offset + j](h, coefs[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS search network (spec 3.3) with configurable size, input and weighting.

    Args:
        primitives: op names competing on every edge.
        op_set: which op set implements them (``darts`` or ``sharp``).
        C: initial channels (16 in the paper).
        num_classes: output classes.
        layers: number of cells (8); cells ``layers//3`` and ``2*layers//3`` are reduction cells.
        steps: nodes per cell (4).
        multiplier: how many of the last nodes are concatenated into the output (4).
        stem_multiplier: stem width is ``stem_multiplier * C`` (3).
        in_channels: image channels (3 for CIFAR, 1 for digits).
        weighting: ``scalar`` (DARTS) or ``max_w`` (sharpDARTS).
        activation_checkpointing: edges recompute their activations in backward (:class:`MixedOp`).
    """

    def __init__(
        self,
        *,
        primitives: Sequence[str],
        op_set: str,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        weighting: str = "scalar",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (("C", C, 1), ("layers", layers, 1), ("steps", steps, 1),
                                 ("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):  # fmt: skip
            if value < low:
                raise ValueError(f"SearchNetwork: {name} must be >= {low}, got {name}={value}")
        if not 1 <= multiplier <= steps:
            raise ValueError(f"SearchNetwork: multiplier must be in 1..steps={steps}, got {multiplier}")
        self.primitives = tuple(primitives)
        self.op_set = op_set
        self.steps = steps
        self.multiplier = multiplier
        self.weighting_name = weighting
        self._weighting = get_weighting(weighting)

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        reductions = {layers // 3, 2 * layers // 3} if layers >= 3 else set()
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = SearchCell(
                steps=steps,
                multiplier=multiplier,
                C_prev_prev=C_prev_prev,
                C_prev=C_prev,
                C=C_curr,
                reduction=reduction,
                reduction_prev=reduction_prev,
                primitives=self.primitives,
                op_set=op_set,
                activation_checkpointing=activation_checkpointing,
            )
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        n_edges = sum(2 + i for i in range(steps))
        self.arch = nn.ParameterDict(
            {
                "normal": nn.Parameter(1e-3 * torch.randn(n_edges, len(self.primitives))),
                "reduce": nn.Parameter(1e-3 * torch.randn(n_edges, len(self.primitives))),
            }
        )

    # -- parameters ---------------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights (trained by the architect on validation batches)."""
        return [self.arch["normal"], self.arch["reduce"]]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture weights (trained by SGD on training batches)."""
        arch_ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def arch_weights(self) -> dict[str, torch.Tensor]:
        """Softmax over ops for every edge: ``{"normal": (edges, ops), "reduce": (edges, ops)}``."""
        return {k: torch.softmax(v, dim=-1) for k, v in self.arch.items()}

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefs = {k: self._weighting(w, dim=-1) for k, w in self.arch_weights().items()}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, coefs["reduce" if cell.reduction else "normal"])
        return self.classifier(self.global_pooling(s1).flatten(1))

    # -- discretisation -----------------------------------------------------------------------------------
    def genotype(self, skip_primitive: str | None = "none") -> Genotype:
        """Parses the current architecture weights (spec 3.4); ``skip_primitive=None`` is the no-hack parse."""
        w = self.arch_weights()
        skip = skip_primitive if skip_primitive in self.primitives else None
        return parse_genotype(
            w["normal"], w["reduce"], self.primitives,
            steps=self.steps, multiplier=self.multiplier, skip_primitive=skip,
        )  # fmt: skip


def build_search_network(space: str, **kwargs: object) -> SearchNetwork:
    """Builds the search network of a named space (``darts``, ``sharp_darts``, ...); kwargs as SearchNetwork."""
    search_space = get_search_space(space)
    return SearchNetwork(primitives=search_space.primitives, op_set=search_space.op_set, **kwargs)  # type: ignore[arg-type]
