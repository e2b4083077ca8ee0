"""HyperCuboid paths: the linear models DHGS and the human baseline choose (spec sections 7.4, 7.5).

A path is the stem width, then eight stages alternating stride 1 and stride 2 (two per HyperCuboid layer),
each ``(stride, c_in -> c_out, op)`` with ``op`` in :data:`HYPERCUBOID_OPS`, channel-consistent
(``c_out`` of a stage is ``c_in`` of the next), then a final ``SharpSepConv(c_last -> head_channels)``.

No torch at import (spec validation and the command line use paths); reading weight grids imports it.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "HyperCuboidError",
    "extract_path",
    "greedy_path",
    "path_weight",
    "random_path",
    "PATH_METHODS",
    "get_path_method",
    "list_path_methods",
    "HYPERCUBOID_OPS",
    "PathError",
    "PathStage",
    "HyperCuboidPath",
    "PublishedPath",
    "PUBLISHED_PATHS",
    "get_published_path",
    "list_published_paths",
    "resolve_path",
]

# The two HyperCuboid ops of the paper-era code (MULTICHANNELNET_PRIMITIVES): a 3x3 SharpSepConv and a
# 3x3 max ResizablePool, both of which can change the width.
HYPERCUBOID_OPS = ("SharpSepConv", "ResizablePool")


class PathError(ValueError):
    """An invalid HyperCuboid path; the message names the rule and the value."""


@dataclass(frozen=True)
class PathStage:
    """One stage of a path: an op of ``stride`` mapping ``c_in`` to ``c_out`` channels."""

    stride: int
    c_in: int
    c_out: int
    op: str

    def to_list(self) -> list[Any]:
        return [self.stride, self.c_in, self.c_out, self.op]


@dataclass(frozen=True)
class HyperCuboidPath:
    """A channel-consistent linear path through the HyperCuboid.

    Args:
        stem_channels: width of the chosen stem (must equal the first stage's ``c_in``).
        stages: the stages in order; strides alternate 1, 2, 1, 2, ...
        head_channels: output width of the final SharpSepConv before pooling (768 in the paper).
    """

    stem_channels: int
    stages: tuple[PathStage, ...]
    head_channels: int = 768

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, PathStage) else PathStage(*s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        self.validate()

    @property
    def layers(self) -> int:
        """HyperCuboid layers (two stages each)."""
        return len(self.stages) // 2

    @property
    def final_channels(self) -> int:
        return self.stages[-1].c_out if self.stages else self.stem_channels

    def validate(self) -> HyperCuboidPath:
        if not self.stages or len(self.stages) % 2:
            raise PathError(f"rule: a path has two stages (stride 1, stride 2) per layer; got {len(self.stages)}")
        previous = self.stem_channels
        for i, stage in enumerate(self.stages):
            expected_stride = 1 if i % 2 == 0 else 2
            if stage.stride != expected_stride:
                raise PathError(f"stage {i}: strides alternate 1, 2, ...; expected {expected_stride}, got {stage.stride}")
            if stage.op not in HYPERCUBOID_OPS:
                raise PathError(f"stage {i}: unknown op {stage.op!r}; known HyperCuboid ops: {list(HYPERCUBOID_OPS)}")
            if stage.c_in != previous:
                raise PathError(
                    f"stage {i}: rule c_in == previous c_out (channel consistency); got c_in={stage.c_in}, "
                    f"previous c_out={previous}"
                )
            if stage.c_in < 1 or stage.c_out < 1:
                raise PathError(f"stage {i}: channel counts must be positive, got {stage.c_in}->{stage.c_out}")
            previous = stage.c_out
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem_channels": self.stem_channels,
            "stages": [s.to_list() for s in self.stages],
            "head_channels": self.head_channels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperCuboidPath:
        if not isinstance(data, dict) or "stem_channels" not in data or "stages" not in data:
            raise PathError(f"a path is a mapping with 'stem_channels' and 'stages', got {data!r}")
        stages = []
        for i, s in enumerate(data["stages"]):
            if not isinstance(s, (list, tuple)) or len(s) != 4:
                raise PathError(f"stages[{i}]: a stage is [stride, c_in, c_out, op], got {s!r}")
            stages.append(PathStage(int(s[0]), int(s[1]), int(s[2]), str(s[3])))
        return cls(int(data["stem_channels"]), tuple(stages), int(data.get("head_channels", 768)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HyperCuboidPath:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise PathError(f"path JSON does not parse: {err}") from None

    def __str__(self) -> str:
        body = "; ".join(f"{s.stride}:{s.c_in}->{s.c_out} {s.op}" for s in self.stages)
        return f"stem {self.stem_channels} | {body} | SharpSepConv {self.final_channels}->{self.head_channels}"


@dataclass(frozen=True)
class PublishedPath:
    name: str
    path: HyperCuboidPath
    description: str


PUBLISHED_PATHS: Registry[PublishedPath] = Registry("published path")

_SEP, _POOL = "SharpSepConv", "ResizablePool"


def _publish(name: str, description: str, stem: int, stages: list[tuple[int, int, int, str]]) -> None:
    PUBLISHED_PATHS.register(
        name, PublishedPath(name, HyperCuboidPath(stem, tuple(PathStage(*s) for s in stages)), description)
    )


_publish(
    "MULTI_CHANNEL_HANDMADE_PATH", "the human one-shot choice: SharpSepConv at constant width, then a "
    "resizing max-pool that halves resolution and doubles channels", 32,
    [(1, 32, 32, _SEP), (2, 32, 64, _POOL), (1, 64, 64, _SEP), (2, 64, 128, _POOL),
     (1, 128, 128, _SEP), (2, 128, 256, _POOL), (1, 256, 256, _SEP), (2, 256, 256, _POOL)],
)  # fmt: skip
_publish(
    "MULTI_CHANNEL_MAX_W_PATH", "longest path of the Max-W DHGS search", 256,
    [(1, 256, 128, _POOL), (2, 128, 256, _POOL), (1, 256, 32, _POOL), (2, 32, 256, _POOL),
     (1, 256, 256, _SEP), (2, 256, 256, _POOL), (1, 256, 256, _POOL), (2, 256, 256, _POOL)],
)  # fmt: skip
_publish(
    "MULTI_CHANNEL_SCALAR_PATH", "longest path of the scalar (DARTS) DHGS search", 32,
    [(1, 32, 32, _SEP), (2, 32, 128, _POOL), (1, 128, 128, _SEP), (2, 128, 32, _POOL),
     (1, 32, 256, _POOL), (2, 256, 256, _POOL), (1, 256, 256, _POOL), (2, 256, 256, _POOL)],
)  # fmt: skip


def get_published_path(name: str) -> PublishedPath:
    return PUBLISHED_PATHS.get(name)


def list_published_paths() -> list[str]:
    return PUBLISHED_PATHS.names()


def resolve_path(name_or_json: str | dict[str, Any] | HyperCuboidPath) -> HyperCuboidPath:
    """A published path name, JSON text, a .json file, a mapping or a path -> a validated path."""
    if isinstance(name_or_json, HyperCuboidPath):
        return name_or_json.validate()
    if isinstance(name_or_json, dict):
        return HyperCuboidPath.from_dict(name_or_json)
    text = name_or_json.strip()
    if text.startswith("{"):
        return HyperCuboidPath.from_json(text)
    if text in PUBLISHED_PATHS:
        return get_published_path(text).path
    from pathlib import Path

    if text.endswith(".json") and Path(text).is_file():
        return HyperCuboidPath.from_json(Path(text).read_text())
    raise PathError(f"{text!r} is neither a published path ({list_published_paths()}), JSON text, nor a .json file")


# ---------------------------------------------------------------------------------------------------------
# HyperCuboid weight grids

STRIDES = (1, 2)


class HyperCuboidError(ValueError):
    """An invalid HyperCuboid configuration or weight tensor; the message names the rule and the value."""



def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    chans = tuple(int(c) for c in channels)
    if not chans or any(c < 1 for c in chans) or len(set(chans)) != len(chans):
        raise HyperCuboidError(f"channels must be distinct positive widths, got {tuple(channels)}")
    return chans


def _weights_as_lists(weights: torch.Tensor | Sequence, channels: Sequence[int]) -> list:
    """Validates a weight grid and returns it as nested Python floats (exact float64 arithmetic follows)."""
    import torch

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
# Path extraction from HyperCuboid weights (search_spaces.hypercuboid trains them)


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
    torch_module = sys.modules.get("torch")  # a torch.Generator exists only once torch is imported
    if torch_module is not None and isinstance(rng, torch_module.Generator):
        gen = rng

        def below(n: int) -> int:
            return int(torch_module.randint(n, (1,), generator=gen).item())
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
