"""The comparison statistics against values worked out by hand (t quantiles from tables: t(0.975, 2) =
4.302653, t(0.975, 5) = 2.570582)."""

from __future__ import annotations

import math

import pytest

from nas_service.statistics import MIN_REPLICATES, compare, holm, main_effects, summarize

T2, T5 = 4.302653, 2.570582


def test_summary_mean_std_and_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0])
    half = T2 * 1.0 / math.sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci_low == pytest.approx(2.0 - half, abs=1e-5) and s.ci_high == pytest.approx(2.0 + half, abs=1e-5)
    assert s.flag == "" and s.text(2) == f"2.00 ± 1.00 [{2 - half:.2f}, {2 + half:.2f}] (n=3)"


@pytest.mark.parametrize("values", [[0.9], [0.9, 0.95]])
def test_fewer_than_three_replicates_are_flagged_not_given_a_spread(values) -> None:
    s = summarize(values + [math.nan])
    assert s.n == len(values) < MIN_REPLICATES and s.std is None and s.ci_low is None
    assert s.flag == "n<3" and "± " not in s.text() and "n<3" in s.text()


def test_a_paired_comparison_by_replicate() -> None:
    arm = {0: 1.0, 1: 2.0, 2: 4.0, 9: 100.0}  # replicate 9 has no partner: left out of the pairing
    base = {0: 0.5, 1: 1.0, 2: 2.5}
    c = compare(arm, base)
    # differences 0.5, 1.0, 1.5: mean 1, sd 0.5, t = 1 / (0.5 / sqrt 3) = 3.4641 on 2 df
    assert c.paired and c.n == 3 and c.difference == pytest.approx(1.0)
    half = T2 * 0.5 / math.sqrt(3)
    assert (c.ci_low, c.ci_high) == (pytest.approx(1 - half, abs=1e-5), pytest.approx(1 + half, abs=1e-5))
    assert c.t_p == pytest.approx(0.07418, abs=1e-4)
    assert c.rank_p == pytest.approx(0.25)  # exact signed-rank: all three positive, 2 * (1/8)
    assert c.flag == ""


def test_an_unpaired_comparison_says_so_and_uses_welch() -> None:
    c = compare({0: 1.0, 1: 2.0, 2: 3.0}, {5: 0.0, 6: 0.0, 7: 3.0})
    assert not c.paired and (c.n, c.n_baseline) == (3, 3)
    assert c.difference == pytest.approx(1.0)
    # Welch: s1^2/3 = 1/3, s2^2/3 = 3/3 = 1 -> se = sqrt(4/3); t = 0.8660
    assert c.t_p == pytest.approx(0.4474, abs=2e-3)
    small = compare({0: 1.0}, {1: 2.0, 2: 3.0})
    assert small.flag == "n<3" and small.t_p is None and small.difference == pytest.approx(-1.5)


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_main_effects_average_over_the_other_axes_and_replicates() -> None:
    noise = {("x", 0): 0.0, ("x", 1): 0.1, ("x", 2): -0.1, ("y", 0): 0.2, ("y", 1): 0.0, ("y", 2): -0.2}
    rows = []
    for a in ("a", "b"):
        for b in ("x", "y"):
            for r in (0, 1, 2):
                value = 1.0 * (a == "b") + 0.5 * (b == "y") + (noise[b, r] if a == "b" else 0.0)
                rows.append({"A": a, "B": b, "replicate": r, "acc": value})
    effects = {e.axis: e for e in main_effects(rows, ["A", "B"], "acc")}
    a = effects["A"]
    # A: differences 1.0, 1.1, 0.9, 1.2, 1.0, 0.8 over (B, replicate): mean 1, sd sqrt(0.02)
    half = T5 * math.sqrt(0.02) / math.sqrt(6)
    assert (a.level, a.reference, a.n) == ("b", "a", 6) and a.difference == pytest.approx(1.0)
    assert (a.ci_low, a.ci_high) == (pytest.approx(1 - half, abs=1e-5), pytest.approx(1 + half, abs=1e-5))
    # B: per (A, replicate): 0.5 for a; 0.5 + (0.2-0), (0-0.1), (-0.2+0.1) for b -> mean 0.5 + 0.1/6
    assert effects["B"].difference == pytest.approx(0.5 + (0.2 - 0.1 - 0.1) / 6)
