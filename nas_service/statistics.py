"""The statistics of a comparison, with scipy.stats: per-arm summaries with confidence intervals, each arm
against a baseline (paired by replicate where replicates pair up), Holm's correction across the arms of
a stage, and the main effect of each sweep axis.

A *replicate* is one independent run of an arm: its key is the seed of the search that produced the
architecture (for arms whose architecture came from a search; the retrains of one searched architecture
are averaged into its replicate), else the trial's own seed. Two arms pair up
on the replicates they share; with fewer than two shared replicates the comparison is unpaired, and says
so. Arms with fewer than :data:`MIN_REPLICATES` replicates get no spread, interval or test: they are
flagged instead of being given numbers that mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_REPLICATES", "Summary", "Comparison", "MainEffect", "summarize", "compare", "holm", "main_effects"]

MIN_REPLICATES = 3
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """One arm's metric over its replicates: ``n``, mean, sample std and a t-based confidence interval
    (all None for std and the interval when ``n < MIN_REPLICATES``: see ``flag``)."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def flag(self) -> str:
        return f"n<{MIN_REPLICATES}" if self.n < MIN_REPLICATES else ""

    def text(self, digits: int = 4) -> str:
        """``0.9712 ± 0.0031 [0.9635, 0.9789] (n=3)`` or ``0.9712 (n=2, n<3)``."""
        if self.n == 0:
            return "-"
        if self.std is None:
            return f"{self.mean:.{digits}f} (n={self.n}, {self.flag})"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}] (n={self.n})"


def _constant(values: np.ndarray) -> bool:
    """No spread beyond float rounding (0.93 - 0.91 and 0.95 - 0.93 differ in the 17th digit): a t
    interval or test on such values is rounding noise, so they get the point and no t-test."""
    return bool(np.allclose(values, values[0], rtol=1e-9, atol=1e-12))


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy import stats  # half a second of imports: here, so `nas-service status` (report.py) skips it

    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean; NaNs are dropped."""
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(data) == 0:
        return Summary(0, math.nan, None, None, None)
    if len(data) < MIN_REPLICATES:
        return Summary(len(data), float(data.mean()), None, None, None)
    std = float(data.std(ddof=1))
    low, high = (float(data.mean()),) * 2 if _constant(data) else _t_interval(data, confidence)
    return Summary(len(data), float(data.mean()), std, low, high)


@dataclass(frozen=True)
class Comparison:
    """An arm minus the baseline.

    Attributes:
        paired: the difference is taken replicate by replicate (``n`` shared replicates); else the arms are
            compared as independent samples (``n`` = the arm's replicates, ``n_baseline`` the baseline's).
        difference, ci_low, ci_high: the mean difference and its t interval (Welch's for unpaired samples).
        t_p: a paired t-test (Welch's t-test unpaired); rank_p: Wilcoxon signed-rank (Mann-Whitney U
            unpaired); holm_p: ``t_p`` after Holm's correction across the arms compared in one call of
            :func:`holm` (filled by the report).
    """

    paired: bool
    n: int
    n_baseline: int
    difference: float
    ci_low: float | None = None
    ci_high: float | None = None
    t_p: float | None = None
    rank_p: float | None = None
    holm_p: float | None = None

    @property
    def flag(self) -> str:
        return f"n<{MIN_REPLICATES}" if min(self.n, self.n_baseline) < MIN_REPLICATES else ""


def compare(arm: Mapping[Hashable, float], baseline: Mapping[Hashable, float],
            confidence: float = CONFIDENCE) -> Comparison:  # fmt: skip
    """``arm - baseline`` for two arms given as ``{replicate key: value}``."""
    from scipy import stats

    shared = [k for k in arm if k in baseline]
    if len(shared) >= 2:
        diffs = np.asarray([arm[k] - baseline[k] for k in shared], dtype=float)
        if len(diffs) < MIN_REPLICATES:
            return Comparison(True, len(diffs), len(diffs), float(diffs.mean()))
        if _constant(diffs):
            rank_p = float(stats.wilcoxon(diffs).pvalue) if np.any(diffs != 0) else 1.0
            return Comparison(True, len(diffs), len(diffs), float(diffs.mean()), float(diffs.mean()),
                              float(diffs.mean()), None, rank_p)  # fmt: skip
        low, high = _t_interval(diffs, confidence)
        t_p = float(stats.ttest_rel([arm[k] for k in shared], [baseline[k] for k in shared]).pvalue)
        rank_p = float(stats.wilcoxon(diffs).pvalue) if np.any(diffs != 0) else 1.0
        return Comparison(True, len(diffs), len(diffs), float(diffs.mean()), low, high, _nan_to_none(t_p), rank_p)
    a, b = np.asarray(list(arm.values()), dtype=float), np.asarray(list(baseline.values()), dtype=float)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if min(len(a), len(b)) < MIN_REPLICATES:
        return Comparison(False, len(a), len(b), difference)
    welch = stats.ttest_ind(a, b, equal_var=False)
    low, high = welch.confidence_interval(confidence)
    rank_p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return Comparison(False, len(a), len(b), difference, float(low), float(high), _nan_to_none(float(welch.pvalue)),
                      rank_p)  # fmt: skip


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None and is not counted).

    Sorted ascending, the i-th of m p-values becomes ``max_{j<=i} min(1, (m - j) * p_j)``.
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class MainEffect:
    """The effect of one sweep axis: the mean difference between two of its levels over the cells (the
    other axes' values and the replicate) where both were run, with its t interval."""

    axis: str
    level: object
    reference: object
    n: int
    difference: float
    ci_low: float | None
    ci_high: float | None


def main_effects(rows: Sequence[Mapping[str, object]], axes: Sequence[str], metric: str,
                 replicate: str = "replicate", confidence: float = CONFIDENCE) -> list[MainEffect]:  # fmt: skip
    """For each axis and each of its levels after the first: that level minus the first level, averaged over
    every combination of the other axes and the replicate where both levels exist."""
    out = []
    for axis in axes:
        levels = list(dict.fromkeys(row[axis] for row in rows))
        cells: dict[tuple, dict[object, list[float]]] = {}
        for row in rows:  # rows of one replicate and level (e.g. several retrain seeds) are averaged
            key = tuple(row[a] for a in axes if a != axis) + (row[replicate],)
            cells.setdefault(key, {}).setdefault(row[axis], []).append(float(row[metric]))  # type: ignore[arg-type]
        for level in levels[1:]:
            diffs = np.asarray([np.mean(c[level]) - np.mean(c[levels[0]])
                                for c in cells.values() if level in c and levels[0] in c])  # fmt: skip
            if len(diffs) == 0:
                continue
            low = high = None
            if len(diffs) >= MIN_REPLICATES:
                low, high = (float(diffs.mean()),) * 2 if _constant(diffs) else _t_interval(diffs, confidence)
            out.append(MainEffect(axis, level, levels[0], len(diffs), float(diffs.mean()), low, high))
    return out
