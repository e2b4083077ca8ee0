"""The HyperCuboid supernet of Differentiable Hyperparameter Grid Search (DHGS) (spec sections 6 and 7).
Extracting a path from its weights is in :mod:`search_spaces.paths`; the linear network of a path is
:class:`search_spaces.networks.LinearPathNetwork`.

The HyperCuboid is a grid of ``[2 strides, L layers, n_C c_in, n_C c_out, n_ops ops]``. Every HyperCuboid
layer is a stride-1 stage followed by a stride-2 stage; in each stage every width ``c_out`` of the channel
set is the weighted sum of every op from every width ``c_in`` of the previous stage:

    S_t[c_out] = sum_{c_in, op} coef(t, c_in, c_out, op) * op_{t, c_in, c_out}(S_{t-1}[c_in])

with one softmax per (stride, layer) group over all ``n_C * n_C * n_ops`` entries. A DHGS search trains
this supernet like a DARTS search network (:meth:`HyperCuboidSupernet.arch_parameters` vs
:meth:`HyperCuboidSupernet.weight_parameters`), then extracts one channel-consistent *path* (stem, one op
per stage, head) and retrains it as a :class:`LinearPathNetwork`.

Stage ``t`` (``0 .. 2L-1``) is layer ``t // 2`` at stride ``1 + t % 2``; its weights are
``weights[t % 2, t // 2]`` (axis 0 of the weight tensor is the stride index: 0 = stride 1, 1 = stride 2).

Reference: ahundt/sharpDARTS ``cnn/model_search.py::MultiChannelNetwork`` and
``cnn/multichannelnet_graph_operations.py`` (tag ``sharpDARTS_paper_submit``). Differences, all deliberate:

* Path extraction is an exact dynamic program over the stages instead of ``nx.dag_longest_path`` on a
  networkx mirror of the supernet; spec 7.4 shows both maximise the sum of the stage weights over
  channel-consistent chains. No graph is built or pickled.
* The reference greedy search reads weights only on op->add edges, *after* its choice (the choice happens
  on unweighted edges, where "the first neighbour wins"), so its top-down walk ignores the weights. Ours
  applies the spec's description literally: the weight of an edge is the weight of its (c_in, c_out, op)
  entry (see :func:`greedy_path`).
* With pruning on, the reference crashes when every op reachable from the surviving widths falls below
  the threshold (``sum([])`` reaches the pooling). We then run the single highest-weight reachable op of
  that stage, so the forward stays defined (see :class:`HyperCuboidSupernet`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from .ops import ResizablePool, SharpSepConv
from .paths import HYPERCUBOID_OPS, STRIDES, HyperCuboidError, HyperCuboidPath, _check_channels, extract_path, greedy_path
from .registry import Registry
from .weighting import get_weighting

__all__ = [
    "HyperCuboidError",
    "HYPERCUBOID_OP_FACTORIES",
    "build_hypercuboid_op",
    "channel_set",
    "HyperCuboidSupernet",
    "joint_softmax",
    "entropy_per_group",
]



# ---------------------------------------------------------------------------------------------------------
# Ops and channel sets

HyperCuboidOpFactory = Callable[[int, int, int], nn.Module]
HYPERCUBOID_OP_FACTORIES: Registry[HyperCuboidOpFactory] = Registry("HyperCuboid op")
# Paper-era MULTICHANNELNET_PRIMITIVES, both affine: a 3x3 SharpSepConv with C_mid = C_out, and a 3x3 max
# ResizablePool (pool, then 1x1 conv + BN when the width changes). Padding 1 keeps stride-2 ops defined on
# 1x1 and odd maps (the digits data shrinks 8 -> 4 -> 2 -> 1).
HYPERCUBOID_OP_FACTORIES.register(
    "SharpSepConv", lambda c_in, c_out, stride: SharpSepConv(c_in, c_out, 3, stride, 1, affine=True)
)
HYPERCUBOID_OP_FACTORIES.register(
    "ResizablePool",
    lambda c_in, c_out, stride: ResizablePool(c_in, c_out, 3, stride, 1, affine=True, pool_type="max"),
)
# The weight tensor's op axis follows HYPERCUBOID_OPS; the factories must be registered in that order.
if tuple(HYPERCUBOID_OP_FACTORIES.names()) != HYPERCUBOID_OPS:
    raise RuntimeError(f"HyperCuboid op factories {HYPERCUBOID_OP_FACTORIES.names()} != {HYPERCUBOID_OPS}")


def build_hypercuboid_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """Instantiates HyperCuboid op ``name`` (one of :data:`~search_spaces.paths.HYPERCUBOID_OPS`)."""
    if stride not in STRIDES:
        raise HyperCuboidError(f"HyperCuboid op stride must be 1 or 2, got stride={stride} for {name!r}")
    return HYPERCUBOID_OP_FACTORIES.get(name)(c_in, c_out, stride)


def channel_set(init_channels: int, steps: int) -> tuple[int, ...]:
    """The HyperCuboid widths ``2 ** (floor(log2 init_channels) + k)`` for ``k = 0 .. steps-1`` (spec 7.1).

    Example: ``channel_set(36, 4) == (32, 64, 128, 256)``.
    """
    if init_channels < 1 or steps < 1:
        raise HyperCuboidError(
            f"channel_set needs init_channels >= 1 and steps >= 1, got {init_channels=}, {steps=}"
        )
    base = int(init_channels).bit_length() - 1  # exact floor(log2) for positive ints
    return tuple(2 ** (base + k) for k in range(steps))


# ---------------------------------------------------------------------------------------------------------
# Weights


def joint_softmax(alpha: torch.Tensor) -> torch.Tensor:
    """Softmax of ``alpha`` ``[2, L, n_C, n_C, n_ops]`` over the last three axes jointly, per (stride, layer).

    As the reference: ``softmax(alpha[s].view(L, -1), dim=-1).view(L, n_C, n_C, n_ops)`` for each stride s.
    """
    return torch.softmax(alpha.flatten(2), dim=-1).view_as(alpha)


def entropy_per_group(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each (stride, layer) softmax group of ``weights`` ``[2, L, n_C, n_C, n_ops]``.

    Returns a ``[2, L]`` tensor; ``log(n_C * n_C * n_ops)`` is uniform, 0 is one-hot. A fall over the search
    shows the weights committing (scalar DHGS does; Max-W stays near uniform, spec 7.5).
    """
    if weights.dim() != 5:
        raise HyperCuboidError(
            f"HyperCuboid weights have 5 axes [2, L, n_C, n_C, n_ops], got {tuple(weights.shape)}"
        )
    return -torch.special.xlogy(weights, weights).sum(dim=(-3, -2, -1))


