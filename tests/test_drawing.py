"""Drawings of genotypes and HyperCuboid paths (nas_service.drawing) and the ``draw`` subcommand."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from nas_service import drawing
from nas_service.cli import main
from nas_service.drawing import DrawingError, draw, draw_genotype, draw_path, op_family
from search_spaces.genotypes import PUBLISHED_GENOTYPES, Genotype
from search_spaces.ops import list_op_sets, list_ops
from search_spaces.paths import HYPERCUBOID_OPS, PUBLISHED_PATHS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def svg_texts(path: Path) -> list[str]:
    """The text of every <text> element of an SVG (svg.fonttype 'none' keeps text as text)."""
    root = ET.parse(path).getroot()
    return ["".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text")]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"not a PNG: {data[:8]!r}"
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the magic and the chunk header
    return width, height


GENOTYPE_PARAMS = [pytest.param(name, id=name) for name in PUBLISHED_GENOTYPES.names()]
PATH_PARAMS = [pytest.param(name, id=name) for name in PUBLISHED_PATHS.names()]


# -- genotypes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENOTYPE_PARAMS)
def test_every_published_genotype_draws_to_svg_with_one_label_per_edge(name, tmp_path):
    genotype = PUBLISHED_GENOTYPES.get(name).genotype
    out = draw_genotype(genotype, tmp_path / "cells.svg", title=name)
    assert out == tmp_path / "cells.svg" and out.is_file()
    texts = svg_texts(out)
    # Each edge of both cells is labelled exactly once with its op's literal name.
    ops = Counter(op for op, _ in genotype.normal + genotype.reduce)
    assert Counter(t for t in texts if t in ops) == ops
    # Both panels mark their inputs, output and numbered nodes; the figure carries its title.
    counts = Counter(texts)
    for label in ("c_{k-2}", "c_{k-1}", "c_{k}", *map(str, range(genotype.steps))):
        assert counts[label] == 2, (label, counts[label])
    assert {"normal cell", "reduction cell", name} <= set(texts)


@pytest.mark.parametrize("name", GENOTYPE_PARAMS)
def test_cell_layout_keeps_labels_apart_and_curves_off_foreign_nodes(name):
    for cell, layout in drawing._genotype_layouts(PUBLISHED_GENOTYPES.get(name).genotype):
        nodes = layout.nodes
        boxes = [np.array([*e.label_xy, *drawing._label_size(e.op)]) for e in layout.edges]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert drawing._box_overlap(a, b) == 0, f"{cell}: labels {a} and {b} overlap"
            inside = layout.ylim[0] < a[1] - a[3] / 2 and a[1] + a[3] / 2 < layout.ylim[1]
            assert inside, f"{cell}: label {a} leaves the panel"
            for node in nodes:
                node_box = np.array([node.x, node.y, 2 * node.radius, 2 * node.radius])
                assert drawing._box_overlap(a, node_box) == 0, f"{cell}: a label covers node {node.label}"
        out = len(nodes) - 1
        curves = [(e.src, e.dst, e.rad) for e in layout.edges] + [(s, out, r) for s, r in layout.output_edges]
        for src, dst, rad in curves:
            pts = drawing._arc3_points((nodes[src].x, nodes[src].y), (nodes[dst].x, nodes[dst].y), rad)
            for k, node in enumerate(nodes):
                if k not in (src, dst):
                    gap = np.hypot(pts[:, 0] - node.x, pts[:, 1] - node.y).min() - node.radius
                    assert gap > 0.1, f"{cell}: edge {src}->{dst} grazes node {node.label} (gap {gap:.2f} in)"


def test_edges_from_the_same_input_to_the_same_node_get_distinct_labels(tmp_path):
    # Not produced by parse_genotype, but valid JSON: both edges of node 0 come from c_{k-1}.
    edges = [("sep_conv_3x3", 1), ("max_pool_3x3", 1), ("skip_connect", 0), ("none", 2)]
    genotype = Genotype(normal=tuple(edges), reduce=tuple(edges))
    (_, layout), _ = drawing._genotype_layouts(genotype)
    a, b = layout.edges[0], layout.edges[1]
    assert a.rad != b.rad and a.label_xy != b.label_xy
    texts = svg_texts(draw_genotype(genotype, tmp_path / "dup.svg"))
    assert texts.count("none") == 2 and texts.count("max_pool_3x3") == 2


@pytest.mark.parametrize(
    "op_set", [pytest.param(name, id=name) for name in list_op_sets()]
)  # fmt: skip
def test_every_registered_op_has_a_colour_family(op_set):
    for op in list_ops(op_set):
        assert op_family(op) != "other", op
    families = {op_family("none"), op_family("skip_connect"), op_family("avg_pool_3x3")}
    assert families == {"none", "skip", "pool"}


# -- paths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PATH_PARAMS)
def test_every_published_path_draws_to_svg_as_a_chain(name, tmp_path):
    path = PUBLISHED_PATHS.get(name).path
    texts = svg_texts(draw_path(path, tmp_path / "path.svg", title=name))
    counts = Counter(texts)
    stage_ops = Counter(s.op for s in path.stages)
    assert counts["ResizablePool"] == stage_ops["ResizablePool"]
    assert counts["SharpSepConv"] == stage_ops["SharpSepConv"] + 1  # the stages, then the head
    for stage in path.stages:
        assert f"stride {stage.stride}" in counts and f"{stage.c_in}→{stage.c_out}" in counts
    assert f"width {path.stem_channels}" in counts
    assert {"stem", "GAP", "Linear", name, f"{path.final_channels}→{path.head_channels}"} <= set(texts)
    assert set(HYPERCUBOID_OPS) >= stage_ops.keys()


# -- files, formats, resolution ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("SHARPSEPCONV_DARTS", id="genotype"),
        pytest.param("MULTI_CHANNEL_HANDMADE_PATH", id="path"),
    ],
)
def test_png_render_is_a_valid_png(name, tmp_path):
    out = draw(name, tmp_path / "figure.png")
    width, height = png_size(out)
    assert width > 600 and height > 150


def test_svg_is_deterministic_and_global_matplotlib_state_is_untouched(tmp_path):
    backend, fonttype = matplotlib.get_backend(), matplotlib.rcParams["svg.fonttype"]
    a = draw("DARTS_V2", tmp_path / "a.svg").read_bytes()
    b = draw("DARTS_V2", tmp_path / "b.svg").read_bytes()
    assert a == b
    assert (matplotlib.get_backend(), matplotlib.rcParams["svg.fonttype"]) == (backend, fonttype)


def test_resolves_json_text_files_and_mappings(tmp_path):
    genotype = PUBLISHED_GENOTYPES.get("SHARP_DARTS").genotype
    path = PUBLISHED_PATHS.get("MULTI_CHANNEL_SCALAR_PATH").path
    assert drawing.resolve_drawable(genotype.to_json()) == (genotype, None)
    assert drawing.resolve_drawable(path.to_dict()) == (path, None)
    file = tmp_path / "p.json"
    file.write_text(path.to_json())
    assert drawing.resolve_drawable(str(file)) == (path, None)
    assert drawing.resolve_drawable("SHARP_DARTS") == (genotype, "SHARP_DARTS")
    with pytest.raises(DrawingError, match="expected a genotype"):
        drawing.resolve_drawable({"layers": 3})
    with pytest.raises(DrawingError, match="does not parse"):
        drawing.resolve_drawable("{not json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        drawing.resolve_drawable(str(tmp_path / "missing.json"))


def test_unknown_extension_is_refused_before_writing(tmp_path):
    with pytest.raises(DrawingError, match=r"\.png.*\.svg.*cells\.pdf"):
        draw("DARTS_V1", tmp_path / "cells.pdf")
    assert list(tmp_path.iterdir()) == []


def test_failed_render_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "cells.svg"
    target.write_text("previous drawing")

    def broken_savefig(self, fname, **kwargs):
        Path(fname).write_text("<svg half")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        draw("DARTS_V1", target)
    assert [p.name for p in tmp_path.iterdir()] == ["cells.svg"]  # no temp file left behind
    assert target.read_text() == "previous drawing"


# -- CLI -----------------------------------------------------------------------------------------------------


def test_cli_draws_a_published_genotype(tmp_path, capsys):
    out = tmp_path / "sub" / "cells.svg"
    assert main(["draw", "SHARPSEPCONV_DARTS", "-o", str(out), "--title", "my title"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    texts = svg_texts(out)
    assert "my title" in texts and "SHARPSEPCONV_DARTS" not in texts


def test_cli_draws_a_genotype_json_string(tmp_path):
    genotype = Genotype(
        normal=(("dil_conv_5x5", 0), ("skip_connect", 1), ("sep_conv_7x7", 2), ("avg_pool_3x3", 0)),
        reduce=(("max_pool_3x3", 1), ("flood_conv_3x3", 0), ("none", 2), ("choke_conv_3x3", 1)),
    )
    out = tmp_path / "custom.svg"
    assert main(["draw", genotype.to_json(), "--output", str(out)]) == 0
    assert set(svg_texts(out)) >= genotype.op_names()


def test_cli_draws_a_path_json_file_to_png(tmp_path):
    file = tmp_path / "path.json"
    file.write_text(PUBLISHED_PATHS.get("MULTI_CHANNEL_MAX_W_PATH").path.to_json())
    out = tmp_path / "path.png"
    assert main(["draw", str(file), "-o", str(out)]) == 0
    png_size(out)


def test_cli_unknown_name_lists_the_published_names(tmp_path, capsys):
    out = tmp_path / "x.svg"
    assert main(["draw", "NOT_A_GENOTYPE", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "NOT_A_GENOTYPE" in err
    for name in PUBLISHED_GENOTYPES.names() + PUBLISHED_PATHS.names():
        assert name in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        pytest.param(["DARTS_V1", "-o", "cells.jpg"], "file extension", id="bad-extension"),
        pytest.param(['{"normal": [["sep_conv_3x3", 5]], "reduce": []}', "-o", "x.svg"], "normal",
                     id="bad-genotype"),
        pytest.param(['{"stem_channels": 8, "stages": [[1, 8, 8, "Conv"]]}', "-o", "x.svg"], "stages",
                     id="bad-path"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_code_2(argv_tail, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["draw", *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-service draw: error:") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_output_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["draw", "DARTS_V1", "-o", str(blocker / "cells.svg")]) == 2
    assert "cannot write" in capsys.readouterr().err

