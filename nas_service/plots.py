"""The report's figures, drawn with matplotlib into PNG files, read only from the results store.

Every figure is a function of the ``trials`` and ``epochs`` tables (``ResultsStore.trials()`` /
``.epochs()``): learning curves per arm (mean and 95% t band over replicates), test error against
parameters and against cost with the Pareto front, the search-collapse telemetry per search arm
(architecture entropy, parameter-free share, path weight), the final architecture weights of each search
as heatmaps, and a drawing of the best genotype or path of each arm. A figure whose data the store does
not hold (no search stage, no parameter counts) is left out rather than drawn empty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .drawing import draw  # noqa: E402
from .stage_kinds import STAGE_KINDS  # noqa: E402
from .report import replicate_keys, replicate_means  # noqa: E402
from .statistics import Summary, summarize  # noqa: E402

__all__ = ["ReportFigure", "render_figures", "pareto_front", "arm_labels"]

# At most this many searches get their own weight heatmap: a sweep of hundreds would bury the page.
MAX_HEATMAPS = 8
# The search-collapse signals, by the column the search writes every epoch, with their axis label.
TELEMETRY = {
    "arch_entropy_normal": "architecture entropy, normal cell (1 = undecided)",
    "arch_entropy_reduce": "architecture entropy, reduction cell",
    "param_free_share": "parameter-free share of the chosen ops",
    "arch_entropy_mean_nats": "architecture entropy per group (nats)",
    "path_weight": "weight of the extracted path",
}


@dataclass(frozen=True)
class ReportFigure:
    """One figure file of the report: its section, title, a sentence saying how to read it, and the file."""

    section: str
    title: str
    caption: str
    path: Path


def arm_labels(trials: pd.DataFrame) -> pd.Series:
    """Each trial's arm as the report names it: the readable label, else the arm id."""
    labels = trials["extra.arm_label"] if "extra.arm_label" in trials else pd.Series("", index=trials.index)
    return pd.Series([lbl if isinstance(lbl, str) and lbl else arm for lbl, arm in zip(labels, trials["arm"])],
                     index=trials.index)  # fmt: skip


