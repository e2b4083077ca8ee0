"""Drawings of genotypes (normal and reduction cells) and HyperCuboid paths, as SVG or PNG files.

Pure matplotlib (no Graphviz binaries), so ``pip install`` alone is enough. A cell is drawn with a small
layered layout of our own: the two inputs ``c_{k-2}``/``c_{k-1}`` on the left, each intermediate node in the
column of its dependency depth and the row of its index, the output ``c_{k}`` on the right. Edges are
``arc3`` curves whose bend is chosen per edge, greedily, to keep curves off other nodes and op labels off
each other. A path is drawn as a left-to-right chain of boxes.

Rendering never touches the global matplotlib state: each figure is a bare ``Figure`` on an Agg canvas
(no pyplot, no display, no backend switch in the caller's process), and rc settings are scoped with
``rc_context``. SVG text stays text (``svg.fonttype = none``), so the file names its ops literally.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces.genotypes import PUBLISHED_GENOTYPES, Edge, Genotype
from search_spaces.paths import PUBLISHED_PATHS, HyperCuboidPath

if TYPE_CHECKING:  # matplotlib is imported lazily so `nas-service --help` stays fast.
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DrawingError",
    "OUTPUT_FORMATS",
    "draw",
    "draw_genotype",
    "draw_path",
    "op_family",
    "resolve_drawable",
]

# Output format by file extension.
OUTPUT_FORMATS = {".svg": "svg", ".png": "png"}

# Op families and their colours (colour-blind-safe Okabe-Ito hues); `none` is drawn dashed and grey.
_FAMILY_COLORS = {
    "conv": "#0072B2",
    "pool": "#E69F00",
    "skip": "#009E73",
    "none": "#999999",
    "other": "#CC79A7",
}
# Legend entries; none reads "none" alone, which would be counted as another op label in the SVG.
_FAMILY_LABELS = {"conv": "convolution", "pool": "pooling", "skip": "skip (identity)", "none": "none (zero)",
                  "other": "other"}  # fmt: skip
_STAGE_FACES = {"conv": "#DCE9F7", "pool": "#FDEBC8"}  # path boxes: light tints of the family colours
_NODE_COLORS = {"input": "#D9EFD9", "node": "#DCE9F7", "output": "#FFF1C1"}

_LABEL_FONTSIZE = 8.0  # points
_PNG_DPI = 150
_INCH = 72.0  # points per inch; one data unit is one inch in every drawing below


class DrawingError(ValueError):
    """A drawing request that cannot be met; the message names the rule and the value."""


def op_family(op: str) -> str:
    """The colour family of an op name: ``conv``, ``pool``, ``skip``, ``none`` or ``other``.

    HyperCuboid ops count too: ``SharpSepConv`` is a conv, ``ResizablePool`` a pool.
    """
    low = op.lower()
    if low == "none":
        return "none"
    if "skip" in low or low == "identity":
        return "skip"
    if "pool" in low:
        return "pool"
    if "conv" in low:
        return "conv"
    return "other"


# ---------------------------------------------------------------------------------------------------------
# Cell layout


@dataclass(frozen=True)
class _Node:
    """A drawn state: centre, collision radius (inches), label, kind (input / node / output)."""

    x: float
    y: float
    radius: float
    label: str
    kind: str


@dataclass(frozen=True)
class _PlacedEdge:
    """A labelled edge from state ``src`` to state ``dst``: its ``arc3`` bend and its label's centre."""

    src: int
    dst: int
    op: str
    rad: float
    label_xy: tuple[float, float]


_COL_GAP = 2.7  # inches between layers: room for the longest op label ("dil_flood_conv_3x3") plus arrows
_IN_GAP = 3.3  # inputs to the first layer: up to eight labelled edges fan out here, give them room
_OUT_GAP = 1.9  # last layer to the output: unlabelled edges only
_ROW_GAP = 1.05  # inches between node rows
_NODE_R = 0.24  # intermediate node circle radius
_BOX_W, _BOX_H = 0.84, 0.40  # input / output boxes
_RAD_CHOICES = (0.0,) + tuple(s * r for r in (0.08, 0.16, 0.24, 0.32, 0.4, 0.5) for s in (1, -1))


