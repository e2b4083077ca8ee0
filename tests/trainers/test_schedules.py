"""Per-epoch learning-rate schedules: CPA properties and closed form (spec sections 5 and 12.5), DARTS cosine,
the registry, ScheduleSpec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search_spaces.registry import UnknownNameError
from trainers.config import config_to_dict
from trainers.recipes import get_recipe, list_recipes
from trainers.schedules import (
    ScheduleError,
    ScheduleSpec,
    build_schedule,
    constant,
    cosine,
    cosine_power_annealing,
    list_schedules,
)

# (epochs, max_lr, min_lr, power, warmup): the paper's settings (spec 5 table) plus small edge cases.
SETTINGS = [
    pytest.param(120, 0.025, 1e-4, 2.0, 5, id="cifar_search"),
    pytest.param(2000, 0.025, 1e-8, 2.0, 5, id="cifar_final"),
    pytest.param(300, 0.05 * 448 / 256, 0.00075, 10.0, 10, id="imagenet"),
    pytest.param(300, 0.1, 7.5e-4, 10.0, 0, id="imagenet_plot_no_warmup"),
    pytest.param(10, 0.1, 0.001, 2.5, 3, id="short_fractional_power"),
    pytest.param(7, 0.3, 0.0, 1.0, 2, id="cosine_with_warmup_to_zero"),
    pytest.param(3, 0.1, 0.01, 2.0, 1, id="three_epochs_one_warmup"),
]


def closed_form(epochs: int, max_lr: float, min_lr: float, p: float, warmup: int) -> np.ndarray:
    """Spec section 5, written out independently: ramp over W+1 epochs, then
    lr(e) = min + (max - min) * (p^(c+1) - p) / (p^2 - p), c = (1 + cos(pi e'/E')) / 2, e' = e - W."""
    out = []
    for e in range(1, epochs + 1):
        if warmup > 0 and e <= warmup + 1:
            q = e / (warmup + 1)
        else:
            c = (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) / 2
            if p == 1:
                # no warmup: normalised by c(1), the largest value in the array; with warmup c(e'=0) = 1
                q = c if warmup > 0 else c / ((1 + math.cos(math.pi / epochs)) / 2)
            elif warmup > 0:
                q = (p ** (c + 1) - p) / (p**2 - p)
            else:
                c1 = (1 + math.cos(math.pi / epochs)) / 2
                q = (p ** (c + 1) - p) / (p ** (c1 + 1) - p)
        out.append(min_lr + (max_lr - min_lr) * q)
    return np.array(out)


@pytest.mark.parametrize(("epochs", "max_lr", "min_lr", "power", "warmup"), SETTINGS)
def test_cpa_endpoints_and_monotone_tail(epochs, max_lr, min_lr, power, warmup):
    lrs = cosine_power_annealing(epochs, max_lr, min_lr, power, warmup_epochs=warmup)
    assert lrs.shape == (epochs,) and lrs.dtype == np.float64
    assert lrs[warmup] == max_lr  # epoch W+1, bit for bit
    assert lrs[-1] == min_lr  # last epoch, bit for bit
    assert lrs.max() == max_lr and lrs.min() == min_lr
    tail = lrs[warmup:]
    assert np.all(np.diff(tail) <= 0), "must not increase after warmup"
    if warmup > 0:
        ramp = lrs[: warmup + 1]
        expected = min_lr + (max_lr - min_lr) * np.arange(1, warmup + 2) / (warmup + 1)
        np.testing.assert_allclose(ramp, expected, rtol=1e-15)
        assert np.all(np.diff(ramp) > 0)


@pytest.mark.parametrize(("epochs", "max_lr", "min_lr", "power", "warmup"), SETTINGS)
def test_cpa_matches_closed_form(epochs, max_lr, min_lr, power, warmup):
    lrs = cosine_power_annealing(epochs, max_lr, min_lr, power, warmup_epochs=warmup)
    np.testing.assert_allclose(lrs, closed_form(epochs, max_lr, min_lr, power, warmup), rtol=1e-12, atol=0)


def test_cpa_paper_settings_spot_values():
    # Values read off the closed form by hand, so a change to both code and test helper is still caught.
    lrs = cosine_power_annealing(120, 0.025, 1e-4, 2, warmup_epochs=5)
    assert lrs[0] == pytest.approx(1e-4 + 0.0249 / 6, rel=1e-12)  # ramp 1/6
    # midpoint of the annealing: e' = E'/2 -> c = 1/2 -> q = (2^1.5 - 2) / 2 = sqrt(2) - 1
    e_mid = 5 + 115 / 2
    assert not e_mid.is_integer()  # E' is odd; check the neighbours bracket the midpoint value instead
    mid = 1e-4 + 0.0249 * (math.sqrt(2) - 1)
    assert lrs[int(e_mid) - 1] > mid > lrs[int(e_mid)]


