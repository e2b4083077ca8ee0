"""The architecture step: second-order gradients against finite differences of the unrolled objective."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from search_spaces.supernet import SearchNetwork, build_search_network
from search_spaces.weighting import list_weightings
from trainers.architect import Architect, unrolled_arch_gradients
from trainers.config import ArchOptimConfig, OptimConfig


def _tiny_net(weighting: str) -> SearchNetwork:
    torch.manual_seed(0)
    net = SearchNetwork(
        primitives=("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"), op_set="sharp",
        C=2, layers=1, steps=1, multiplier=1, stem_multiplier=1, in_channels=1, num_classes=3, weighting=weighting,
    ).double()  # fmt: skip
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(0.5 * torch.randn_like(a))
    return net


@pytest.mark.parametrize("weighting", list_weightings())
def test_second_order_gradient_matches_finite_differences(weighting):
    net = _tiny_net(weighting)
    g = torch.Generator().manual_seed(1)
    x_t, x_v = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    y_t, y_v = torch.randint(0, 3, (4,), generator=g), torch.randint(0, 3, (4,), generator=g)
    lr, wd = 0.1, 3e-4
    _, grads = unrolled_arch_gradients(net, x_t, y_t, x_v, y_v, lr=lr, momentum=0.9, weight_decay=wd, r=1e-4)

    arch = net.arch_parameters()
    arch_ids = {id(p) for p in arch}
    named = [(n, p) for n, p in net.named_parameters() if id(p) not in arch_ids]
    arch_names = [n for n, p in net.named_parameters() if id(p) in arch_ids]
    crit = nn.CrossEntropyLoss()

    def objective(arch_values):
        # L_val(w - lr * (dL_train/dw + wd * w), a), differentiable in a only through the virtual step.
        def loss(ws, x, y):
            params = {n: w for (n, _), w in zip(named, ws)}
            params.update(dict(zip(arch_names, arch_values)))
            buffers = {n: b.clone() for n, b in net.named_buffers()}
            return crit(functional_call(net, (params, buffers), (x,)), y)

        ws = [p.detach().requires_grad_(True) for _, p in named]
        gw = torch.autograd.grad(loss(ws, x_t, y_t), ws, allow_unused=True)
        with torch.no_grad():
            unrolled = [w - lr * ((gi if gi is not None else 0) + wd * w) for w, gi in zip(ws, gw)]
        return float(loss(unrolled, x_v, y_v))

    eps = 1e-5
    for index, a in enumerate(arch):
        for flat in range(a.numel()):
            plus = [p.detach().clone() for p in arch]
            minus = [p.detach().clone() for p in arch]
            plus[index].view(-1)[flat] += eps
            minus[index].view(-1)[flat] -= eps
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            assert grads[index].view(-1)[flat].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_unrolled_step_leaves_the_model_untouched():
    net = _tiny_net("scalar")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    unrolled_arch_gradients(net, x, y, x, y, lr=0.1, momentum=0.9, weight_decay=3e-4)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("space", ["darts", "sharp_darts"])  # one space per op set
def test_architect_step_moves_only_the_architecture(order, space):
    net = build_search_network(space, C=4, layers=3, steps=2, multiplier=2, in_channels=1)
    weights = [p.detach().clone() for p in net.weight_parameters()]
    arch = [p.detach().clone() for p in net.arch_parameters()]
    architect = Architect(net, ArchOptimConfig(order=order), OptimConfig())
    sgd = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 3])
    loss = architect.step(x, y, x, y, lr=0.025, weight_optimizer=sgd)
    assert loss > 0
    assert all(not torch.equal(a, b) for a, b in zip(arch, net.arch_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("weighting", list_weightings())
def test_an_architecture_step_moves_the_weights_down_the_validation_gradient(weighting, order):
    """Adam's first step is ``-lr * g / |g|`` per coordinate (plus weight decay): the move must have a positive
    dot product with the negative validation gradient, and repeated steps must lower the validation loss."""
    torch.manual_seed(0)
    net = SearchNetwork(
        primitives=("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"), op_set="sharp",
        C=2, layers=3, steps=1, multiplier=1, stem_multiplier=1, in_channels=1, num_classes=3, weighting=weighting,
    ).double()  # three cells: a normal and both reductions, so every architecture weight is used
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    weights = torch.optim.SGD(net.weight_parameters(), lr=0.0)  # lr 0: the unrolled step is the plain gradient
    architect = Architect(net, ArchOptimConfig(lr=0.05, order=order, weight_decay=0.0), OptimConfig())

    def val_loss() -> torch.Tensor:
        return nn.functional.cross_entropy(net(x), y)

    net.eval()  # batch statistics of the same batch each time: a deterministic objective
    grad = torch.autograd.grad(val_loss(), net.arch_parameters())
    before = [a.detach().clone() for a in net.arch_parameters()]
    start = float(val_loss().detach())
    architect.step(x, y, x, y, lr=0.0, weight_optimizer=weights)
    moved = sum(float(((a.detach() - b) * -gr).sum()) for a, b, gr in zip(net.arch_parameters(), before, grad))
    assert moved > 0
    for _ in range(9):
        architect.step(x, y, x, y, lr=0.0, weight_optimizer=weights)
    assert float(val_loss().detach()) < start
