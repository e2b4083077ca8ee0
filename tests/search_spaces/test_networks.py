"""Final networks (spec section 4): every published genotype builds, trains one step and matches the paper's
parameter counts (spec 10.4) and multiply-adds (spec 10.1, 10.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces.genotypes import Genotype, GenotypeError, get_published, list_published
from search_spaces.networks import (
    AuxiliaryHead,
    AuxiliaryHeadCIFAR,
    Cell,
    NetworkCIFAR,
    NetworkImageNet,
    build_network,
    count_multiply_adds,
    count_parameters,
    drop_path,
    list_network_kinds,
)
from search_spaces.ops import Identity
from search_spaces.registry import UnknownNameError

PUBLISHED = [pytest.param(name, id=name) for name in list_published()]
KINDS = [pytest.param(kind, id=kind) for kind in list_network_kinds()]


def _small(name: str, kind: str, **overrides: object) -> NetworkCIFAR | NetworkImageNet:
    kwargs: dict = dict(kind=kind, op_set=get_published(name).op_set, C=8, layers=5, num_classes=10, C_mid=8,
                        auxiliary=True, in_channels=3, input_size=16 if kind == "cifar" else 32)  # fmt: skip
    kwargs.update(overrides)
    return build_network(get_published(name).genotype, **kwargs)


def _aux_params(net: nn.Module) -> set[int]:
    return {id(p) for m in net.modules() if isinstance(m, AuxiliaryHead) for p in m.parameters()}


# ---------------------------------------------------------------------------------------------------------
# Every published genotype trains one step in both network kinds


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", PUBLISHED)
def test_forward_backward_every_parameter_gets_a_grad(name: str, kind: str) -> None:
    net = _small(name, kind, drop_path_prob=0.2)
    net.train()
    x = torch.randn(2, 3, net.input_size, net.input_size)
    logits, logits_aux = net(x)
    assert logits.shape == (2, 10) and logits_aux is not None and logits_aux.shape == (2, 10)
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2]))
    loss = loss + 0.4 * nn.functional.cross_entropy(logits_aux, torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_and_no_aux_head_return_no_aux_logits(kind: str) -> None:
    net = _small("SHARPSEPCONV_DARTS", kind)
    x = torch.randn(2, 3, net.input_size, net.input_size)
    net.eval()
    logits, logits_aux = net(x)
    assert logits.shape == (2, 10) and logits_aux is None
    plain = _small("SHARPSEPCONV_DARTS", kind, auxiliary=False).train()
    assert plain(x)[1] is None
    assert plain.auxiliary_head is None


@pytest.mark.parametrize("name", ["SHARPSEPCONV_DARTS", "SHARP_DARTS", "SHARPER_MAX_W"])
def test_cifar_network_with_aux_head_trains_on_digits_sized_input(name: str) -> None:
    # 1x8x8 (the embedded digits data): the aux point sees 2x2 maps, so the head pools adaptively.
    net = _small(name, "cifar", in_channels=1, input_size=8).train()
    logits, logits_aux = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and logits_aux is not None and logits_aux.shape == (2, 10)
    (logits.sum() + logits_aux.sum()).backward()
    assert all(p.grad is not None for p in net.auxiliary_head.parameters())


def test_imagenet_network_runs_on_digits_sized_input() -> None:
    net = _small("SHARPSEPCONV_DARTS", "imagenet", in_channels=1, input_size=8).train()
    logits, logits_aux = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and logits_aux.shape == (2, 10)


def test_aux_head_uses_the_reference_pool_on_the_reference_size() -> None:
    head = AuxiliaryHeadCIFAR(16, 10).eval()
    x = torch.randn(2, 16, 8, 8)
    # DARTS's AuxiliaryHeadCIFAR on 8x8: ReLU, AvgPool(5, stride 3) -> 2x2, then features and classifier.
    pooled = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)(torch.relu(x))
    expected = head.classifier(head.features(pooled).flatten(1))
    torch.testing.assert_close(head(x), expected)
    # Other sizes pool adaptively to 2x2 instead of failing.
    for size in (1, 2, 5, 16):
        assert head(torch.randn(2, 16, size, size)).shape == (2, 10)


def test_stem_shapes_follow_the_spec() -> None:
    net = _small("SHARPSEPCONV_DARTS", "imagenet", input_size=64)
    x = torch.randn(1, 3, 64, 64)
    s0 = net.stem0(x)
    assert s0.shape == (1, 8, 16, 16)  # two stride-2 convs, in -> C/2 -> C
    assert net.stem1(s0).shape == (1, 8, 8, 8)
    reductions = [i for i, cell in enumerate(net.cells) if cell.reduction]
    assert reductions == [5 // 3, 2 * 5 // 3]


# ---------------------------------------------------------------------------------------------------------
# Drop path


def test_drop_path_is_identity_at_zero_and_out_of_place() -> None:
    x = torch.randn(8, 3, 4, 4)
    assert drop_path(x, 0.0) is x
    before = x.clone()
    y = drop_path(x, 0.5)
    torch.testing.assert_close(x, before)  # input untouched
    # Each sample is either dropped entirely or scaled by 1 / (1 - p).
    for i in range(8):
        assert torch.equal(y[i], torch.zeros_like(y[i])) or torch.allclose(y[i], x[i] / 0.5)


def test_drop_path_keeps_the_expectation() -> None:
    x = torch.ones(20000, 1, 1, 1)
    assert drop_path(x, 0.3).mean().item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_drop_path_rejects_bad_probabilities(p: float) -> None:
    with pytest.raises(ValueError, match="drop_prob"):
        drop_path(torch.ones(2, 1, 1, 1), p)


def _cell(edges: list[tuple[str, int]]) -> Cell:
    return Cell(edges, (2, 3), 8, 8, 8, False, False, op_set="sharp")


def test_drop_path_spares_identity_branches() -> None:
    cell = _cell([("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0)]).train()
    assert all(isinstance(op, Identity) for op in cell.ops)
    s0, s1 = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(cell(s0, s1, 0.9), cell(s0, s1, 0.0))


def test_drop_path_applies_to_other_branches_in_training_only() -> None:
    cell = _cell([("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 2), ("skip_connect", 0)]).train()
    s0, s1 = torch.randn(16, 8, 6, 6), torch.randn(16, 8, 6, 6)
    reference = cell(s0, s1, 0.0)
    torch.manual_seed(1)
    assert not torch.allclose(cell(s0, s1, 0.5), reference)
    cell.eval()
    torch.testing.assert_close(cell(s0, s1, 0.5), cell(s0, s1, 0.0))


def test_network_reads_drop_path_prob_attribute() -> None:
    net = _small("SHARPSEPCONV_DARTS", "cifar", auxiliary=False).train()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(0)
    a = net(x)[0]
    torch.manual_seed(0)
    b = net(x)[0]
    torch.testing.assert_close(a, b)  # p = 0: deterministic
    net.drop_path_prob = 0.5
    assert not torch.allclose(net(x)[0], a)


# ---------------------------------------------------------------------------------------------------------
# Building and validation


def test_missing_ops_error_names_the_ops_and_the_op_sets_that_have_them() -> None:
    with pytest.raises(GenotypeError) as err:
        build_network("SHARP_DARTS", kind="cifar", op_set="darts", C=8, layers=3)
    assert "choke_conv_3x3" in str(err.value) and "'sharp'" in str(err.value)


def test_published_name_brings_its_op_set_and_kind_defaults() -> None:
    net = build_network("DARTS_V2", kind="cifar", C=8, layers=3)
    assert net.op_set == "darts"
    assert build_network("DARTS_V2", kind="cifar", op_set="sharp", C=8, layers=3).op_set == "sharp"
    assert build_network(get_published("SHARP_DARTS").genotype, kind="imagenet", C=8, layers=3).C_mid == 96
    json_text = get_published("SHARP_DARTS").genotype.to_json()
    assert build_network(json_text, C=8, layers=3).genotype == get_published("SHARP_DARTS").genotype


def test_unknown_kind_and_bad_sizes_are_refused() -> None:
    with pytest.raises(UnknownNameError, match="imagenet"):
        build_network("DARTS_V2", kind="mnist")
    with pytest.raises(ValueError, match="layers"):
        build_network("DARTS_V2", C=8, layers=0)
    with pytest.raises(ValueError, match="C must be even"):
        build_network("DARTS_V2", kind="imagenet", C=7, layers=3)


def test_cell_with_three_nodes_and_custom_concat() -> None:
    edges = [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2), ("skip_connect", 0),
             ("dil_conv_3x3", 3), ("avg_pool_3x3", 1)]  # fmt: skip
    genotype = Genotype(normal=edges, reduce=edges, normal_concat=(2, 4), reduce_concat=(3, 4))
    net = NetworkCIFAR(genotype, C=4, layers=3, num_classes=5, op_set="sharp", input_size=8)
    logits, _ = net(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 5)
    assert [cell.multiplier for cell in net.cells] == [2, 2, 2]


# ---------------------------------------------------------------------------------------------------------
# Size and cost against the paper (spec 10.4, 10.1, 10.2)


def _rounds_to(count: int, paper: str) -> bool:
    decimals = len(paper.split(".")[1]) if "." in paper else 0
    return round(count / 1e6, decimals) == float(paper)


# Strict xfails: the paper's table and a faithful build disagree (spec 10.4 vs sections 2 and 4). They are
# kept visible instead of loosening the tolerance; a strict xfail fails if the count ever starts matching.
_DISAGREES = "the paper's table disagrees with the network built per spec sections 2 and 4"

PARAM_COUNTS = [
    pytest.param("cifar", "SHARPSEPCONV_DARTS", None, None, "3.6", id="cifar-SharpSepConvDARTS"),
    pytest.param("cifar", "DARTS_V2", "sharp", None, "3.5", id="cifar-DARTS+SSC"),
    # 1 974 934 parameters: 66 short of rounding to the table's 1.98 (the multiply-adds match exactly).
    pytest.param("cifar", "SHARP_DARTS", None, None, "1.98", id="cifar-sharpDARTS",
                 marks=pytest.mark.xfail(strict=True, reason=_DISAGREES)),  # fmt: skip
    # 4 973 728 parameters (4.97M) against the table's 4.9M; the multiply-adds (0.573B) match exactly.
    pytest.param("imagenet", "SHARPSEPCONV_DARTS", None, None, "4.9", id="imagenet-SharpSepConvDARTS",
                 marks=pytest.mark.xfail(strict=True, reason=_DISAGREES)),  # fmt: skip
    pytest.param("imagenet", "SHARP_DARTS", None, 96, "3.71", id="imagenet-sharpDARTS-cmid96"),
    pytest.param("imagenet", "SHARP_DARTS", None, 32, "3.17", id="imagenet-sharpDARTS-cmid32"),
    pytest.param("imagenet", "SHARPER_MAX_W", None, None, "8.3", id="imagenet-SharperDARTS-MaxW"),
]


@pytest.mark.parametrize(("kind", "name", "op_set", "C_mid", "paper"), PARAM_COUNTS)
def test_parameter_counts_match_the_paper(
    kind: str, name: str, op_set: str | None, C_mid: int | None, paper: str
) -> None:
    net = build_network(name, kind=kind, op_set=op_set, C_mid=C_mid, auxiliary=True)
    count = count_parameters(net)
    assert _rounds_to(count, paper), f"{name} ({kind}): {count / 1e6:.6f}M, paper {paper}M"


def test_parameter_count_excludes_the_aux_head_only() -> None:
    with_aux = _small("SHARP_DARTS", "cifar", auxiliary=True)
    without = _small("SHARP_DARTS", "cifar", auxiliary=False)
    assert count_parameters(with_aux) == count_parameters(without)
    aux = sum(p.numel() for p in with_aux.auxiliary_head.parameters())
    assert sum(p.numel() for p in with_aux.parameters()) == count_parameters(with_aux) + aux > aux > 0


MADDS = [
    pytest.param("cifar", "SHARPSEPCONV_DARTS", None, None, "0.579", id="cifar-SharpSepConvDARTS"),
    pytest.param("cifar", "DARTS_V2", "sharp", None, "0.576", id="cifar-DARTS+SSC"),
    pytest.param("cifar", "SHARP_DARTS", None, None, "0.357", id="cifar-sharpDARTS"),
    pytest.param("imagenet", "SHARPSEPCONV_DARTS", None, None, "0.573", id="imagenet-SharpSepConvDARTS"),
    pytest.param("imagenet", "SHARP_DARTS", None, 96, "0.481", id="imagenet-sharpDARTS-cmid96"),
    pytest.param("imagenet", "SHARP_DARTS", None, 32, "0.370", id="imagenet-sharpDARTS-cmid32"),
    # 0.925B against the table's 0.950B, although the parameter count matches.
    pytest.param("imagenet", "SHARPER_MAX_W", None, None, "0.950", id="imagenet-SharperDARTS-MaxW",
                 marks=pytest.mark.xfail(strict=True, reason=_DISAGREES)),  # fmt: skip
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name", "op_set", "C_mid", "paper"), MADDS)
def test_reference_convention_multiply_adds_match_the_paper(
    kind: str, name: str, op_set: str | None, C_mid: int | None, paper: str
) -> None:
    net = build_network(name, kind=kind, op_set=op_set, C_mid=C_mid)
    madds = count_multiply_adds(net, net.input_shape, convention="reference")
    assert round(madds / 1e9, 3) == float(paper), f"{name} ({kind}): {madds / 1e9:.4f}B, paper {paper}B"
    # The plain convention counts only convolutions and linear layers: a few percent less.
    assert 0.9 * madds < count_multiply_adds(net, net.input_shape) < madds


def test_multiply_adds_of_a_hand_computed_model() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),  # 4*5*5 outputs x 2*3*3
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),  # 4*3*3 outputs x 1*3*3
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),  # 3 x 4
    )
    conv_linear = 4 * 5 * 5 * 2 * 9 + 4 * 3 * 3 * 9 + 3 * 4
    assert count_multiply_adds(model, (2, 5, 5)) == conv_linear
    elementwise = 2 * 100 + 100 + 4 * 3 * 3  # affine BN (2/element), ReLU, pool input
    assert count_multiply_adds(model, (1, 2, 5, 5), convention="reference") == conv_linear + elementwise
    with pytest.raises(ValueError, match="input_shape"):
        count_multiply_adds(model, (5, 5))
    with pytest.raises(ValueError, match="convention"):
        count_multiply_adds(model, (2, 5, 5), convention="flops")  # type: ignore[arg-type]


def test_multiply_adds_skip_the_aux_head_and_restore_training_mode() -> None:
    with_aux = _small("SHARP_DARTS", "cifar", auxiliary=True).train()
    without = _small("SHARP_DARTS", "cifar", auxiliary=False)
    shape = with_aux.input_shape
    assert count_multiply_adds(with_aux, shape) == count_multiply_adds(without, shape)
    assert with_aux.training and all(m.training for m in with_aux.modules())
