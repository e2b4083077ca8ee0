"""The HyperCuboid supernet of Differentiable Hyperparameter Grid Search (DHGS), its path extraction and
the linear path networks it chooses (spec sections 6 and 7).

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

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from .ops import ResizablePool, SharpSepConv
from .paths import HYPERCUBOID_OPS, HyperCuboidPath, PathError, PathStage, resolve_path
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
    "extract_path",
    "greedy_path",
    "path_weight",
    "random_path",
    "PATH_METHODS",
    "get_path_method",
    "list_path_methods",
    "LinearPathNetwork",
    "build_path_network",
]

STRIDES = (1, 2)


class HyperCuboidError(ValueError):
    """An invalid HyperCuboid configuration or weight tensor; the message names the rule and the value."""


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


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    chans = tuple(int(c) for c in channels)
    if not chans or any(c < 1 for c in chans) or len(set(chans)) != len(chans):
        raise HyperCuboidError(f"channels must be distinct positive widths, got {tuple(channels)}")
    return chans


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


def _weights_as_lists(weights: torch.Tensor | Sequence, channels: Sequence[int]) -> list:
    """Validates a weight grid and returns it as nested Python floats (exact float64 arithmetic follows)."""
    w = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    n_c = len(channels)
    expected_tail = (n_c, n_c, len(HYPERCUBOID_OPS))
    if w.dim() != 5 or w.shape[0] != 2 or w.shape[1] < 1 or tuple(w.shape[2:]) != expected_tail:
        raise HyperCuboidError(
            f"HyperCuboid weights must have shape [2, L, n_C, n_C, n_ops] = [2, L, {n_c}, {n_c}, "
            f"{len(HYPERCUBOID_OPS)}] for channels {tuple(channels)}, got {tuple(w.shape)}"
        )
    if not torch.isfinite(w).all():
        raise HyperCuboidError("HyperCuboid weights must be finite")
    return w.tolist()


def _stage_grids(weights: torch.Tensor | Sequence, channels: Sequence[int]) -> list[list[list[list[float]]]]:
    """``grids[t][i][j][k]``: the weight of stage ``t``, c_in index ``i``, c_out index ``j``, op ``k``."""
    w = _weights_as_lists(weights, channels)
    layers = len(w[0])
    return [w[t % 2][t // 2] for t in range(2 * layers)]


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


# ---------------------------------------------------------------------------------------------------------
# Path extraction


def _make_path(
    channels: Sequence[int], stem: int, choices: Sequence[tuple[int, int]], head_channels: int
) -> HyperCuboidPath:
    """A path from the stem's channel index and one (c_out index, op index) per stage."""
    stages, c_in = [], stem
    for t, (j, k) in enumerate(choices):
        stages.append(PathStage(STRIDES[t % 2], channels[c_in], channels[j], HYPERCUBOID_OPS[k]))
        c_in = j
    return HyperCuboidPath(channels[stem], tuple(stages), head_channels)


def extract_path(
    weights: torch.Tensor | Sequence,
    channels: Sequence[int],
    *,
    stem_choice: int | None = None,
    head_channels: int = 768,
) -> HyperCuboidPath:
    """The channel-consistent path of maximum summed stage weight, exactly (spec 7.4).

    This is what ``nx.dag_longest_path`` finds on the reference's graph: one op edge per stage, the stages
    chained by width (``c_out`` of stage t is ``c_in`` of stage t+1, the stem width is stage 0's ``c_in``).
    Dynamic programming from the last stage backwards: ``best[t][i]`` is the largest sum of stages
    ``t..2L-1`` starting from width index ``i``; then a forward walk reads off a maximiser.
    Cost: O(L * n_C^2 * n_ops).

    Tie-breaking (deterministic): among maximum-weight paths, the lexicographically smallest sequence
    ``(stem index, c_out index of stage 0, op index of stage 0, c_out index of stage 1, ...)`` wins, indices
    into ``channels`` and :data:`~search_spaces.paths.HYPERCUBOID_OPS`. Sums are compared in float64,
    bit-for-bit as the DP computed them.

    Args:
        weights: ``[2, L, n_C, n_C, n_ops]``, usually the joint softmax (any finite scores work).
        channels: the widths of the grid, in the order of the weight axes.
        stem_choice: a width in ``channels`` to force as the stem (None: free).
        head_channels: recorded in the returned path.

    Returns:
        The path; its weight is :func:`path_weight`.

    Raises:
        HyperCuboidError: a weight shape that does not match ``channels``, or ``stem_choice`` not in it.
    """
    chans = _check_channels(channels)
    grids = _stage_grids(weights, chans)
    n_c, n_ops = len(chans), len(HYPERCUBOID_OPS)
    if stem_choice is not None and stem_choice not in chans:
        raise HyperCuboidError(f"stem_choice must be one of the channels {chans}, got {stem_choice}")

    # best[t][i]: max weight of stages t.. from width i; best[T] = 0.
    n_stages = len(grids)
    best = [[0.0] * n_c for _ in range(n_stages + 1)]
    for t in range(n_stages - 1, -1, -1):
        g, nxt = grids[t], best[t + 1]
        best[t] = [max(g[i][j][k] + nxt[j] for j in range(n_c) for k in range(n_ops)) for i in range(n_c)]

    starts = range(n_c) if stem_choice is None else [chans.index(stem_choice)]
    top = max(best[0][i] for i in starts)
    stem = next(i for i in starts if best[0][i] == top)
    choices, i = [], stem
    for t in range(n_stages):
        g, nxt = grids[t], best[t + 1]
        # The first (j, k) in index order whose value equals the DP's max (same float expression).
        j, k = next((j, k) for j in range(n_c) for k in range(n_ops) if g[i][j][k] + nxt[j] == best[t][i])
        choices.append((j, k))
        i = j
    return _make_path(chans, stem, choices, head_channels)


