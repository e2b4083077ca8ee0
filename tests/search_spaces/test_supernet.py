"""The cell search network: every named space under both weightings; alphas are registered parameters."""

from __future__ import annotations

import pytest
import torch

from search_spaces.spaces import list_search_spaces
from search_spaces.supernet import MixedOp, build_search_network
from search_spaces.weighting import list_weightings, max_w

SMALL = dict(C=4, layers=3, steps=2, multiplier=2, in_channels=1, num_classes=10)


@pytest.mark.parametrize("weighting", list_weightings())
@pytest.mark.parametrize("space", list_search_spaces())
def test_search_network_forward_backward(space, weighting):
    net = build_search_network(space, weighting=weighting, **SMALL)
    logits = net(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weight_parameters() if p.requires_grad)
    genotype = net.genotype()
    genotype.validate(net.op_set)
    assert set(genotype.op_names()) <= set(net.primitives) - {"none"}


def test_arch_parameters_are_registered_apart_from_weights():
    net = build_search_network("darts", **SMALL)
    state = net.state_dict()
    assert "arch.normal" in state and "arch.reduce" in state
    arch_ids = {id(p) for p in net.arch_parameters()}
    assert not arch_ids & {id(p) for p in net.weight_parameters()}
    assert len(net.weight_parameters()) + 2 == len(list(net.parameters()))
    moved = net.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in moved.arch_parameters())
    fresh = build_search_network("darts", **SMALL)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.arch["normal"], net.arch["normal"].float())


def test_default_size_matches_the_paper():
    net = build_search_network("darts")  # C=16, 8 cells, 4 nodes
    assert len(net.cells) == 8 and [c.reduction for c in net.cells].count(True) == 2
    assert net.cells[2].reduction and net.cells[5].reduction
    assert net.arch["normal"].shape == (14, 8)
    assert len(net.cells[0].edges) == 14


def test_max_w_coefficients_numerically():
    w = torch.tensor([0.1, 0.6, 0.3])
    assert torch.allclose(max_w(w), torch.tensor([0.5, 1.0, 0.7]))
    # The max is not detached: d/dw_1 of sum(coef) = -3 + 1 (three ops share the max, and its own term).
    w = w.clone().requires_grad_(True)
    max_w(w).sum().backward()
    assert torch.allclose(w.grad, torch.tensor([1.0, -2.0, 1.0]))


def test_max_w_gradient_matches_finite_differences():
    alpha = torch.randn(5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a: max_w(torch.softmax(a, -1)) @ torch.arange(5.0, dtype=torch.float64), (alpha,))


def test_mixed_op_skips_none_without_changing_the_output():
    torch.manual_seed(0)
    prims = ("none", "skip_connect", "sep_conv_3x3")
    op = MixedOp(4, 1, prims, "sharp")
    assert len(op.ops) == 2
    x = torch.randn(2, 4, 6, 6)
    coefs = torch.tensor([0.5, 0.2, 0.3])
    expected = 0.5 * torch.zeros_like(x) + 0.2 * x + 0.3 * op.ops[1](x)
    assert torch.allclose(op(x, coefs), expected)


def test_pools_are_followed_by_non_affine_bn():
    op = MixedOp(4, 1, ("max_pool_3x3", "avg_pool_3x3"), "darts")
    for seq in op.ops:
        assert isinstance(seq[1], torch.nn.BatchNorm2d) and not seq[1].affine


def test_no_hack_genotype_can_choose_none():
    net = build_search_network("darts", **SMALL)
    with torch.no_grad():
        net.arch["normal"].zero_()
        net.arch["normal"][:, 0] = 5.0  # 'none' dominates every edge
    assert all(op == "none" for op, _ in net.genotype(skip_primitive=None).normal)
    assert all(op != "none" for op, _ in net.genotype().normal)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="multiplier"):
        build_search_network("darts", C=4, steps=2, multiplier=3)


def _twin_nets(space: str, **kwargs):
    nets = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        nets.append(build_search_network(space, activation_checkpointing=checkpointing, **SMALL, **kwargs))
    return nets


@pytest.mark.parametrize("space", ["darts", "sharp_darts"])
def test_activation_checkpointing_changes_no_value_gradient_or_bn_statistic(space):
    plain, lean = _twin_nets(space, weighting="max_w")
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    for net in (plain, lean):
        for _ in range(2):  # two steps: the running statistics move once per forward, not again in backward
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), lean.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), lean.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    plain.eval(), lean.eval()
    torch.testing.assert_close(plain(x), lean(x), rtol=0, atol=0)


def test_activation_checkpointing_keeps_the_unrolled_second_order_gradient():
    """The recomputation runs in backward, after functional_call put the model's own weights back."""
    from trainers.architect import unrolled_arch_gradients

    plain, lean = _twin_nets("darts")
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])] * 2
    loss_plain, grads_plain = unrolled_arch_gradients(plain, *batches, lr=0.1, momentum=0.9, weight_decay=3e-4)
    loss_lean, grads_lean = unrolled_arch_gradients(lean, *batches, lr=0.1, momentum=0.9, weight_decay=3e-4)
    torch.testing.assert_close(loss_plain, loss_lean)
    for a, b in zip(grads_plain, grads_lean):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("space", "stride"), [("darts", 1), ("darts", 2), ("sharp_darts", 1), ("sharper_darts", 2)])
def test_mixed_op_equals_the_weighted_sum_of_its_ops(space, stride, memory_format):
    """The shared ReLU and the coefficient folded into the last BN compute sum_i coef_i * op_i(x) exactly.

    channels-last matters: PyTorch's CPU batch-norm backward returns garbage for an expanded (stride-0)
    weight in that layout, so the folded coefficient must be materialised.
    """
    import copy

    from search_spaces.spaces import get_search_space

    space_ = get_search_space(space)
    torch.manual_seed(0)
    edge = MixedOp(8, stride, space_.primitives, space_.op_set).to(memory_format=memory_format)
    reference = copy.deepcopy(edge)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=memory_format).requires_grad_()
    coefs = torch.softmax(torch.randn(len(space_.primitives)), 0).requires_grad_()
    out = edge(x, coefs)
    selected = coefs.index_select(0, reference.active)
    expected = sum(c * op(x) for c, op in zip(selected, reference.ops))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, coefs, *edge.parameters()], grad)
    want = torch.autograd.grad(expected, [x, coefs, *reference.parameters()], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(edge.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
