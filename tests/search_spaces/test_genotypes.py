"""Genotype value type: parse (with and without the 'none' hack), validation, JSON, published registry."""

from __future__ import annotations

import pytest
import torch

from search_spaces.genotypes import (
    Genotype,
    GenotypeError,
    get_published,
    list_published,
    parse_cell,
    parse_genotype,
    resolve_genotype,
)

PRIMS = ("none", "skip_connect", "sep_conv_3x3")


def _weights(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_parse_cell_on_hand_built_weights():
    # steps=2 -> 2 + 3 = 5 edges. Node 0: edges (0, 1); node 1: edges (0, 1, 2).
    w = _weights([
        [0.9, 0.05, 0.05],  # e0: none dominates; best allowed is 0.05
        [0.1, 0.2, 0.7],    # e1: sep 0.7
        [0.0, 0.6, 0.4],    # node1 from 0: skip 0.6
        [0.0, 0.1, 0.3],    # node1 from 1: sep 0.3
        [0.0, 0.1, 0.8],    # node1 from 2: sep 0.8
    ])  # fmt: skip
    edges = parse_cell(w, PRIMS, steps=2)
    # Node 0 keeps both its edges, ordered by score: input 1 (0.7) before input 0 (0.05, skip_connect).
    assert edges == (("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0))


def test_no_hack_parse_lets_none_win():
    w = _weights([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.7, 0.2, 0.1], [0.0, 0.1, 0.3], [0.0, 0.1, 0.8]])
    edges = parse_cell(w, PRIMS, steps=2, skip_primitive=None)
    assert edges[:2] == (("none", 0), ("sep_conv_3x3", 1))
    assert edges[2:] == (("sep_conv_3x3", 2), ("none", 0))


def test_parse_genotype_concat_and_shape_check():
    w = torch.softmax(torch.randn(14, 8), dim=-1)
    prims = get_published  # noqa: F841 (keep import used)
    g = parse_genotype(w, w, [f"op{i}" for i in range(7)] + ["none"], steps=4, multiplier=4)
    assert g.normal_concat == (2, 3, 4, 5) and len(g.normal) == 8
    with pytest.raises(GenotypeError, match="shape"):
        parse_cell(torch.zeros(13, 8), ["a"] * 8, steps=4)


def test_ties_keep_lower_input_index():
    w = _weights([[0.0, 0.5, 0.5]] * 2)
    assert parse_cell(w, PRIMS, steps=1) == (("skip_connect", 0), ("skip_connect", 1))


@pytest.mark.parametrize("name", list_published())
def test_published_round_trip_json(name):
    g = get_published(name).genotype
    assert Genotype.from_json(g.to_json()) == g
    assert hash(g) == hash(Genotype.from_dict(g.to_dict()))
    assert resolve_genotype(name) == g
    text = str(g)
    assert "normal cell" in text and "reduction cell" in text


def test_published_no_hack_counts_match_the_paper():
    # Spec 2.5: the 'none' count in the normal cell is 6/8 (scalar) vs 2/8 (Max-W) without the hack.
    count = lambda n: sum(op == "none" for op, _ in get_published(n).genotype.normal)  # noqa: E731
    assert count("SHARPER_SCALAR_NO_HACK") == 6 and count("SHARPER_MAX_W_NO_HACK") == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"normal": [["sep_conv_3x3", 0]] * 3, "reduce": [["sep_conv_3x3", 0]] * 3}, "two edges per node", id="odd-edges"),
        pytest.param({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 2]], "reduce": [["sep_conv_3x3", 0]] * 2}, "inputs 0..1", id="bad-input"),
        pytest.param({"normal": [["sep_conv_3x3", 0]] * 2}, "missing fields", id="missing-reduce"),
        pytest.param({"normal": [["sep_conv_3x3", 0]] * 2, "reduce": [["sep_conv_3x3", 0]] * 4}, "same node count", id="node-count"),
        pytest.param({"normal": [["x", "0"]] * 2, "reduce": [["x", 0]] * 2}, "must be \\(str, int\\)", id="types"),
    ],
)
def test_invalid_genotypes_name_the_rule(data, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_dict(data)


def test_unknown_op_is_named():
    g = Genotype.from_dict({"normal": [["sep_conv_9x9", 0], ["skip_connect", 1]], "reduce": [["skip_connect", 0]] * 2})
    with pytest.raises(GenotypeError, match="sep_conv_9x9"):
        g.validate()
    with pytest.raises(GenotypeError, match=r"choke_conv_3x3.*\['sharp'\]"):
        get_published("SHARP_DARTS").genotype.validate("darts")


def test_resolve_rejects_unknown_names():
    with pytest.raises(GenotypeError, match="DARTS_V2"):
        resolve_genotype("DARTS_V3")