def greedy_path(
    weights: torch.Tensor | Sequence,
    channels: Sequence[int],
    direction: Literal["top_down", "bottom_up"] = "top_down",
    *,
    head_channels: int = 768,
) -> HyperCuboidPath:
    """A greedy path (spec 7.4 alternatives; ``train_search.py::gen_greedy_path``).

    The weight of an edge is the weight of its (c_in, c_out, op) entry.

    * ``top_down``: the stem edges are unweighted, so stage 0 takes its highest-weight entry over all
      (c_in, c_out, op), which also fixes the stem; each later stage takes its highest-weight entry among
      those leaving the current width (c_in = previous c_out).
    * ``bottom_up``: symmetric from the head: the last stage takes its highest-weight entry over all
      (c_in, c_out, op); each earlier stage takes its highest-weight entry among those entering the current
      width (c_out = next stage's c_in). The stem is stage 0's c_in.

    Ties: the first entry in index order (c_in, c_out, op) wins ("the first neighbour wins").
    A greedy path's weight never exceeds :func:`extract_path`'s.

    Raises:
        HyperCuboidError: an unknown direction or a weight shape that does not match ``channels``.
    """
    chans = _check_channels(channels)
    grids = _stage_grids(weights, chans)
    n_c, n_ops = len(chans), len(HYPERCUBOID_OPS)
    n_stages = len(grids)

    def argmax(candidates: list[tuple[int, int, int]], g: list) -> tuple[int, int, int]:
        best = candidates[0]
        for i, j, k in candidates[1:]:
            if g[i][j][k] > g[best[0]][best[1]][best[2]]:  # strict: the first maximum stays
                best = (i, j, k)
        return best

    all_entries = list(itertools.product(range(n_c), range(n_c), range(n_ops)))
    picks: list[tuple[int, int, int]] = [(0, 0, 0)] * n_stages
    if direction == "top_down":
        picks[0] = argmax(all_entries, grids[0])
        for t in range(1, n_stages):
            c_in = picks[t - 1][1]
            picks[t] = argmax([(c_in, j, k) for j in range(n_c) for k in range(n_ops)], grids[t])
    elif direction == "bottom_up":
        picks[-1] = argmax(all_entries, grids[-1])
        for t in range(n_stages - 2, -1, -1):
            c_out = picks[t + 1][0]
            picks[t] = argmax([(i, c_out, k) for i in range(n_c) for k in range(n_ops)], grids[t])
    else:
        raise HyperCuboidError(f"greedy direction must be 'top_down' or 'bottom_up', got {direction!r}")
    return _make_path(chans, picks[0][0], [(j, k) for _, j, k in picks], head_channels)


def path_weight(weights: torch.Tensor | Sequence, path: HyperCuboidPath, channels: Sequence[int]) -> float:
    """The sum of ``path``'s stage weights in ``weights`` ``[2, L, n_C, n_C, n_ops]`` (float64).

    Raises:
        PathError: the path's layer count differs from the grid's, or a width of it is not in ``channels``.
    """
    chans = _check_channels(channels)
    grids = _stage_grids(weights, chans)
    if len(path.stages) != len(grids):
        raise PathError(
            f"path has {len(path.stages)} stages but the weight grid has {len(grids)} (2 per layer)"
        )
    total = 0.0
    for t, stage in enumerate(path.stages):
        for c in (stage.c_in, stage.c_out):
            if c not in chans:
                raise PathError(f"stage {t}: width {c} is not in the grid's channels {chans}")
        total += grids[t][chans.index(stage.c_in)][chans.index(stage.c_out)][HYPERCUBOID_OPS.index(stage.op)]
    return total


