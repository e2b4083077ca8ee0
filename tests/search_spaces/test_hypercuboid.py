"""HyperCuboid supernet, path extraction and linear path networks (spec sections 6 and 7)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from search_spaces.hypercuboid import HyperCuboidSupernet, channel_set, entropy_per_group, joint_softmax
from search_spaces.networks import LinearPathNetwork, build_path_network
from search_spaces.paths import (
    HyperCuboidError,
    extract_path,
    get_path_method,
    greedy_path,
    list_path_methods,
    path_weight,
    random_path,
)
from search_spaces.ops import ResizablePool, SharpSepConv
from search_spaces.paths import HYPERCUBOID_OPS, PUBLISHED_PATHS, HyperCuboidPath, PathError, get_published_path
from search_spaces.registry import UnknownNameError
from search_spaces.weighting import list_weightings

N_OPS = len(HYPERCUBOID_OPS)
WEIGHTINGS = [pytest.param(w, id=w) for w in list_weightings()]
PRUNE = [pytest.param(False, id="always_apply"), pytest.param(True, id="prune")]


def tiny(**kwargs) -> HyperCuboidSupernet:
    defaults = dict(channels=(4, 8), layers=2, num_classes=10, in_channels=1, head_channels=8)
    defaults.update(kwargs)
    return HyperCuboidSupernet(**defaults)


def all_ops(net: HyperCuboidSupernet) -> list[nn.Module]:
    return [op for stage in net.stages for op in stage]


# ---------------------------------------------------------------------------------------------------------
# Channel set and construction


def test_channel_set_matches_spec():
    assert channel_set(36, 4) == (32, 64, 128, 256)  # spec 7.1
    assert channel_set(32, 2) == (32, 64)
    assert channel_set(1, 3) == (1, 2, 4)
    with pytest.raises(HyperCuboidError, match="init_channels"):
        channel_set(0, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(channels=(4, 4)), id="duplicate-width"),
        pytest.param(dict(channels=()), id="no-width"),
        pytest.param(dict(layers=0), id="no-layer"),
        pytest.param(dict(head_channels=0), id="no-head"),
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(HyperCuboidError):
        tiny(**kwargs)


def test_unknown_weighting_lists_known_names():
    with pytest.raises(UnknownNameError, match="max_w"):
        tiny(weighting="maxw")


def test_structure_one_op_per_grid_cell():
    net = tiny(channels=(4, 8, 16), layers=2)
    assert net.arch_shape == (2, 2, 3, 3, N_OPS)
    assert len(net.stages) == 4 and all(len(stage) == 3 * 3 * N_OPS for stage in net.stages)
    assert len({id(op) for op in all_ops(net)}) == 4 * 3 * 3 * N_OPS  # own instance each
    stage = net.stages[1]  # layer 0, stride 2
    for f, op in enumerate(stage):
        i, rest = divmod(f, 3 * N_OPS)
        j, k = divmod(rest, N_OPS)
        expected = (SharpSepConv, ResizablePool)[k]
        assert isinstance(op, expected) and HYPERCUBOID_OPS[k] == expected.__name__
        if k == 0:
            assert op[1].stride == (2, 2) and op[1].in_channels == net.channels[i]
            assert op[-1].num_features == net.channels[j] and op[-1].affine  # C_mid = C_out, affine
            assert op[2].out_channels == net.channels[j]
        else:
            assert op.pool.stride == 2 and isinstance(op.pool, nn.MaxPool2d)
            assert (op.resize is None) == (i == j)


# ---------------------------------------------------------------------------------------------------------
# Architecture parameters and weights


def test_arch_parameter_registered_and_separate():
    net = tiny()
    (arch,) = net.arch_parameters()
    assert isinstance(arch, nn.Parameter) and arch.shape == (2, 2, 2, 2, N_OPS)
    assert "arch" in net.state_dict() and torch.equal(net.state_dict()["arch"], arch.detach())
    assert 0 < arch.abs().max() < 0.01  # 1e-3 * randn
    weight_ids = {id(p) for p in net.weight_parameters()}
    assert id(arch) not in weight_ids
    assert len(weight_ids) + 1 == len(list(net.parameters()))
    moved = net.to(torch.float64)
    assert moved.arch_parameters()[0].dtype == torch.float64


def test_softmax_sums_to_one_per_group():
    net = tiny(channels=(4, 8, 16), layers=3)
    with torch.no_grad():
        net.arch.normal_(0, 2)
    w = net.arch_weights()
    assert w.shape == net.arch_shape
    torch.testing.assert_close(w.sum(dim=(-3, -2, -1)), torch.ones(2, 3))
    # the joint softmax is the reference's per-stride view: softmax(alpha[s].view(L, -1))
    for s in range(2):
        ref = torch.softmax(net.arch[s].reshape(3, -1), dim=-1).view(3, 3, 3, N_OPS)
        torch.testing.assert_close(w[s], ref)


def test_entropy_per_group():
    net = tiny(channels=(4, 8, 16), layers=2)
    h = entropy_per_group(net.arch_weights().detach())
    assert h.shape == (2, 2)
    torch.testing.assert_close(h, torch.full((2, 2), torch.log(torch.tensor(18.0)).item()), atol=1e-5, rtol=0)
    peaked = torch.zeros(2, 2, 3, 3, N_OPS)
    peaked[:, :, 0, 1, 1] = 1.0
    torch.testing.assert_close(entropy_per_group(peaked), torch.zeros(2, 2))
    with pytest.raises(HyperCuboidError):
        entropy_per_group(torch.ones(3, 3))


def test_max_w_coefficients_match_formula():
    net = tiny(channels=(4, 8, 16), layers=2, weighting="max_w")
    with torch.no_grad():
        net.arch.normal_(0, 1)
    w = net.arch_weights().detach()
    coef = net.arch_coefficients().detach()
    for s, layer in itertools.product(range(2), range(2)):
        group = w[s, layer]
        torch.testing.assert_close(coef[s, layer], 1 - group.max() + group)
        assert coef[s, layer].max().item() == pytest.approx(1.0)  # the strongest op gets exactly 1
        assert (coef[s, layer] > 0).all()
    scalar = tiny(channels=(4, 8, 16), layers=2, weighting="scalar")
    scalar.load_state_dict(net.state_dict())
    torch.testing.assert_close(scalar.arch_coefficients(), scalar.arch_weights())


def test_max_w_gradient_flows_through_the_max():
    # A tiny group: gradcheck of alpha -> max_w coefficients, with the max not detached.
    net = tiny(channels=(2, 3), layers=1, weighting="max_w").double()
    alpha = torch.randn(2, 1, 2, 2, N_OPS, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: net.arch_coefficients(joint_softmax(a)), (alpha,))
    # The gradient differs from the detached-max variant exactly in the arg-max entry's column.
    g = torch.randn(alpha.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(net.arch_coefficients(joint_softmax(alpha)), alpha, g)
    w = joint_softmax(alpha)
    detached = 1 - w.detach().amax(dim=(-3, -2, -1), keepdim=True) + w
    (grad_detached,) = torch.autograd.grad(detached, alpha, g)
    assert not torch.allclose(grad, grad_detached)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_forward_gradcheck_wrt_arch(weighting):
    # The whole forward, as a function of the arch parameter, against finite differences.
    net = HyperCuboidSupernet(channels=(2, 3), layers=1, num_classes=3, in_channels=1, head_channels=2,
                              weighting=weighting).double().eval()  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    alpha = torch.randn(net.arch_shape, dtype=torch.float64, requires_grad=True)

    def f(a):
        return torch.func.functional_call(net, {"arch": a}, (x,))

    assert torch.autograd.gradcheck(f, (alpha,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Forward and backward


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("prune", PRUNE)
@pytest.mark.parametrize(
    ("channels", "layers", "in_channels", "size"),
    [
        pytest.param((4, 8), 2, 1, 8, id="digits-L2"),
        pytest.param((4, 8), 3, 1, 8, id="digits-L3-to-1x1"),
        pytest.param((4, 8, 16), 2, 3, 7, id="rgb-odd"),
    ],
)
def test_forward_backward(weighting, prune, channels, layers, in_channels, size):
    net = tiny(channels=channels, layers=layers, in_channels=in_channels, weighting=weighting, prune=prune)
    logits = net(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert net.arch.grad is not None and net.arch.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing  # near-uniform weights: nothing is pruned, every op ran


def test_prune_with_uniform_weights_equals_always_apply():
    always, pruned = tiny(channels=(4, 8, 16)), tiny(channels=(4, 8, 16), prune=True)
    pruned.load_state_dict(always.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(pruned(x), always(x))


def _count_calls(net: HyperCuboidSupernet) -> list[int]:
    counts = [0]

    def hook(module, inputs, output):
        counts[0] += 1

    for op in all_ops(net):
        op.register_forward_hook(hook)
    return counts


def _peak(net: HyperCuboidSupernet, chosen: list[tuple[int, int, int]]) -> None:
    """Puts (almost) all weight of stage t on entry chosen[t] = (c_in idx, c_out idx, op idx)."""
    with torch.no_grad():
        net.arch.fill_(-20.0)
        for t, (i, j, k) in enumerate(chosen):
            net.arch[t % 2, t // 2, i, j, k] = 20.0


@pytest.mark.parametrize("prune", PRUNE)
def test_pruning_skips_low_weight_ops(prune):
    net = tiny(channels=(4, 8, 16), layers=2, prune=prune)
    chain = [(0, 1, 0), (1, 2, 1), (2, 2, 0), (2, 0, 1)]  # channel-consistent
    _peak(net, chain)
    w = net.arch_weights()
    assert (w.flatten(2).amax(-1) > 0.999).all() and w.min() < net.prune_threshold
    calls = _count_calls(net)
    logits = net(torch.randn(2, 1, 8, 8))
    assert torch.isfinite(logits).all()
    assert calls[0] == (4 if prune else 4 * 9 * N_OPS)
    logits.sum().backward()
    for t, (i, j, k) in enumerate(chain):
        f = (i * 3 + j) * N_OPS + k
        for g, op in enumerate(net.stages[t]):
            got_grad = any(p.grad is not None for p in op.parameters())
            if any(True for _ in op.parameters()):
                assert got_grad == (not prune or f == g)
    # Only the widths the chain touches reach the head when pruning.
    used_heads = [any(p.grad is not None for p in h.parameters()) for h in net.heads]
    assert used_heads == ([True, False, False] if prune else [True, True, True])


def test_pruning_dead_end_falls_back_to_best_reachable_op():
    net = tiny(channels=(4, 8, 16), layers=2, prune=True)
    # stage 1 peaks on c_in=16 (index 2) but stage 0 only produces width 8 (index 1): a dead end.
    _peak(net, [(0, 1, 0), (2, 2, 1), (2, 0, 0), (0, 0, 0)])
    with torch.no_grad():
        net.arch[1, 0, 1, 0, 1] = 0.0  # the best entry of stage 1 from width 8: 8 -> 4 pool
    calls = _count_calls(net)
    logits = net(torch.randn(2, 1, 8, 8))
    assert torch.isfinite(logits).all() and calls[0] == 4
    logits.sum().backward()
    fallback = net.stages[1][(1 * 3 + 0) * N_OPS + 1]
    assert all(p.grad is not None for p in fallback.parameters())


# ---------------------------------------------------------------------------------------------------------
# Path extraction


def brute_force_paths(grid: torch.Tensor, n_c: int) -> list[tuple[float, tuple[int, ...]]]:
    """(sum, key) for every channel-consistent path; key = (stem, j0, k0, j1, k1, ...)."""
    n_stages = 2 * grid.shape[1]
    w = grid.tolist()
    out = []
    for stem in range(n_c):
        for seq in itertools.product(itertools.product(range(n_c), range(N_OPS)), repeat=n_stages):
            total, c_in = 0.0, stem
            for t, (j, k) in enumerate(seq):
                total += w[t % 2][t // 2][c_in][j][k]
                c_in = j
            out.append((total, (stem,) + tuple(x for jk in seq for x in jk)))
    return out


def path_key(path: HyperCuboidPath, channels: tuple[int, ...]) -> tuple[int, ...]:
    key = [channels.index(path.stem_channels)]
    for s in path.stages:
        key += [channels.index(s.c_out), HYPERCUBOID_OPS.index(s.op)]
    return tuple(key)


GRIDS = [pytest.param((16, 32, 64), 2, id="nC3-L2"), pytest.param((16, 32), 3, id="nC2-L3")]


@pytest.mark.parametrize(("channels", "layers"), GRIDS)
def test_extract_path_equals_brute_force(channels, layers):
    gen = torch.Generator().manual_seed(1)
    n_c = len(channels)
    for _ in range(10):
        grid = joint_softmax(torch.randn(2, layers, n_c, n_c, N_OPS, generator=gen) * 3)
        paths = brute_force_paths(grid, n_c)
        best_total, best_key = max(paths, key=lambda p: p[0])
        path = extract_path(grid, channels)
        assert path_key(path, channels) == best_key  # unique maximum with continuous weights
        assert path_weight(grid, path, channels) == pytest.approx(best_total, abs=1e-12)
        assert len(path.stages) == 2 * layers and path.head_channels == 768


@pytest.mark.parametrize(("channels", "layers"), GRIDS)
def test_extract_path_tie_break_is_lexicographic(channels, layers):
    # Weights in multiples of 1/4 make many exact ties (sums are exact in binary floating point).
    gen = torch.Generator().manual_seed(2)
    n_c = len(channels)
    for _ in range(10):
        grid = torch.randint(0, 3, (2, layers, n_c, n_c, N_OPS), generator=gen).double() / 4
        paths = brute_force_paths(grid, n_c)
        best_total = max(t for t, _ in paths)
        ties = sorted(k for t, k in paths if t == best_total)
        path = extract_path(grid, channels)
        assert path_key(path, channels) == ties[0]


def test_extract_path_stem_choice():
    channels = (16, 32, 64)
    gen = torch.Generator().manual_seed(3)
    grid = joint_softmax(torch.randn(2, 2, 3, 3, N_OPS, generator=gen))
    paths = brute_force_paths(grid, 3)
    for stem in range(3):
        best = max((p for p in paths if p[1][0] == stem), key=lambda p: p[0])
        path = extract_path(grid, channels, stem_choice=channels[stem])
        assert path.stem_channels == channels[stem] and path_key(path, channels) == best[1]
    with pytest.raises(HyperCuboidError, match="stem_choice"):
        extract_path(grid, channels, stem_choice=48)


def test_extract_path_rejects_mismatched_weights():
    with pytest.raises(HyperCuboidError, match="shape"):
        extract_path(torch.rand(2, 2, 3, 3, N_OPS), (16, 32))
    with pytest.raises(HyperCuboidError, match="shape"):
        extract_path(torch.rand(3, 2, 2, 2, N_OPS), (16, 32))


def _greedy_reference(w: list, n_c: int, direction: str) -> list[tuple[int, int, int]]:
    """An independent greedy: sort candidates by (-weight, index) and take the first."""
    n_stages = 2 * len(w[0])
    grid = [w[t % 2][t // 2] for t in range(n_stages)]
    everything = list(itertools.product(range(n_c), range(n_c), range(N_OPS)))

    def pick(t, cands):
        return min(cands, key=lambda e: (-grid[t][e[0]][e[1]][e[2]], e))

    picks = [None] * n_stages
    if direction == "top_down":
        picks[0] = pick(0, everything)
        for t in range(1, n_stages):
            picks[t] = pick(t, [e for e in everything if e[0] == picks[t - 1][1]])
    else:
        picks[-1] = pick(n_stages - 1, everything)
        for t in range(n_stages - 2, -1, -1):
            picks[t] = pick(t, [e for e in everything if e[1] == picks[t + 1][0]])
    return picks


@pytest.mark.parametrize("direction", [pytest.param(d, id=d) for d in ("top_down", "bottom_up")])
@pytest.mark.parametrize(("channels", "layers"), GRIDS)
def test_greedy_paths(channels, layers, direction):
    gen = torch.Generator().manual_seed(4)
    n_c = len(channels)
    for trial in range(10):
        raw = torch.randn(2, layers, n_c, n_c, N_OPS, generator=gen)
        # half the trials with coarse weights, to exercise the "first wins" ties
        grid = joint_softmax(raw * 3) if trial % 2 else torch.round(raw).clamp(-1, 1).double()
        path = greedy_path(grid, channels, direction)
        path.validate()
        picks = _greedy_reference(grid.tolist(), n_c, direction)
        expected = HyperCuboidPath(
            channels[picks[0][0]],
            tuple((1 + t % 2, channels[i], channels[j], HYPERCUBOID_OPS[k]) for t, (i, j, k) in enumerate(picks)),
        )
        assert path == expected
        assert path_weight(grid, path, channels) <= path_weight(grid, extract_path(grid, channels), channels) + 1e-12


def test_greedy_can_be_worse_than_longest():
    # Stage 0's single best entry leads into a poor stage 1; the longest path avoids it.
    channels = (16, 32)
    grid = torch.zeros(2, 1, 2, 2, N_OPS, dtype=torch.float64)
    grid[0, 0, 0, 0, 0] = 0.5  # stage 0: 16 -> 16 best
    grid[0, 0, 1, 1, 0] = 0.4  # stage 0: 32 -> 32 second
    grid[1, 0, 1, 1, 1] = 0.9  # stage 1: only good from 32
    assert path_weight(grid, greedy_path(grid, channels, "top_down"), channels) == pytest.approx(0.5)
    assert path_weight(grid, greedy_path(grid, channels, "bottom_up"), channels) == pytest.approx(1.3)
    assert path_weight(grid, extract_path(grid, channels), channels) == pytest.approx(1.3)
    with pytest.raises(HyperCuboidError, match="direction"):
        greedy_path(grid, channels, "sideways")


def test_path_methods_registry():
    assert list_path_methods() == ["longest", "greedy_top_down", "greedy_bottom_up"]
    grid = joint_softmax(torch.randn(2, 2, 2, 2, N_OPS))
    assert get_path_method("longest")(grid, (4, 8)) == extract_path(grid, (4, 8))
    assert get_path_method("greedy_bottom_up")(grid, (4, 8), head_channels=8).head_channels == 8
    with pytest.raises(UnknownNameError, match="longest"):
        get_path_method("beam")


def test_path_weight_rejects_foreign_paths():
    grid = joint_softmax(torch.randn(2, 4, 4, 4, N_OPS))
    human = get_published_path("MULTI_CHANNEL_HANDMADE_PATH").path
    assert 0 < path_weight(grid, human, (32, 64, 128, 256)) < 8
    with pytest.raises(PathError, match="not in the grid"):
        path_weight(grid, human, (16, 64, 128, 256))
    with pytest.raises(PathError, match="stages"):
        path_weight(joint_softmax(torch.randn(2, 2, 4, 4, N_OPS)), human, (32, 64, 128, 256))


@pytest.mark.parametrize(
    "rng_factory",
    [
        pytest.param(lambda: random.Random(7), id="random.Random"),
        pytest.param(lambda: torch.Generator().manual_seed(7), id="torch.Generator"),
        pytest.param(lambda: 7, id="int-seed"),
    ],
)
def test_random_path_is_valid_and_seeded(rng_factory):
    paths = [random_path((16, 32, 64), 3, rng_factory()) for _ in range(2)]
    assert paths[0] == paths[1]
    assert len(paths[0].stages) == 6
    rng = rng_factory() if not isinstance(rng_factory(), int) else random.Random(7)
    many = {random_path((16, 32, 64), 3, rng) for _ in range(30)}
    assert len(many) > 20  # draws vary
    stems = {p.stem_channels for p in many}
    ops = {s.op for p in many for s in p.stages}
    assert stems == {16, 32, 64} and ops == set(HYPERCUBOID_OPS)


def test_supernet_path_json_round_trip():
    net = tiny(channels=(4, 8, 16), layers=2, head_channels=12)
    with torch.no_grad():
        net.arch.normal_(0, 1)
    for path in (net.extract_path(), net.greedy_path("top_down"), net.greedy_path("bottom_up")):
        assert HyperCuboidPath.from_json(path.to_json()) == path
        assert path.head_channels == 12 and path.layers == 2
        model = build_path_network(path.to_json(), num_classes=10, in_channels=1)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert net.extract_path() == extract_path(net.arch_weights(), net.channels, head_channels=12)
    assert net.entropy().shape == (2, 2)


# ---------------------------------------------------------------------------------------------------------
# Linear path networks


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in PUBLISHED_PATHS.names()])
def test_published_path_networks_train(name):
    path = get_published_path(name).path
    net = build_path_network(name, num_classes=10, in_channels=3)
    assert isinstance(net, LinearPathNetwork) and net.path == path
    assert len(net.stages) == 8 and net.head[-1].num_features == 768 and net.classifier.in_features == 768
    for module, stage in zip(net.stages, path.stages):
        assert type(module).__name__ == stage.op
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_human_path_on_digits():
    net = build_path_network("MULTI_CHANNEL_HANDMADE_PATH", num_classes=10, in_channels=1)
    logits = net(torch.randn(2, 1, 8, 8))  # 8 -> 4 -> 2 -> 1 -> 1
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_linear_path_network_layout():
    path = HyperCuboidPath(4, ((1, 4, 8, "SharpSepConv"), (2, 8, 4, "ResizablePool")), head_channels=6)
    net = LinearPathNetwork(path, num_classes=3, in_channels=1)
    assert net.stem[0].out_channels == 4 and net.stem[0].in_channels == 1
    assert net.stages[0][1].stride == (1, 1) and net.stages[1].pool.stride == 2
    assert net.head[1].in_channels == 4 and net.head[-1].num_features == 6
    assert net(torch.randn(2, 1, 7, 7)).shape == (2, 3)
    assert not any("aux" in n for n, _ in net.named_modules())
