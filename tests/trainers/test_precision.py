"""Reduced precision (``precision: bf16 | fp16 | auto``): what stays fp32, how close bf16 is to fp32, and
what a config refuses. Exact resume under each precision is in test_training.py."""

from __future__ import annotations

import pytest
import torch

from search_spaces.hypercuboid import HyperCuboidSupernet
from search_spaces.supernet import build_search_network
from search_spaces.weighting import list_weightings
from trainers.architect import Architect
from trainers.config import ArchOptimConfig, ConfigError, OptimConfig, config_from_dict, config_to_dict, with_overrides
from trainers.engine import apply_memory_format, train_one_epoch
from trainers.identity import without_result_neutral_fields
from trainers.precision import Precision, native_bf16, resolve_precision
from trainers.recipes import get_recipe

CPU = torch.device("cpu")


def _supernet(kind: str, weighting: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cell":
        model = build_search_network("darts", C=4, num_classes=10, layers=3, in_channels=1, weighting=weighting)
    else:
        model = HyperCuboidSupernet(channels=(4, 8), layers=2, num_classes=10, in_channels=1, weighting=weighting,
                                    head_channels=16)  # fmt: skip
    return apply_memory_format(model, torch.channels_last)


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (n,), generator=g)


def _gradients(model: torch.nn.Module, precision: Precision, seed: int = 1) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The loss on one batch, every parameter's gradient and the architecture's gradient, flattened."""
    x, y = _batch(seed=seed)
    model.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), flat, torch.cat([p.grad.flatten() for p in model.arch_parameters()])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((b - a).norm() / a.norm())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("weighting", list_weightings())
@pytest.mark.parametrize("kind", ["cell", "hypercuboid"])
def test_bf16_forward_and_backward_agree_with_fp32(kind, weighting):
    """The stated tolerance. Loss: within 1% relative. Gradients (all parameters together, and the
    architecture's alone): within 35% relative L2 of fp32's and cosine >= 0.94 — measured 0.09-0.32 and
    0.95-1.00 on these supernets; a plain conv-BN-ReLU stack shows 5-20% per tensor too, as bf16's 8-bit
    mantissa is rounded at every activation — and under half of what another batch changes in the fp32
    gradient (relative 1.1-1.5 here): the precision moves a step far less than the sampling of its batch."""
    model = _supernet(kind, weighting)
    loss32, all32, arch32 = _gradients(model, Precision("fp32", "cpu"))
    loss16, all16, arch16 = _gradients(model, Precision("bf16", "cpu"))
    _, other_batch, _ = _gradients(model, Precision("fp32", "cpu"), seed=2)
    assert loss16 == pytest.approx(loss32, rel=0.01)
    for fp32, bf16 in ((all32, all16), (arch32, arch16)):
        assert _relative(fp32, bf16) <= 0.35 and _cosine(fp32, bf16) >= 0.94
    assert _relative(all32, all16) < 0.5 * _relative(all32, other_batch)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("kind", ["cell", "hypercuboid"])
def test_under_bf16_alphas_their_gradients_bn_statistics_and_optimizer_state_stay_fp32(kind, order):
    model = _supernet(kind, "max_w")
    bf16 = Precision("bf16", "cpu")
    weights = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9)
    architect = Architect(model, ArchOptimConfig(order=order), OptimConfig(), bf16)
    x, y = _batch()
    seen = {}

    def step(_step, xb, yb):
        seen["arch_loss"] = architect.step(xb, yb, x, y, lr=0.05, weight_optimizer=weights)
        seen["arch_grads"] = [p.grad for p in model.arch_parameters()]  # cleared after the Adam step

    before = [p.detach().clone() for p in model.arch_parameters()]
    train_one_epoch(model, [(x, y)] * 2, weights, epoch=1, device=CPU, memory_format=torch.channels_last,
                    before_step=step, precision=bf16)  # fmt: skip
    for p, old in zip(model.arch_parameters(), before):
        assert p.dtype == torch.float32 and not torch.equal(p.detach(), old)  # fp32 and updated
    for state in architect.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    for state in weights.state.values():
        assert state["momentum_buffer"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.weight_parameters())
    stats = [b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    assert stats and all(b.dtype == torch.float32 for b in stats)
    assert all(torch.isfinite(b).all() for b in stats)
    # The softmax / Max-W weights the forward multiplies in are fp32 whatever the autocast.
    with bf16.autocast():
        arch_weights = model.arch_weights()
    for w in arch_weights.values() if isinstance(arch_weights, dict) else [arch_weights]:
        assert w.dtype == torch.float32


def test_fp16_arch_step_scales_its_loss_and_skips_an_overflowing_step():
    model = _supernet("cell", "scalar")
    fp16 = Precision("fp16", "cpu")
    scaler = fp16.grad_scaler()
    assert scaler is not None and Precision("bf16", "cpu").grad_scaler() is None
    weights = torch.optim.SGD(model.weight_parameters(), lr=0.05)
    architect = Architect(model, ArchOptimConfig(), OptimConfig(), fp16, scaler)
    x, y = _batch()
    before = [p.detach().clone() for p in model.arch_parameters()]
    architect.step(x, y, x, y, lr=0.05, weight_optimizer=weights)
    moved = [p.detach().clone() for p in model.arch_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(moved, before))
    overflowing = Architect(model, ArchOptimConfig(), OptimConfig(), fp16,
                            torch.amp.GradScaler("cpu", init_scale=float("inf")))  # every scaled gradient overflows
    overflowing.step(x, y, x, y, lr=0.05, weight_optimizer=weights)
    assert all(torch.equal(a, b.detach()) for a, b in zip(moved, model.arch_parameters()))


def test_auto_is_bf16_exactly_where_the_device_computes_it_natively():
    assert resolve_precision("auto", CPU).name == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == Precision("fp32", "cpu")
    with pytest.raises(ValueError, match="precision: must be one of fp32, bf16, fp16, auto, got 'fp8'"):
        resolve_precision("fp8", CPU)


def test_config_rules_name_the_field():
    config = config_from_dict({"kind": "cell_search", "precision": "bf16"})
    assert config.precision == "bf16"
    with pytest.raises(ConfigError, match="precision: must be one of"):
        config_from_dict({"kind": "retrain", "genotype": "DARTS_V2", "precision": "half"})
    with pytest.raises(ConfigError, match=r"precision: must be fp32, bf16 or auto with arch.order 2.*'fp16'"):
        config_from_dict({"kind": "cell_search", "precision": "fp16", "arch": {"order": 2}})


def test_precision_is_part_of_the_identity_and_fp32_keeps_the_ids_recorded_before_it_existed():
    fp32 = config_to_dict(get_recipe("digits_search"))
    assert fp32["precision"] == "fp32"
    old = {k: v for k, v in fp32.items() if k != "precision"} | {"amp": False}  # as written before
    assert without_result_neutral_fields(fp32) == without_result_neutral_fields(old)
    assert config_from_dict(old) == get_recipe("digits_search")
    bf16 = config_to_dict(with_overrides(get_recipe("digits_search"), {"precision": "bf16"}))
    assert without_result_neutral_fields(bf16) != without_result_neutral_fields(fp32)