# ---------------------------------------------------------------------------------------------------------
# Supernet


class HyperCuboidSupernet(nn.Module):
    """The DHGS supernet over the HyperCuboid (spec 7.1, 7.2), with scalar or Max-W weighting (spec 6).

    Every (layer, stride, c_in, c_out, op) has its own op instance (2 * L * n_C**2 * n_ops ops; 256 with
    the paper's defaults, including 256-channel ones). The architecture weights are one registered
    parameter ``arch`` of shape ``[2, L, n_C, n_C, n_ops]`` (axis 0: stride 1, stride 2), initialised to
    ``1e-3 * randn``; it is saved in ``state_dict``, moves with ``.to()`` and is returned only by
    :meth:`arch_parameters`.

    Pruning (``prune=True``, the reference's default ``always_apply_ops=False``): an op runs only if its
    softmax weight exceeds ``1 / G**2`` (``G = n_C * n_C * n_ops``, the group size) and its input width is
    alive; a width no op feeds is dead (None) and is skipped downstream and in the head. If that leaves a
    stage with no op at all, its single highest-weight op from a live width runs instead (the reference
    crashes there). Deciding what to skip reads the weights on the host once per forward.

    Args:
        channels: the widths of the grid, e.g. ``(32, 64, 128, 256)`` (see :func:`channel_set`).
        layers: HyperCuboid layers L (two stages each; spec: ``layers_of_cells // 2``).
        num_classes: output classes.
        in_channels: image channels (3 for CIFAR, 1 for digits).
        weighting: ``"scalar"`` (``coef = w``) or ``"max_w"`` (``coef = 1 - max_group w + w``, max not
            detached).
        prune: skip ops whose weight is at most ``1 / G**2`` (default False: always apply every op).
        head_channels: width of the head SharpSepConvs before pooling (768 in the paper).

    Raises:
        HyperCuboidError: on a bad size or width; ``UnknownNameError`` on an unknown weighting.

    Example:
        >>> net = HyperCuboidSupernet(channels=(4, 8), layers=2, in_channels=1, head_channels=16)
        >>> net(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        channels: Sequence[int],
        layers: int,
        num_classes: int = 10,
        in_channels: int = 3,
        weighting: str = "scalar",
        prune: bool = False,
        head_channels: int = 768,
    ) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        for name, value in (("layers", layers), ("num_classes", num_classes), ("in_channels", in_channels),
                            ("head_channels", head_channels)):  # fmt: skip
            if int(value) < 1:
                raise HyperCuboidError(f"HyperCuboidSupernet: {name} must be >= 1, got {name}={value}")
        self.layers = int(layers)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.head_channels = int(head_channels)
        self.weighting_name = weighting
        self._weighting = get_weighting(weighting)
        self.prune = bool(prune)

        n_c, n_ops = len(self.channels), len(HYPERCUBOID_OPS)
        self.group_size = n_c * n_c * n_ops
        self.prune_threshold = 1.0 / self.group_size**2

        # One stem per width, all applied in parallel to the image.
        self.stems = nn.ModuleList(
            nn.Sequential(nn.Conv2d(self.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            for c in self.channels
        )
        # stages[t][f]: the op of stage t at flat index f = (i * n_C + j) * n_ops + k, the same order as
        # arch[t % 2, t // 2].reshape(-1), so one reshape lines the coefficients up with the ops.
        self.stages = nn.ModuleList()
        for t in range(2 * self.layers):
            stride = STRIDES[t % 2]
            self.stages.append(
                nn.ModuleList(
                    build_hypercuboid_op(op, c_in, c_out, stride)
                    for c_in in self.channels
                    for c_out in self.channels
                    for op in HYPERCUBOID_OPS
                )
            )
        # (c_in index, c_out index) per flat index: plain ints, so the hot loop does no index arithmetic.
        self._edges = [(i, j) for i in range(n_c) for j in range(n_c) for _ in HYPERCUBOID_OPS]
        self.heads = nn.ModuleList(
            SharpSepConv(c, self.head_channels, 3, 1, 1, affine=True) for c in self.channels
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.head_channels, self.num_classes)

        self.arch = nn.Parameter(1e-3 * torch.randn(2, self.layers, n_c, n_c, n_ops))

    # -- parameters ---------------------------------------------------------------------------------------
    @property
    def arch_shape(self) -> tuple[int, int, int, int, int]:
        """``(2, L, n_C, n_C, n_ops)``."""
        return tuple(self.arch.shape)  # type: ignore[return-value]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights (one tensor), trained by the architect on validation batches."""
        return [self.arch]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture weights (trained by SGD on training batches)."""
        return [p for p in self.parameters() if p is not self.arch]

    def arch_weights(self) -> torch.Tensor:
        """Joint softmax per (stride, layer) group: ``[2, L, n_C, n_C, n_ops]``, each ``[s, l]`` sums to 1."""
        return joint_softmax(self.arch)

    def arch_coefficients(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The factors the ops' outputs are multiplied by (``w`` or ``1 - max_group w + w``), same shape."""
        w = self.arch_weights() if weights is None else weights
        return self._weighting(w, dim=(-3, -2, -1))

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.arch_weights()
        n_stages = 2 * self.layers
        # [2, L, G] -> [L, 2, G] -> [2L, G]: row t is stage t (layer t // 2, stride index t % 2).
        coefs = self.arch_coefficients(weights).flatten(2).transpose(0, 1).reshape(n_stages, -1)
        keep: list[list[bool]] | None = None
        order: list[list[int]] | None = None
        if self.prune:
            with torch.no_grad():
                w_stages = weights.flatten(2).transpose(0, 1).reshape(n_stages, -1)
                keep = (w_stages > self.prune_threshold).tolist()
                # Fallback order (highest weight first) for a stage left without any op; one host sync.
                order = torch.argsort(w_stages, dim=-1, descending=True, stable=True).tolist()

        states: list[torch.Tensor | None] = [stem(x) for stem in self.stems]
        edges = self._edges
        for t, stage in enumerate(self.stages):
            c = coefs[t].unbind(0)  # G scalar views, one op
            new: list[torch.Tensor | None] = [None] * len(self.channels)
            run: Sequence[int]
            if keep is None:
                run = range(len(edges))
            else:
                run = [f for f in range(len(edges)) if keep[t][f] and states[edges[f][0]] is not None]
                if not run:  # every reachable op pruned: run the best reachable one (see class docstring)
                    assert order is not None  # set together with keep
                    run = [next(f for f in order[t] if states[edges[f][0]] is not None)]
            for f in run:
                i, j = edges[f]
                y = stage[f](states[i])
                acc = new[j]
                # In place is safe: the accumulator is a fresh product that no backward saves.
                new[j] = y * c[f] if acc is None else acc.addcmul_(y, c[f])
            states = new

        out = None
        for head, s in zip(self.heads, states):
            if s is not None:
                h = head(s)
                out = h if out is None else out + h
        return self.classifier(self.global_pooling(out).flatten(1))

    # -- discretisation -----------------------------------------------------------------------------------
    def extract_path(self, *, stem_choice: int | None = None) -> HyperCuboidPath:
        """The maximum-weight channel-consistent path of the current weights (see :func:`extract_path`)."""
        return extract_path(self.arch_weights(), self.channels, stem_choice=stem_choice,
                            head_channels=self.head_channels)  # fmt: skip

    def greedy_path(self, direction: Literal["top_down", "bottom_up"] = "top_down") -> HyperCuboidPath:
        """The greedy path of the current weights (see :func:`greedy_path`)."""
        return greedy_path(self.arch_weights(), self.channels, direction, head_channels=self.head_channels)

    def entropy(self) -> torch.Tensor:
        """:func:`entropy_per_group` of the current weights (detached), ``[2, L]``."""
        return entropy_per_group(self.arch_weights().detach())