def _depths(edges: Sequence[Edge], steps: int) -> list[int]:
    """Dependency depth of each state: inputs 0, node i = 1 + max depth of its inputs."""
    depth = [0, 0]
    for i in range(steps):
        depth.append(1 + max(depth[idx] for _, idx in edges[2 * i : 2 * i + 2]))
    return depth


def _column_x(depth: int) -> float:
    """x (inches) of the layer at dependency ``depth`` (the inputs are depth 0)."""
    return 0.0 if depth == 0 else _IN_GAP + (depth - 1) * _COL_GAP


def _cell_nodes(edges: Sequence[Edge], steps: int, max_depth: int) -> list[_Node]:
    """Node positions: states 0, 1 (inputs), 2..steps+1 (intermediate), steps+2 (output)."""
    depth = _depths(edges, steps)
    top = (steps - 1) / 2 * _ROW_GAP  # row of node 0; node i sits i rows lower
    in_y = max(0.55, 0.6 * top + 0.1)
    nodes = [
        _Node(0.0, in_y, _BOX_W / 2, "c_{k-2}", "input"),
        _Node(0.0, -in_y, _BOX_W / 2, "c_{k-1}", "input"),
    ]
    for i in range(steps):
        nodes.append(_Node(_column_x(depth[i + 2]), top - i * _ROW_GAP, _NODE_R, str(i), "node"))
    nodes.append(_Node(_column_x(max_depth) + _OUT_GAP, 0.0, _BOX_W / 2, "c_{k}", "output"))
    return nodes


def _arc3_points(p0: tuple[float, float], p2: tuple[float, float], rad: float, n: int = 24) -> np.ndarray:
    """``(n + 1, 2)`` points on matplotlib's ``arc3`` curve: a quadratic Bezier whose control point sits
    ``rad * |p2 - p0|`` off the chord's midpoint (the same in data units here, as axes use equal aspect)."""
    (x0, y0), (x2, y2) = p0, p2
    control = np.array([(x0 + x2) / 2 + rad * (y2 - y0), (y0 + y2) / 2 - rad * (x2 - x0)])
    t = np.linspace(0.0, 1.0, n + 1)[:, None]
    return (1 - t) ** 2 * np.array([x0, y0]) + 2 * t * (1 - t) * control + t**2 * np.array([x2, y2])