def test_cpa_power_one_is_normalised_cosine():
    epochs = 50
    c = (1 + np.cos(np.pi * np.arange(1, epochs + 1) / epochs)) / 2
    expected = 0.001 + (0.1 - 0.001) * c / c[0]
    np.testing.assert_allclose(cosine_power_annealing(epochs, 0.1, 0.001, 1), expected, rtol=1e-14)


def test_cpa_without_warmup_starts_at_max():
    lrs = cosine_power_annealing(30, 0.2, 1e-3, 10)
    assert lrs[0] == 0.2 and lrs[-1] == 1e-3


def test_larger_power_decays_faster_early():
    epochs = 100
    low = cosine_power_annealing(epochs, 0.1, 1e-4, 2, warmup_epochs=5)
    high = cosine_power_annealing(epochs, 0.1, 1e-4, 10, warmup_epochs=5)
    cos = cosine_power_annealing(epochs, 0.1, 1e-4, 1, warmup_epochs=5)
    quarter = epochs // 4 - 1
    assert high[quarter] < low[quarter] < cos[quarter]
    # ...and the larger power spends longer near min_lr (longer tail)
    assert np.sum(high < 0.01) > np.sum(low < 0.01) > np.sum(cos < 0.01)


def test_resume_slicing():
    full = cosine_power_annealing(40, 0.1, 1e-4, 2, warmup_epochs=3)
    tail = cosine_power_annealing(40, 0.1, 1e-4, 2, warmup_epochs=3, start_epoch=11, restart_lr=False)
    assert len(tail) == 30
    np.testing.assert_array_equal(tail, full[10:])
    restarted = cosine_power_annealing(40, 0.1, 1e-4, 2, warmup_epochs=3, start_epoch=11, restart_lr=True)
    np.testing.assert_array_equal(restarted, full)
    last = cosine_power_annealing(40, 0.1, 1e-4, 2, warmup_epochs=3, start_epoch=40, restart_lr=False)
    np.testing.assert_array_equal(last, [1e-4])


def test_warmup_filling_the_run_ends_at_max_lr():
    # W = E - 1 is allowed (W < E) but the W+1-epoch ramp then covers every epoch: no annealing is left,
    # exactly as the reference's algorithm behaves.
    lrs = cosine_power_annealing(3, 0.3, 0.0, 2, warmup_epochs=2)
    np.testing.assert_allclose(lrs, [0.1, 0.2, 0.3], rtol=1e-15)


def test_single_epoch_runs_at_max_lr():
    np.testing.assert_array_equal(cosine_power_annealing(1, 0.1, 0.01, 2), [0.1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(dict(epochs=0), r"epochs: must be >= 1, got 0", id="epochs_zero"),
        pytest.param(dict(epochs=10.0), r"epochs: must be an integer", id="epochs_float"),
        pytest.param(dict(min_lr=0.2), r"0 <= min_lr <= max_lr, got min_lr=0.2, max_lr=0.1", id="min_above_max"),
        pytest.param(dict(min_lr=-1e-3), r"0 <= min_lr", id="negative_min"),
        pytest.param(dict(max_lr=float("inf")), r"max_lr: must be a finite number, got inf", id="inf_max"),
        pytest.param(dict(power=0.5), r"power: must be >= 1, got 0.5", id="power_below_one"),
        pytest.param(dict(warmup_epochs=10), r"warmup_epochs: must be < epochs, got warmup_epochs=10, epochs=10",
                     id="warmup_too_long"),  # fmt: skip
        pytest.param(dict(warmup_epochs=-1), r"warmup_epochs: must be >= 0, got -1", id="warmup_negative"),
        pytest.param(dict(start_epoch=11), r"start_epoch: must be <= epochs", id="start_after_end"),
        pytest.param(dict(start_epoch=0), r"start_epoch: must be >= 1", id="start_zero"),
    ],
)
def test_cpa_rejects_bad_arguments(kwargs, match):
    args = dict(epochs=10, max_lr=0.1, min_lr=0.001, power=2.0, warmup_epochs=2) | kwargs
    with pytest.raises(ScheduleError, match=match):
        cosine_power_annealing(**args)