def random_path(
    channels: Sequence[int],
    layers: int,
    rng: random.Random | torch.Generator | int | None = None,
    *,
    head_channels: int = 768,
) -> HyperCuboidPath:
    """A uniformly random channel-consistent path (the random-path baselines of spec 7.5).

    The stem width, every stage's ``c_out`` and every stage's op are drawn independently and uniformly, so
    every one of the ``n_C * (n_C * n_ops) ** (2L)`` paths is equally likely.

    Args:
        channels: the widths to draw from.
        layers: HyperCuboid layers L (the path has 2L stages).
        rng: a ``random.Random``, a ``torch.Generator``, an int seed, or None (a fresh ``random.Random()``).
        head_channels: recorded in the path.
    """
    chans = _check_channels(channels)
    if layers < 1:
        raise HyperCuboidError(f"random_path: layers must be >= 1, got layers={layers}")
    if isinstance(rng, torch.Generator):
        gen = rng

        def below(n: int) -> int:
            return int(torch.randint(n, (1,), generator=gen).item())
    else:
        r = rng if isinstance(rng, random.Random) else random.Random(rng)
        below = r.randrange
    n_c, n_ops = len(chans), len(HYPERCUBOID_OPS)
    stem = below(n_c)
    choices = [(below(n_c), below(n_ops)) for _ in range(2 * layers)]
    return _make_path(chans, stem, choices, head_channels)


PathMethod = Callable[..., HyperCuboidPath]
PATH_METHODS: Registry[PathMethod] = Registry("path extraction method")
PATH_METHODS.register("longest", lambda w, ch, **kw: extract_path(w, ch, **kw))
PATH_METHODS.register("greedy_top_down", lambda w, ch, **kw: greedy_path(w, ch, "top_down", **kw))
PATH_METHODS.register("greedy_bottom_up", lambda w, ch, **kw: greedy_path(w, ch, "bottom_up", **kw))


def get_path_method(name: str) -> PathMethod:
    """``longest``, ``greedy_top_down`` or ``greedy_bottom_up``.

    Each is ``f(weights, channels, *, head_channels=768) -> HyperCuboidPath``.
    """
    return PATH_METHODS.get(name)


def list_path_methods() -> list[str]:
    return PATH_METHODS.names()


# ---------------------------------------------------------------------------------------------------------
# Linear path networks


class LinearPathNetwork(nn.Module):
    """The final model of a HyperCuboid path (spec 7.4): one linear chain, no cells, aux head or drop path.

    stem ``Conv3x3(in -> stem) + BN`` -> the stages' ops in order -> ``SharpSepConv(c_last -> head, 3x3)``
    -> global average pooling -> ``Linear(head, num_classes)``. ``forward`` returns the logits.

    Args:
        path: the path (validated again here).
        num_classes: output classes.
        in_channels: image channels (3 for CIFAR, 1 for digits).
    """

    def __init__(self, path: HyperCuboidPath, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise HyperCuboidError(
                f"LinearPathNetwork needs num_classes, in_channels >= 1, got {num_classes=}, {in_channels=}"
            )
        self.path = path.validate()
        if path.head_channels < 1:
            raise PathError(f"head_channels must be >= 1, got {path.head_channels}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, path.stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(path.stem_channels),
        )
        self.stages = nn.Sequential(
            *(build_hypercuboid_op(s.op, s.c_in, s.c_out, s.stride) for s in path.stages)
        )
        self.head = SharpSepConv(path.final_channels, path.head_channels, 3, 1, 1, affine=True)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(path.head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.global_pooling(x).flatten(1))


def build_path_network(
    path: HyperCuboidPath | str | dict, *, num_classes: int = 10, in_channels: int = 3
) -> LinearPathNetwork:
    """Builds the linear network of ``path``: a path, a published name, JSON text, a .json file or a mapping.

    Example:
        >>> net = build_path_network("MULTI_CHANNEL_HANDMADE_PATH", num_classes=10, in_channels=3)
    """
    return LinearPathNetwork(resolve_path(path), num_classes=num_classes, in_channels=in_channels)