def pareto_front(cost: Iterable[float], error: Iterable[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and error (lower is better), by cost."""
    points = sorted(((c, e, i) for i, (c, e) in enumerate(zip(cost, error)) if not (math.isnan(c) or math.isnan(e))))
    front, best = [], math.inf
    for c, e, i in points:
        if e < best:
            front.append(i)
            best = e
    return front


def _save(fig: Figure, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:80]


def with_arms(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows of finished trials with their stage kind, arm label and replicate (as the tables
    count them: ``report.replicate_keys``, computed over all trials so lineage reaches the searches)."""
    replicate = dict(zip(trials["trial_id"], replicate_keys(trials)))
    done = trials[trials["status"] == "finished"]
    info = pd.DataFrame({"trial_id": done["trial_id"], "kind": done["stage_kind"], "arm_label": arm_labels(done),
                         "replicate": [replicate[t] for t in done["trial_id"]]})  # fmt: skip
    return epochs.merge(info, on="trial_id", how="inner")


def _by_stage(trials: pd.DataFrame, rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``rows`` per stage, stages in the order their first trial finished (the spec's order), as the tables."""
    order = dict.fromkeys(trials.sort_values("finished_at", kind="stable")["stage"])
    groups = dict(tuple(rows.groupby("stage", sort=False))) if not rows.empty else {}
    return [(stage, groups[stage]) for stage in order if stage in groups]


def arm_curve(rows: pd.DataFrame, metric: str) -> list[tuple[int, Summary]]:
    """Per epoch, ``metric`` over the arm's replicates (``rows``: its epoch rows with a ``replicate``
    column): each replicate is the mean of its trials at that epoch, as in the tables, so five retrains of
    one searched architecture are one point of the band, not five."""
    out = []
    for epoch, group in rows.groupby("epoch"):
        s = summarize(list(replicate_means(group, metric).values()))
        if s.n:
            out.append((int(epoch), s))
    return out


def _band(ax: Any, frame: pd.DataFrame, metric: str, label: str) -> bool:
    """The arm's curve (:func:`arm_curve`): the mean per epoch, with the 95% t band where n >= 3."""
    curve = arm_curve(frame, metric)
    if not curve:
        return False
    x = np.array([epoch for epoch, _ in curve])
    n = max(s.n for _, s in curve)
    (line,) = ax.plot(x, [s.mean for _, s in curve], marker="o", markersize=3, label=f"{label} (n={n})")
    if all(s.ci_low is not None for _, s in curve):
        ax.fill_between(x, [s.ci_low for _, s in curve], [s.ci_high for _, s in curve], color=line.get_color(),
                        alpha=0.2)  # fmt: skip
    return True


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> list[ReportFigure]:
    """Per stage: the kind's epoch metric per arm against the epoch."""
    data = with_arms(trials, epochs)
    out = []
    for stage, group in _by_stage(trials, data):
        kind = group["kind"].iloc[0]
        metric = STAGE_KINDS.get(kind).epoch_metric if kind in STAGE_KINDS else None
        if not metric or metric not in group:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn = [_band(ax, arm, metric, label) for label, arm in group.groupby("arm_label", sort=False)]
        if not any(drawn):
            plt.close(fig)
            continue
        ax.set(xlabel="epoch", ylabel=metric, title=f"{stage}: {metric} per arm")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append(ReportFigure("Learning curves", f"{stage}: {metric}",
                                "Mean over the arm's replicates, counted as in the tables (the retrains of one "
                                "searched architecture are one); the band is their 95% t interval (n >= 3 only).",
                                _save(fig, folder, f"curves-{_safe(stage)}")))  # fmt: skip
    return out


def _trial_costs(trials: pd.DataFrame) -> pd.Series:
    """Each trial's cost in seconds including the search its architecture came from: GPU seconds where
    any trial held a GPU, else wall seconds."""
    column = "gpu_seconds" if "gpu_seconds" in trials and pd.to_numeric(trials["gpu_seconds"]).fillna(0).gt(0).any() \
        else "wall_seconds"  # fmt: skip
    own = pd.to_numeric(trials[column], errors="coerce").fillna(0.0) if column in trials else pd.Series(0.0, index=trials.index)
    by_id = dict(zip(trials["trial_id"], own))
    parents = trials["lineage_trial_id"] if "lineage_trial_id" in trials else pd.Series(None, index=trials.index)
    total = [o + (by_id.get(p, 0.0) if isinstance(p, str) else 0.0) for o, p in zip(own, parents)]
    return pd.Series(total, index=trials.index, name=column)


def error_vs_cost(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> list[ReportFigure]:
    """Per stage with a headline test metric: test error against parameters and against cost."""
    out = []
    done = trials[trials["status"] == "finished"]
    costs = _trial_costs(trials)
    for stage, group in _by_stage(trials, done):
        kind = group["stage_kind"].iloc[0]
        headline = STAGE_KINDS.get(kind).headline_metric if kind in STAGE_KINDS else None
        if not headline or headline not in group:
            continue
        error = 1.0 - pd.to_numeric(group[headline], errors="coerce")
        axes_data = [("parameters", pd.to_numeric(group.get("params"), errors="coerce"), True),
                     (f"cost ({costs.name.replace('_', ' ')}, own + search)", costs[group.index], False)]  # fmt: skip
        axes_data = [a for a in axes_data if a[1] is not None and a[1].notna().any()]
        if not axes_data or error.isna().all():
            continue
        fig, axs = plt.subplots(1, len(axes_data), figsize=(5.2 * len(axes_data), 4.2), squeeze=False,
                                layout="constrained")  # fmt: skip
        labels = arm_labels(group)
        for ax, (name, x, log) in zip(axs[0], axes_data):
            for label in dict.fromkeys(labels):
                mask = labels == label
                ax.scatter(x[mask], error[mask], s=22, label=label)
            front = pareto_front(list(x.astype(float)), list(error.astype(float)))
            if front:
                ax.step(x.iloc[front], error.iloc[front], where="post", color="black", linewidth=1)
                ax.scatter(x.iloc[front], error.iloc[front], s=90, facecolors="none", edgecolors="black",
                           label="Pareto front")  # fmt: skip
            if log and (x > 0).all():
                ax.set_xscale("log")
            ax.set(xlabel=name, ylabel=f"test error (1 - {headline.split('.', 1)[1]})")
            ax.grid(alpha=0.3)
        handles, names = axs[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize=7)
        fig.suptitle(f"{stage}: test error against size and cost")
        out.append(ReportFigure("Error against size and cost", stage,
                                "One point per trial; the black steps are the Pareto front (lower left is better).",
                                _save(fig, folder, f"pareto-{_safe(stage)}")))  # fmt: skip
    return out


def collapse_telemetry(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> list[ReportFigure]:
    """Per search stage: the collapse signals the search records every epoch, per arm."""
    data = with_arms(trials, epochs)
    out = []
    for stage, group in _by_stage(trials, data):
        present = [m for m in TELEMETRY if m in group and pd.to_numeric(group[m], errors="coerce").notna().any()]
        if not present:
            continue
        fig, axs = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.8), squeeze=False,
                                layout="constrained")  # fmt: skip
        for ax, metric in zip(axs[0], present):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for label, arm in group.groupby("arm_label", sort=False):
                _band(ax, arm, metric, label)
            ax.set(xlabel="epoch", title=TELEMETRY[metric])
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
        handles, names = axs[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize=7)
        fig.suptitle(f"{stage}: search-collapse telemetry")
        out.append(ReportFigure("Search-collapse telemetry", stage,
                                "Entropy falling to 0 means the search has decided; a rising parameter-free share "
                                "is the DARTS collapse towards skips and pools.",
                                _save(fig, folder, f"telemetry-{_safe(stage)}")))  # fmt: skip
    return out


def _heatmap(ax: Any, matrix: np.ndarray, rows: list[str], cols: list[str], title: str) -> None:
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=8)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def architecture_weights(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> list[ReportFigure]:
    """The last epoch's architecture weights of each search (up to MAX_HEATMAPS)."""
    if "arch_weights" not in epochs:
        return []
    last = epochs.dropna(subset=["arch_weights"]).sort_values("epoch").groupby("trial_id").tail(1)
    done = trials[trials["status"] == "finished"].set_index("trial_id")
    labels = dict(zip(done.index, arm_labels(done.reset_index())))
    out = []
    for _, row in last[last["trial_id"].isin(done.index)].head(MAX_HEATMAPS).iterrows():
        weights = json.loads(row["arch_weights"])
        name = f"{row['stage']}: {labels[row['trial_id']]}, seed {done.loc[row['trial_id'], 'seed']}"
        if "normal" in weights:  # a cell search: edges x ops per cell
            fig, axs = plt.subplots(1, 2, figsize=(9.5, 4.0), layout="constrained")
            for ax, cell in zip(axs, ("normal", "reduce")):
                matrix = np.asarray(weights[cell], dtype=float)
                _heatmap(ax, matrix, [f"edge {i}" for i in range(len(matrix))], weights["ops"], f"{cell} cell")
            caption = "Softmaxed weight of each op on each edge after the last epoch; the genotype keeps the top 2 edges per node."
        else:  # the HyperCuboid: per (stride, layer) group, C_in -> C_out x op
            w = np.asarray(weights["weights"], dtype=float)  # [2, L, n_C, n_C, n_ops]
            channels, ops = weights["channels"], weights["ops"]
            rows = [f"layer {layer} {'reduce' if s else 'keep'}" for layer in range(w.shape[1]) for s in range(2)]
            matrix = w.transpose(1, 0, 2, 3, 4).reshape(len(rows), -1)
            cols = [f"{a}->{b} {op}" for a in channels for b in channels for op in ops]
            fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(cols)), 0.45 * len(rows) + 1.6), layout="constrained")
            _heatmap(ax, matrix, rows, cols, "path weights per stage group")
            caption = "Weight of each (input width -> output width, op) choice per stage; each row sums to 1."
        fig.suptitle(name, fontsize=9)
        out.append(ReportFigure("Architecture weights", name, caption,
                                _save(fig, folder, f"weights-{_safe(row['trial_id'])}")))  # fmt: skip
    return out


def best_architectures(trials: pd.DataFrame, epochs: pd.DataFrame, folder: Path) -> list[ReportFigure]:
    """A drawing of the best genotype or path of each arm (by the stage's selection metric)."""
    done = trials[trials["status"] == "finished"].assign(arm_label=lambda t: arm_labels(t))
    out = []
    for (stage, label), group in done.groupby(["stage", "arm_label"], sort=False):
        kind = group["stage_kind"].iloc[0]
        select = STAGE_KINDS.get(kind).select_metric if kind in STAGE_KINDS else None
        if not select or select not in group or pd.to_numeric(group[select], errors="coerce").isna().all():
            continue
        best = group.loc[pd.to_numeric(group[select], errors="coerce").idxmax()]
        arch = next((best.get(c) for c in ("genotype_json", "path_json") if isinstance(best.get(c), str)), None)
        if arch is None:
            continue
        path = draw(json.loads(arch), folder / f"arch-{_safe(str(best['trial_id']))}.png",
                    title=f"{stage}: {label} (best of {len(group)}, {select} {float(best[select]):.4f})")  # fmt: skip
        out.append(ReportFigure("Best architecture per arm", f"{stage}: {label}",
                                "The genotype or path of the arm's best trial by the stage's selection metric.", path))
    return out


FIGURES: tuple[Callable[[pd.DataFrame, pd.DataFrame, Path], list[ReportFigure]], ...] = (
    learning_curves, error_vs_cost, collapse_telemetry, architecture_weights, best_architectures,
)


def render_figures(trials: pd.DataFrame, epochs: pd.DataFrame, folder: str | Path) -> list[ReportFigure]:
    """Draws every figure the store has data for into ``folder`` (PNG files); returns them in page order."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    if trials.empty:
        return []
    epochs = epochs if not epochs.empty else pd.DataFrame(columns=["trial_id", "stage", "epoch"])
    return [figure for make in FIGURES for figure in make(trials, epochs, target)]