def test_cosine_equals_darts_cosine_annealing_lr():
    """DARTS called scheduler.step() at the start of each epoch: epoch e used last_epoch = e."""
    epochs, max_lr, min_lr = 60, 0.025, 0.001
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_lr)
    torch_values = []
    for _ in range(epochs):
        opt.step()
        sched.step()
        torch_values.append(opt.param_groups[0]["lr"])
    values = cosine(epochs, max_lr, min_lr)
    np.testing.assert_allclose(values, torch_values, rtol=1e-12, atol=1e-15)
    e = np.arange(1, epochs + 1)
    formula = min_lr + (max_lr - min_lr) * (1 + np.cos(np.pi * e / epochs)) / 2
    np.testing.assert_allclose(values, formula, rtol=1e-15)
    assert values[-1] == min_lr and values[0] < max_lr


def test_cosine_differs_from_cpa_p1_only_by_normalisation():
    darts = cosine(60, 0.025, 0.0)
    cpa = cosine_power_annealing(60, 0.025, 0.0, 1)
    np.testing.assert_allclose(cpa, darts / (darts[0] / 0.025), rtol=1e-14)


def test_constant():
    np.testing.assert_array_equal(constant(4, 0.1), [0.1] * 4)
    with pytest.raises(ScheduleError, match=r"lr: must be >= 0, got -0.1"):
        constant(4, -0.1)


# --------------------------------------------------------------------------------------------------------
# registry and ScheduleSpec

KIND_KWARGS = {
    "cpa": dict(max_lr=0.1, min_lr=0.001, power=2.0, warmup_epochs=1),
    "cosine": dict(max_lr=0.1, min_lr=0.001),
    "constant": dict(lr=0.1),
}


def test_registry_lists_the_three_kinds():
    assert set(list_schedules()) == set(KIND_KWARGS)


@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in list_schedules()])
def test_every_schedule_gives_one_finite_value_per_epoch(kind):
    values = build_schedule(kind, 9, **KIND_KWARGS[kind])
    assert len(values) == 9 and np.all(np.isfinite(values)) and np.all(values >= 0)
    assert max(values) <= 0.1 and values[-1] == (0.1 if kind == "constant" else 0.001)


def test_build_schedule_errors():
    with pytest.raises(UnknownNameError, match=r"unknown schedule 'cosin'; known schedules: .*'cosine'"):
        build_schedule("cosin", 3)
    with pytest.raises(ScheduleError, match=r"schedule 'cosine': unknown argument\(s\) \['power'\]"):
        build_schedule("cosine", 3, max_lr=0.1, min_lr=0.0, power=2)


@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in list_schedules()])
def test_schedule_spec_values_round_trip_and_lr_at(kind):
    spec = ScheduleSpec(kind=kind, max_lr=0.1, min_lr=0.001, power=3, warmup_epochs=2)
    assert ScheduleSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(ScheduleSpec(kind=kind, max_lr=0.1, min_lr=0.001, power=3.0, warmup_epochs=2))
    values = spec.values(12)
    spec_kwargs = {
        "cpa": dict(max_lr=0.1, min_lr=0.001, power=3.0, warmup_epochs=2),
        "cosine": dict(max_lr=0.1, min_lr=0.001),
        "constant": dict(lr=0.1),  # constant runs at max_lr
    }[kind]
    direct = build_schedule(kind, 12, **spec_kwargs)
    np.testing.assert_array_equal(values, direct)
    assert [spec.lr_at(e, epochs=12) for e in range(1, 13)] == values.tolist()
    values[0] = -1.0  # callers get a copy; the cache cannot be corrupted
    assert spec.lr_at(1, epochs=12) >= 0
    with pytest.raises(ScheduleError, match=r"epoch: must be <= epochs, got epoch=13, epochs=12"):
        spec.lr_at(13, epochs=12)
    with pytest.raises(ScheduleError, match=r"epoch: must be >= 1, got 0"):
        spec.lr_at(0, epochs=12)


def test_schedule_spec_validation():
    with pytest.raises(UnknownNameError, match=r"known schedules"):
        ScheduleSpec(kind="step")
    with pytest.raises(ScheduleError, match=r"power: must be >= 1"):
        ScheduleSpec(power=0)
    with pytest.raises(ScheduleError, match=r"unknown field\(s\) \['warmup'\]"):
        ScheduleSpec.from_dict({"kind": "cpa", "warmup": 3})
    with pytest.raises(ScheduleError, match=r"warmup_epochs: must be < epochs"):
        ScheduleSpec(warmup_epochs=5).values(5)


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in list_recipes()])
def test_every_recipe_schedule_builds(name):
    recipe = get_recipe(name)
    spec = ScheduleSpec.from_dict(config_to_dict(recipe.schedule))
    values = spec.values(recipe.epochs)
    assert len(values) == recipe.epochs and values[-1] == recipe.schedule.min_lr
