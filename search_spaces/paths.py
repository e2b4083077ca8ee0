"""HyperCuboid paths: the linear models DHGS and the human baseline choose (spec sections 7.4, 7.5).

A path is the stem width, then eight stages alternating stride 1 and stride 2 (two per HyperCuboid layer),
each ``(stride, c_in -> c_out, op)`` with ``op`` in :data:`HYPERCUBOID_OPS`, channel-consistent
(``c_out`` of a stage is ``c_in`` of the next), then a final ``SharpSepConv(c_last -> head_channels)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .registry import Registry

__all__ = [
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
