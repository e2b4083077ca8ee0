"""Genotypes: the discrete cells a cell search produces (spec sections 2.5, 3.4).

A :class:`Genotype` is a frozen value: two edges per node, ``(op_name, input_index)``, where inputs 0 and 1
are the two previous cells and ``i + 2`` is node ``i`` of the same cell. It round-trips through JSON and
validates itself (known ops, valid input indices, node count) with errors that name the rule and the value.

No torch at import: spec validation and the command line use genotypes, and checking op names needs only
:mod:`search_spaces.names`. Parsing architecture weights imports torch when it runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .names import OP_NAMES, op_sets_defining
from .registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "Edge",
    "Genotype",
    "GenotypeError",
    "PublishedGenotype",
    "PUBLISHED_GENOTYPES",
    "get_published",
    "list_published",
    "parse_cell",
    "parse_genotype",
    "resolve_genotype",
    "default_op_set",
]

Edge = tuple[str, int]


class GenotypeError(ValueError):
    """An invalid genotype; the message names the rule and the offending value."""


def _edges(value: Iterable[Any], cell: str) -> tuple[Edge, ...]:
    out = []
    for i, edge in enumerate(value):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            raise GenotypeError(f"{cell}[{i}]: each edge must be a pair (op_name, input_index), got {edge!r}")
        op, idx = edge
        if not isinstance(op, str) or isinstance(idx, bool) or not isinstance(idx, int):
            raise GenotypeError(f"{cell}[{i}]: edge must be (str, int), got {edge!r}")
        out.append((op, idx))
    return tuple(out)


@dataclass(frozen=True)
class Genotype:
    """A normal cell and a reduction cell, each ``steps`` nodes with two input edges per node.

    Args:
        normal, reduce: ``2 * steps`` edges ``(op_name, input_index)``; edges ``2i`` and ``2i+1`` feed node i.
        normal_concat, reduce_concat: the states concatenated into the cell output (default: all nodes).
    """

    normal: tuple[Edge, ...]
    reduce: tuple[Edge, ...]
    normal_concat: tuple[int, ...] = field(default=())
    reduce_concat: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "normal", _edges(self.normal, "normal"))
        object.__setattr__(self, "reduce", _edges(self.reduce, "reduce"))
        steps = len(self.normal) // 2
        default_concat = tuple(range(2, steps + 2))
        for name in ("normal_concat", "reduce_concat"):
            value = getattr(self, name)
            value = tuple(default_concat if value is None or len(value) == 0 else value)
            object.__setattr__(self, name, tuple(int(v) for v in value))
        self._check_structure()

    # -- validation ---------------------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Nodes per cell."""
        return len(self.normal) // 2

    def _check_structure(self) -> None:
        if len(self.normal) == 0 or len(self.normal) % 2:
            raise GenotypeError(
                f"rule: a cell has two edges per node (an even, non-zero count); normal has {len(self.normal)}"
            )
        if len(self.reduce) != len(self.normal):
            raise GenotypeError(
                f"rule: normal and reduce cells have the same node count; normal has {len(self.normal)} edges, "
                f"reduce has {len(self.reduce)}"
            )
        for cell in ("normal", "reduce"):
            for pos, (op, idx) in enumerate(getattr(self, cell)):
                node = pos // 2
                if not 0 <= idx < node + 2:
                    raise GenotypeError(
                        f"{cell}[{pos}] = ({op!r}, {idx}): node {node} may only take inputs 0..{node + 1} "
                        f"(the two previous cells and earlier nodes), got input {idx}"
                    )
            concat = getattr(self, f"{cell}_concat")
            bad = [c for c in concat if not 0 <= c < self.steps + 2]
            if bad or len(set(concat)) != len(concat):
                raise GenotypeError(
                    f"{cell}_concat = {list(concat)}: entries must be distinct states in 0..{self.steps + 1}"
                )

    def op_names(self) -> set[str]:
        """Every op name used in either cell."""
        return {op for op, _ in self.normal + self.reduce}

    def validate(self, op_set: str | None = None) -> Genotype:
        """Checks every op is known (to ``op_set``, or to some op set); returns ``self`` for chaining.

        Raises:
            GenotypeError: naming the unknown ops, the op set and which op sets do define them.
        """
        ops = self.op_names()
        if op_set is not None:
            known = set(OP_NAMES.get(op_set))
            missing = sorted(ops - known)
            if missing:
                having = op_sets_defining(ops)
                raise GenotypeError(
                    f"op set {op_set!r} does not define ops {missing} used by this genotype; "
                    f"op sets that define all its ops: {having or 'none'}"
                )
        else:
            known = set().union(*(set(names) for _, names in OP_NAMES.items()))
            unknown = sorted(ops - known)
            if unknown:
                raise GenotypeError(f"unknown ops {unknown}; known ops: {sorted(known)}")
        return self

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [list(e) for e in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [list(e) for e in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype is a mapping with 'normal' and 'reduce', got {type(data).__name__}")
        missing = [k for k in ("normal", "reduce") if k not in data]
        if missing:
            raise GenotypeError(f"genotype is missing fields {missing}; got fields {sorted(data)}")
        extra = sorted(set(data) - {"normal", "reduce", "normal_concat", "reduce_concat", "layout"})
        if extra:
            raise GenotypeError(f"unknown genotype fields {extra}")
        if data.get("layout", "cell") != "cell":
            raise GenotypeError(f"only layout 'cell' is a cell genotype, got layout={data['layout']!r}")
        return cls(
            normal=data["normal"],
            reduce=data["reduce"],
            normal_concat=tuple(data.get("normal_concat") or ()),
            reduce_concat=tuple(data.get("reduce_concat") or ()),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"genotype JSON does not parse: {err}") from None
        return cls.from_dict(data)

    def __str__(self) -> str:
        def cell(edges: tuple[Edge, ...], concat: tuple[int, ...]) -> str:
            nodes = [
                f"  node {i + 2}: {edges[2 * i][0]}({_state(edges[2 * i][1])}) + "
                f"{edges[2 * i + 1][0]}({_state(edges[2 * i + 1][1])})"
                for i in range(len(edges) // 2)
            ]
            return "\n".join(nodes + [f"  output: concat({', '.join(_state(c) for c in concat)})"])

        return (
            f"normal cell:\n{cell(self.normal, self.normal_concat)}\n"
            f"reduction cell:\n{cell(self.reduce, self.reduce_concat)}"
        )


def _state(idx: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(idx, str(idx))


# ---------------------------------------------------------------------------------------------------------
# Parsing architecture weights (spec section 3.4)


def parse_cell(
    weights: torch.Tensor | Sequence[Sequence[float]],
    primitives: Sequence[str],
    steps: int,
    skip_primitive: str | None = "none",
) -> tuple[Edge, ...]:
    """Derives one cell's edges from its (softmaxed) weights, as DARTS's ``_parse``.

    For node i the incoming edges j are scored by their best op weight, ignoring ``skip_primitive``; the
    top two edges are kept in descending score order, each with its argmax op (again ignoring
    ``skip_primitive``). ``skip_primitive=None`` is the "no hack" parse, where ``none`` can win.

    Args:
        weights: ``(n_edges, n_ops)``, rows in the search cell's edge order.
        primitives: op names, one per column.
        steps: nodes per cell; ``n_edges`` must be ``2 + 3 + ... + (steps + 1)``.
        skip_primitive: op name excluded from scoring and choice, or None.
    """
    import torch  # here, not at the top: the rest of this module serves torch-free callers

    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    n_edges = sum(i + 2 for i in range(steps))
    if w.ndim != 2 or w.shape != (n_edges, len(primitives)):
        raise GenotypeError(
            f"weights must have shape (edges={n_edges} for {steps} nodes, ops={len(primitives)}), "
            f"got {tuple(w.shape)}"
        )
    if skip_primitive is not None and skip_primitive not in primitives:
        raise GenotypeError(f"skip_primitive {skip_primitive!r} is not one of the primitives {list(primitives)}")
    allowed = [k for k, p in enumerate(primitives) if p != skip_primitive]
    edges: list[Edge] = []
    start = 0
    for i in range(steps):
        rows = w[start : start + i + 2]
        # Stable sort by descending best allowed weight; ties keep the lower input index (as DARTS).
        best = [max(float(rows[j, k]) for k in allowed) for j in range(i + 2)]
        chosen = sorted(range(i + 2), key=lambda j: -best[j])[:2]
        for j in chosen:
            k_best = allowed[0]
            for k in allowed:
                if float(rows[j, k]) > float(rows[j, k_best]):
                    k_best = k
            edges.append((primitives[k_best], j))
        start += i + 2
    return tuple(edges)


def parse_genotype(
    weights_normal: torch.Tensor | Sequence[Sequence[float]],
    weights_reduce: torch.Tensor | Sequence[Sequence[float]],
    primitives: Sequence[str],
    *,
    steps: int = 4,
    multiplier: int = 4,
    skip_primitive: str | None = "none",
) -> Genotype:
    """Parses both cells; ``concat = range(2 + steps - multiplier, steps + 2)``."""
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return Genotype(
        normal=parse_cell(weights_normal, primitives, steps, skip_primitive),
        reduce=parse_cell(weights_reduce, primitives, steps, skip_primitive),
        normal_concat=concat,
        reduce_concat=concat,
    )


# ---------------------------------------------------------------------------------------------------------
# Published genotypes (spec section 2.5; DARTS_V1/V2 from quark0/darts cnn/genotypes.py)


@dataclass(frozen=True)
class PublishedGenotype:
    """A genotype as published, with the op set it was trained with."""

    name: str
    genotype: Genotype
    op_set: str
    description: str


PUBLISHED_GENOTYPES: Registry[PublishedGenotype] = Registry("published genotype")


def _publish(name: str, op_set: str, description: str, normal: list[Edge], reduce: list[Edge]) -> None:
    genotype = Genotype(normal=tuple(normal), reduce=tuple(reduce)).validate(op_set)
    PUBLISHED_GENOTYPES.register(name, PublishedGenotype(name, genotype, op_set, description))


_publish(
    "DARTS_V1", "darts", "DARTS first order (Liu et al.)",
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
)  # fmt: skip
_publish(
    "DARTS_V2", "darts", "DARTS second order; with --ops sharp it is the paper's 'DARTS+SSC, no search'",
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)  # fmt: skip
_publish(
    "SHARPSEPCONV_DARTS", "sharp", "SharpSepConvDARTS: DARTS primitives with sharp ops, scalar, 1st order",
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 2), ("avg_pool_3x3", 0),
     ("skip_connect", 2), ("avg_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 3)],
)  # fmt: skip
_publish(
    "SHARP_DARTS", "sharp", "sharpDARTS: sharpDARTS primitives, scalar, 1st order",
    [("choke_conv_3x3", 0), ("choke_conv_3x3", 1), ("skip_connect", 0), ("choke_conv_3x3", 1),
     ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("flood_conv_3x3", 0)],
)  # fmt: skip
_publish(
    "SHARPSEPCONV_DARTS_MAX_W", "sharp", "SharpSepConvDARTS searched with Max-W (the file's final definition)",
    [("dil_conv_3x3", 0), ("dil_conv_5x5", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 1),
     ("avg_pool_3x3", 2), ("sep_conv_3x3", 0), ("avg_pool_3x3", 4), ("max_pool_3x3", 3)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_5x5", 0), ("skip_connect", 2),
     ("sep_conv_5x5", 0), ("dil_conv_5x5", 3), ("sep_conv_5x5", 4), ("skip_connect", 3)],
)  # fmt: skip
_publish(
    "SHARP_DARTS_MAX_W", "sharp", "sharpDARTS searched with Max-W",
    [("sep_conv_3x3", 0), ("choke_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 2),
     ("dil_flood_conv_3x3", 3), ("flood_conv_3x3", 0), ("dil_flood_conv_3x3", 0), ("flood_conv_3x3", 3)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("dil_choke_conv_3x3", 0), ("dil_flood_conv_3x3", 2),
     ("dil_conv_3x3", 0), ("skip_connect", 3), ("flood_conv_3x3", 0), ("skip_connect", 3)],
)  # fmt: skip
_publish(
    "SHARPER_SCALAR", "sharp", "SharperDARTS, scalar weighting",
    [("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
     ("dil_flood_conv_3x3", 3), ("flood_conv_3x3", 1), ("dil_flood_conv_3x3", 3), ("dil_conv_3x3", 4)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 1), ("avg_pool_3x3", 0),
     ("avg_pool_3x3", 1), ("dil_flood_conv_3x3", 0), ("flood_conv_3x3", 3), ("skip_connect", 4)],
)  # fmt: skip
_SHARPER_MAX_W_REDUCE = [
    ("flood_conv_5x5", 0), ("dil_flood_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
    ("sep_conv_3x3", 0), ("skip_connect", 2), ("dil_conv_5x5", 4), ("sep_conv_3x3", 0),
]  # fmt: skip
_publish(
    "SHARPER_MAX_W", "sharp", "SharperDARTS-MaxW (the paper's best ImageNet model)",
    [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
     ("avg_pool_3x3", 3), ("flood_conv_3x3", 0), ("flood_conv_3x3", 1), ("skip_connect", 2)],
    _SHARPER_MAX_W_REDUCE,
)  # fmt: skip
_publish(
    "SHARPER_SCALAR_NO_HACK", "sharp", "SHARPER_SCALAR's weights parsed without the 'none' exclusion",
    [("none", 1), ("skip_connect", 0), ("none", 2), ("none", 1),
     ("none", 2), ("none", 1), ("none", 2), ("dil_flood_conv_3x3", 3)],
    [("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 1), ("avg_pool_3x3", 0),
     ("avg_pool_3x3", 1), ("dil_flood_conv_3x3", 0), ("none", 4), ("flood_conv_3x3", 3)],
)  # fmt: skip
_publish(
    "SHARPER_MAX_W_NO_HACK", "sharp", "SHARPER_MAX_W's weights parsed without the 'none' exclusion",
    [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
     ("avg_pool_3x3", 3), ("flood_conv_3x3", 0), ("none", 4), ("none", 3)],
    _SHARPER_MAX_W_REDUCE,
)  # fmt: skip


def get_published(name: str) -> PublishedGenotype:
    """Looks up a published genotype by name (e.g. ``"SHARPSEPCONV_DARTS"``)."""
    return PUBLISHED_GENOTYPES.get(name)


def list_published() -> list[str]:
    return PUBLISHED_GENOTYPES.names()


def default_op_set(name_or_json: object) -> str:
    """The op set a genotype builds with when none is given: a published genotype's own, else ``sharp``."""
    if isinstance(name_or_json, str) and name_or_json.strip() in PUBLISHED_GENOTYPES:
        return get_published(name_or_json.strip()).op_set
    return "sharp"


def resolve_genotype(name_or_json: str | dict[str, Any] | Genotype) -> Genotype:
    """A published name, a JSON text, a JSON file path, a mapping or a Genotype -> a validated Genotype."""
    if isinstance(name_or_json, Genotype):
        return name_or_json.validate()
    if isinstance(name_or_json, dict):
        return Genotype.from_dict(name_or_json).validate()
    text = name_or_json.strip()
    if text.startswith("{"):
        return Genotype.from_json(text).validate()
    if text in PUBLISHED_GENOTYPES:
        return get_published(text).genotype
    from pathlib import Path

    path = Path(text)
    if text.endswith(".json") and path.is_file():
        return Genotype.from_json(path.read_text()).validate()
    raise GenotypeError(
        f"{text!r} is neither a published genotype ({list_published()}), JSON text, nor a .json file"
    )