def _label_size(text: str, fontsize: float = _LABEL_FONTSIZE) -> tuple[float, float]:
    """Approximate (width, height) in inches of a label with its rounded bbox (pad 0.25 em)."""
    return ((0.62 * len(text) + 0.6) * fontsize / _INCH, 1.75 * fontsize / _INCH)


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap area of two boxes given as (cx, cy, w, h)."""
    ox = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    oy = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    return max(0.0, ox) * max(0.0, oy)


def _in_box(pts: np.ndarray, box: np.ndarray, margin: float = 0.0) -> int:
    """How many of ``pts`` fall inside ``box`` (cx, cy, w, h) grown by ``margin``."""
    inside_x = np.abs(pts[:, 0] - box[0]) < box[2] / 2 + margin
    inside_y = np.abs(pts[:, 1] - box[1]) < box[3] / 2 + margin
    return int((inside_x & inside_y).sum())


def _clearance_cost(
    pts: np.ndarray, nodes: Sequence[_Node], ends: tuple[int, int], ylim: tuple[float, float]
) -> float:
    """Cost of a curve passing near nodes other than its ends, or leaving the panel vertically."""
    centres = np.array([(n.x, n.y) for n in nodes])
    radii = np.array([n.radius for n in nodes])
    foreign = np.ones(len(nodes), dtype=bool)
    foreign[list(ends)] = False
    # A curve through (or grazing) a foreign node reads as an edge into it: the worst confusion.
    dist = np.linalg.norm(pts[:, None, :] - centres[None, :, :], axis=2).min(axis=0)
    c = 40.0 * float(np.clip(radii + 0.2 - dist, 0.0, None)[foreign].sum())
    # Curves that leave the panel would be clipped or run into the next panel.
    c += 5.0 * int(((pts[:, 1] < ylim[0] + 0.1) | (pts[:, 1] > ylim[1] - 0.1)).sum())
    return c


def _place_output_edges(
    nodes: Sequence[_Node], states: Sequence[int], ylim: tuple[float, float]
) -> list[float]:
    """Bends for the unlabelled edges into the output: as straight as possible while missing other nodes."""
    out = len(nodes) - 1
    end = (nodes[out].x, nodes[out].y)
    rads = []
    for state in states:
        start = (nodes[state].x, nodes[state].y)

        def cost(rad: float, start: tuple[float, float] = start, state: int = state) -> float:
            return 0.15 * abs(rad) + _clearance_cost(_arc3_points(start, end, rad), nodes, (state, out), ylim)

        rads.append(min(_RAD_CHOICES, key=cost))
    return rads


def _place_edges(
    nodes: Sequence[_Node],
    edges: Sequence[tuple[int, int, str]],
    fixed: Sequence[np.ndarray],
    ylim: tuple[float, float],
) -> list[_PlacedEdge]:
    """Chooses each edge's ``arc3`` bend greedily (three sweeps) so curves avoid foreign nodes and labels
    avoid each other, the nodes and the other curves. ``fixed`` are unlabelled curves (output edges)."""
    node_boxes = [np.array([n.x, n.y, 2 * n.radius, 2 * n.radius]) for n in nodes]
    # Every candidate's curve (inner points only: the ends sit inside their own nodes) and label box.
    curves: dict[tuple[int, float], np.ndarray] = {}
    boxes: dict[tuple[int, float], np.ndarray] = {}
    static: dict[tuple[int, float], float] = {}  # the part of the cost that ignores the other edges
    for e, (src, dst, op) in enumerate(edges):
        w, h = _label_size(op)
        for rad in _RAD_CHOICES:
            pts = _arc3_points((nodes[src].x, nodes[src].y), (nodes[dst].x, nodes[dst].y), rad)
            box = np.array([*pts[len(pts) // 2], w, h])
            curves[(e, rad)], boxes[(e, rad)] = pts[2:-2], box
            # Prefer straight edges, all else equal.
            c = 0.15 * abs(rad) + _clearance_cost(pts, nodes, (src, dst), ylim)
            # A label on a node hides it; a label must stay inside the panel.
            c += 60.0 * sum(_box_overlap(box, nb) for n, nb in enumerate(node_boxes) if n not in (src, dst))
            if box[1] - h / 2 < ylim[0] or box[1] + h / 2 > ylim[1]:
                c += 5.0
            c += 0.5 * sum(_in_box(f, box) for f in fixed)
            static[(e, rad)] = c

    pad = np.array([0.0, 0.0, 0.08, 0.06])

    def cost(e: int, rad: float, chosen: dict[int, float]) -> float:
        pts, box = curves[(e, rad)], boxes[(e, rad)]
        c = static[(e, rad)]
        for other, other_rad in chosen.items():
            if other == e:
                continue
            o_pts, o_box = curves[(other, other_rad)], boxes[(other, other_rad)]
            c += 80.0 * _box_overlap(box, o_box + pad)
            # A curve through another edge's label reads as if the label were its own.
            c += 1.5 * (_in_box(o_pts, box, 0.04) + _in_box(pts, o_box, 0.04))
        return c

    # Short edges have the least freedom: place them first, then revisit every edge with all others known.
    order = sorted(range(len(edges)), key=lambda e: math.dist(
        (nodes[edges[e][0]].x, nodes[edges[e][0]].y), (nodes[edges[e][1]].x, nodes[edges[e][1]].y)))
    chosen: dict[int, float] = {}
    for _sweep in range(3):
        for e in order:
            chosen[e] = min(_RAD_CHOICES, key=lambda r: cost(e, r, chosen))
    placed = []
    for e, (src, dst, op) in enumerate(edges):
        box = boxes[(e, chosen[e])]
        placed.append(_PlacedEdge(src, dst, op, chosen[e], (float(box[0]), float(box[1]))))
    return placed


def _node_patch(node: _Node) -> Any:
    from matplotlib.patches import Circle, FancyBboxPatch

    face = _NODE_COLORS[node.kind]
    if node.kind == "node":
        return Circle((node.x, node.y), node.radius, facecolor=face, edgecolor="#333333", lw=1.2, zorder=3)
    return FancyBboxPatch(
        (node.x - _BOX_W / 2, node.y - _BOX_H / 2), _BOX_W, _BOX_H,
        boxstyle="round,pad=0,rounding_size=0.08", facecolor=face, edgecolor="#333333", lw=1.2, zorder=3,
    )  # fmt: skip


_PANEL_MARGIN = 0.65  # inches above the top node row and below the bottom one


@dataclass(frozen=True)
class _CellLayout:
    """Everything needed to draw one cell: nodes, (state, bend) of each output edge, the labelled edges."""

    nodes: list[_Node]
    output_edges: list[tuple[int, float]]
    edges: list[_PlacedEdge]
    ylim: tuple[float, float]


def _layout_cell(edges: Sequence[Edge], concat: Sequence[int], steps: int, max_depth: int) -> _CellLayout:
    """Lays out one cell; ``max_depth`` is shared by both cells so their columns line up."""
    half = (steps - 1) / 2 * _ROW_GAP + _PANEL_MARGIN
    ylim = (-half, half)
    nodes = _cell_nodes(edges, steps, max_depth)
    out = len(nodes) - 1
    output_rads = _place_output_edges(nodes, concat, ylim)
    end = (nodes[out].x, nodes[out].y)
    fixed = [_arc3_points((nodes[s].x, nodes[s].y), end, rad) for s, rad in zip(concat, output_rads)]
    # Edges 2i and 2i+1 feed node i, which is state i + 2.
    labelled = [(idx, 2 + pos // 2, op) for pos, (op, idx) in enumerate(edges)]
    placed = _place_edges(nodes, labelled, fixed, ylim)
    return _CellLayout(nodes, list(zip(concat, output_rads)), placed, ylim)


def _draw_cell(ax: Axes, layout: _CellLayout, title: str) -> None:
    from matplotlib.patches import FancyArrowPatch

    nodes = layout.nodes
    out = len(nodes) - 1
    patches = [_node_patch(n) for n in nodes]
    for node, patch in zip(nodes, patches):
        ax.add_patch(patch)
        bold = "bold" if node.kind == "node" else "normal"
        ax.text(node.x, node.y, node.label, ha="center", va="center", fontsize=10, fontweight=bold, zorder=4)

    # Arrows go in with add_artist, not add_patch: the limits are fixed, and add_patch would compute each
    # arrow's display path just to update them (half the drawing time). The arrows are clipped to the node
    # patches (patchA/patchB), so they start and end on the node outlines.
    # Concatenated states feed the output: grey, unlabelled, under everything else.
    for state, rad in layout.output_edges:
        a, b = nodes[state], nodes[out]
        ax.add_artist(FancyArrowPatch(
            (a.x, a.y), (b.x, b.y), patchA=patches[state], patchB=patches[out], arrowstyle="-|>",
            mutation_scale=10, color="#AAAAAA", lw=1.0, connectionstyle=f"arc3,rad={rad}", zorder=1,
            shrinkB=2,
        ))  # fmt: skip
    for edge in layout.edges:
        family = op_family(edge.op)
        color = _FAMILY_COLORS[family]
        a, b = nodes[edge.src], nodes[edge.dst]
        ax.add_artist(FancyArrowPatch(
            (a.x, a.y), (b.x, b.y), patchA=patches[edge.src], patchB=patches[edge.dst], arrowstyle="-|>",
            mutation_scale=12, color=color, lw=1.6, linestyle="--" if family == "none" else "-",
            connectionstyle=f"arc3,rad={edge.rad}", zorder=2, shrinkB=2,
        ))  # fmt: skip
        ax.text(
            *edge.label_xy, edge.op, ha="center", va="center", fontsize=_LABEL_FONTSIZE, zorder=5,
            bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": color, "lw": 0.8},
        )  # fmt: skip
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold")


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # an explicit Agg canvas: no pyplot, no display, no global backend switch
    return fig


def _bare_axes(
    fig: Figure, rect: Sequence[float], xlim: tuple[float, float], ylim: tuple[float, float]
) -> Axes:
    ax = fig.add_axes(rect)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")  # the arc3 geometry above assumes equal x and y scales
    ax.axis("off")
    return ax


def _legend(fig: Figure, families: Sequence[str], y: float) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=_FAMILY_COLORS[f], lw=2, linestyle="--" if f == "none" else "-",
               label=_FAMILY_LABELS[f])
        for f in families
    ]
    fig.legend(handles=handles, loc="center", bbox_to_anchor=(0.5, y), ncol=len(handles), frameon=False,
               fontsize=9, handlelength=2.2)  # fmt: skip


def _genotype_layouts(genotype: Genotype) -> list[tuple[str, _CellLayout]]:
    """The two panels, ("normal cell", layout) and ("reduction cell", layout), on shared columns."""
    steps = genotype.steps
    cells = [
        ("normal cell", genotype.normal, genotype.normal_concat),
        ("reduction cell", genotype.reduce, genotype.reduce_concat),
    ]
    max_depth = max(max(_depths(edges, steps)) for _, edges, _ in cells)
    return [(name, _layout_cell(edges, concat, steps, max_depth)) for name, edges, concat in cells]


def _genotype_figure(genotype: Genotype, title: str | None) -> Figure:
    panels = _genotype_layouts(genotype)
    # Both panels share one scale (1 data unit = 1 inch) and one width, so their columns line up.
    right = max(n.x for _, layout in panels for n in layout.nodes)
    xlim = (-_BOX_W / 2 - 0.2, right + _BOX_W / 2 + 0.2)
    ylim = panels[0][1].ylim
    panel_w, panel_h = xlim[1] - xlim[0], ylim[1] - ylim[0]
    head = 0.55 if title else 0.15
    panel_title = 0.3
    legend_h = 0.4
    fig_w = panel_w + 0.4
    fig_h = head + len(panels) * (panel_title + panel_h) + legend_h
    fig = _new_figure(fig_w, fig_h)
    if title:
        fig.suptitle(title, fontsize=14, fontweight="bold", y=1 - 0.12 / fig_h, va="top")
    top = fig_h - head
    for name, layout in panels:
        bottom = top - panel_title - panel_h
        rect = (0.2 / fig_w, bottom / fig_h, panel_w / fig_w, panel_h / fig_h)
        _draw_cell(_bare_axes(fig, rect, xlim, layout.ylim), layout, name)
        top = bottom
    used = sorted({op_family(op) for op in genotype.op_names()}, key=list(_FAMILY_COLORS).index)
    _legend(fig, used, legend_h / 2 / fig_h)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Path layout


def _path_figure(path: HyperCuboidPath, title: str | None) -> Figure:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    # Each box: (lines of text, index of the bold line, colour family or None for the fixed parts).
    boxes: list[tuple[list[str], int, str | None]] = [
        (["stem", "Conv3x3 + BN", f"width {path.stem_channels}"], 0, None)
    ]
    for stage in path.stages:
        lines = [f"stride {stage.stride}", f"{stage.c_in}→{stage.c_out}", stage.op]
        boxes.append((lines, 2, op_family(stage.op)))
    boxes += [
        (["SharpSepConv", f"{path.final_channels}→{path.head_channels}", "head"], 0, "conv"),
        (["GAP", "global avg pool"], 0, None),
        (["Linear", f"{path.head_channels}→classes"], 0, None),
    ]
    box_w, box_h, gap, line_step = 1.3, 0.95, 0.38, 0.27
    width = len(boxes) * box_w + (len(boxes) - 1) * gap
    head = 0.6 if title else 0.15
    bracket_h, legend_h = 0.5, 0.45
    fig_w, fig_h = width + 0.4, head + box_h + bracket_h + legend_h
    fig = _new_figure(fig_w, fig_h)
    if title:
        fig.suptitle(title, fontsize=14, fontweight="bold", y=1 - 0.12 / fig_h, va="top")
    rect = (0.2 / fig_w, legend_h / fig_h, width / fig_w, (box_h + bracket_h) / fig_h)
    ax = _bare_axes(fig, rect, (0, width), (-box_h / 2, box_h / 2 + bracket_h))
    for i, (lines, bold_line, family) in enumerate(boxes):
        x = i * (box_w + gap)
        ax.add_patch(FancyBboxPatch(
            (x, -box_h / 2), box_w, box_h, boxstyle="round,pad=0,rounding_size=0.1",
            facecolor=_STAGE_FACES.get(family or "", "#EEEEEE"),
            edgecolor=_FAMILY_COLORS[family] if family else "#333333", lw=1.6 if family else 1.0, zorder=2,
        ))  # fmt: skip
        for k, line in enumerate(lines):
            y = ((len(lines) - 1) / 2 - k) * line_step
            ax.text(x + box_w / 2, y, line, ha="center", va="center", fontsize=9,
                    fontweight="bold" if k == bold_line else "normal", zorder=3)  # fmt: skip
    for i in range(len(boxes) - 1):
        ax.add_artist(FancyArrowPatch(
            (i * (box_w + gap) + box_w, 0), ((i + 1) * (box_w + gap), 0), arrowstyle="-|>", mutation_scale=12,
            color="#333333", lw=1.2, shrinkA=1, shrinkB=1, zorder=1,
        ))  # fmt: skip
    # Bracket each HyperCuboid layer (two stages: stride 1 then stride 2) from above.
    for layer in range(path.layers):
        x0 = (1 + 2 * layer) * (box_w + gap)
        x1 = x0 + 2 * box_w + gap
        y = box_h / 2 + 0.15
        xs, ys = [x0 + 0.05, x0 + 0.05, x1 - 0.05, x1 - 0.05], [y - 0.07, y, y, y - 0.07]
        ax.plot(xs, ys, color="#777777", lw=1)
        ax.text((x0 + x1) / 2, y + 0.05, f"layer {layer + 1}", ha="center", va="bottom", fontsize=9,
                color="#555555")  # fmt: skip
    used = sorted({op_family(s.op) for s in path.stages}, key=list(_FAMILY_COLORS).index)
    _legend(fig, used, 0.22 / fig_h)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Saving and public API


def _output_format(out_path: str | os.PathLike[str]) -> str:
    suffix = Path(out_path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise DrawingError(
            f"the output format is chosen by the file extension, one of {sorted(OUTPUT_FORMATS)}; "
            f"got {str(out_path)!r}"
        )
    return OUTPUT_FORMATS[suffix]


def _save_atomic(fig: Figure, out_path: str | os.PathLike[str]) -> Path:
    """Renders to a temp file in the target folder, then ``os.replace``: a failed render leaves nothing."""
    import matplotlib

    fmt = _output_format(out_path)
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Text stays text in SVG (searchable, and the file names its ops); fixed salt and no date make
        # the same drawing byte-identical across runs.
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nas-service"}):
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(tmp, format=fmt, dpi=_PNG_DPI, facecolor="white", metadata=metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def draw_genotype(genotype: Genotype, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draws a genotype's normal and reduction cells into ``path`` (``.svg`` or ``.png``).

    Args:
        genotype: the cells to draw.
        path: output file; its extension chooses the format. Parent folders are created.
        title: figure title, e.g. the genotype's published name.

    Returns:
        The written path.

    Raises:
        DrawingError: the extension is not ``.svg`` or ``.png``.
    """
    _output_format(path)  # fail before any rendering work
    return _save_atomic(_genotype_figure(genotype, title), path)


def draw_path(
    path_obj: HyperCuboidPath, out_path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draws a HyperCuboid path as a left-to-right chain: stem, the stages, SharpSepConv head, GAP, Linear.

    Args:
        path_obj: the path to draw.
        out_path: output file (``.svg`` or ``.png``).
        title: figure title, e.g. the path's published name.

    Returns:
        The written path.
    """
    _output_format(out_path)
    return _save_atomic(_path_figure(path_obj, title), out_path)


def _from_mapping(data: Any, source: str) -> Genotype | HyperCuboidPath:
    if isinstance(data, dict) and "normal" in data:
        return Genotype.from_dict(data).validate()
    if isinstance(data, dict) and "stem_channels" in data:
        return HyperCuboidPath.from_dict(data)
    got = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise DrawingError(
        f"{source}: expected a genotype {{'normal', 'reduce', ...}} or a path "
        f"{{'stem_channels', 'stages', ...}}, got {got}"
    )


def resolve_drawable(
    name_or_json: str | dict[str, Any] | Genotype | HyperCuboidPath,
) -> tuple[Genotype | HyperCuboidPath, str | None]:
    """Resolves what to draw and its default title (the published name, else None).

    Accepts a published genotype name, a published path name, JSON text, a ``.json`` file holding either,
    a mapping, a :class:`Genotype` or a :class:`HyperCuboidPath`.

    Raises:
        DrawingError: the text is none of these (the message lists the published names).
        FileNotFoundError: a ``.json`` path that does not exist.
    """
    if isinstance(name_or_json, (Genotype, HyperCuboidPath)):
        return name_or_json, None
    if isinstance(name_or_json, dict):
        return _from_mapping(name_or_json, "mapping"), None
    text = name_or_json.strip()
    if text in PUBLISHED_GENOTYPES:
        return PUBLISHED_GENOTYPES.get(text).genotype, text
    if text in PUBLISHED_PATHS:
        return PUBLISHED_PATHS.get(text).path, text
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DrawingError(f"JSON text does not parse: {err}") from None
        return _from_mapping(data, "JSON text"), None
    if text.lower().endswith(".json"):
        file = Path(text)
        if not file.is_file():
            raise FileNotFoundError(f"no such .json file: {text!r}")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise DrawingError(f"{text}: JSON does not parse: {err}") from None
        return _from_mapping(data, text), None
    raise DrawingError(
        f"unknown name {text!r}: not a published genotype {PUBLISHED_GENOTYPES.names()}, "
        f"nor a published path {PUBLISHED_PATHS.names()}, JSON text, or a .json file"
    )


def draw(
    name_or_json: str | dict[str, Any] | Genotype | HyperCuboidPath,
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draws a genotype or a HyperCuboid path, given by name, JSON text or .json file, to SVG or PNG.

    Args:
        name_or_json: see :func:`resolve_drawable`.
        out_path: output file; ``.svg`` or ``.png``.
        title: figure title; defaults to the published name when one is given.

    Returns:
        The written path.

    Example:
        >>> draw("SHARPSEPCONV_DARTS", "cells.svg")  # doctest: +SKIP
    """
    _output_format(out_path)
    obj, default_title = resolve_drawable(name_or_json)
    title = title if title is not None else default_title
    if isinstance(obj, Genotype):
        return draw_genotype(obj, out_path, title=title)
    return draw_path(obj, out_path, title=title)
