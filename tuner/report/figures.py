"""The report's figures: matplotlib PNGs, drawn on the Agg canvas (no display, no GUI toolkit).

Static PNGs, not plotly: embedded in index.html as base64 ``data:`` URIs they make one file that opens
offline, with no JavaScript and nothing fetched, and the same PNGs, logged beside it, open directly
in MLflow's artifact viewer. Figures are built with ``matplotlib.figure.Figure``, never pyplot: no
global backend switch or figure registry in the process that called (a search's driver, say).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from trainables.status import COMPLETED, CONVERGED, DIVERGED, EARLY_STOPPED, FAILED, RUNNING
from tuner.report.analysis import ProgressPoint, Timeline
from tuner.report.data import Axis, SearchData, TrialData
from tuner.report.importance import Importance

STATUS_COLORS = {
    COMPLETED: "tab:blue", CONVERGED: "tab:cyan", EARLY_STOPPED: "tab:orange",
    DIVERGED: "tab:red", FAILED: "tab:gray", RUNNING: "tab:green",
}
DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def _status_legend(ax, statuses, **where) -> None:
    handles = [Line2D([], [], color=STATUS_COLORS.get(s, "black"), linewidth=6, label=s)
               for s in STATUS_COLORS if s in set(statuses)]
    ax.legend(handles=handles, fontsize=8, **(where or {"loc": "best"}))


def draw_progress(points: list[ProgressPoint], metric: str, path: Path) -> Path:
    """Best-so-far against wall time and against epochs consumed, every epoch's value in grey."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    for ax, x, label in zip(fig.subplots(1, 2), ("time_s", "epochs"),
                            ("wall time since the search started (s)", "epochs consumed (all trials)")):
        xs = [getattr(p, x) for p in points]
        ax.scatter(xs, [p.value for p in points], color="0.7", s=12, label="an epoch's value")
        ax.step(xs, [p.best for p in points], where="post", color="C0", linewidth=2,
                label=f"best {metric} so far")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def draw_curves(data: SearchData, path: Path) -> Path:
    """Every trial's metric per epoch, coloured by how it ended; the scheduler's rungs as dashed
    lines, and an x where the scheduler stopped a trial (its last epoch)."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    for rung in data.rungs:
        ax.axvline(rung, color="0.5", linestyle="--", linewidth=1)
        ax.annotate(f"rung {rung:g}", (rung, 1), xycoords=("data", "axes fraction"), fontsize=8,
                    ha="left", va="top", xytext=(3, -3), textcoords="offset points")
    for trial in data.trials:
        color = STATUS_COLORS.get(trial.status, "black")
        ax.plot([p.epoch for p in trial.curve], [p.value for p in trial.curve], color=color,
                marker=".", alpha=0.8)
        if trial.status == EARLY_STOPPED and trial.curve:
            ax.scatter([trial.curve[-1].epoch], [trial.curve[-1].value], marker="x", s=80,
                       color=color, zorder=3)
    _status_legend(ax, [t.status for t in data.trials])
    ax.set_xlim(0.5, data.epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(data.metric)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def axis_position(axis: Axis, text: Optional[str]) -> float:
    """Where a param's value sits on its axis, 0..1 (NaN when the trial never sampled it)."""
    if text is None:
        return math.nan
    if axis.categorical:
        index = axis.choices.index(text) if text in axis.choices else math.nan
        return 0.5 if len(axis.choices) == 1 else index / (len(axis.choices) - 1)
    scale = math.log10 if axis.log else float
    low, high = scale(axis.low), scale(axis.high)
    return 0.5 if high == low else (scale(float(text)) - low) / (high - low)


def axis_ticks(axis: Axis) -> list[tuple[float, str]]:
    """(position, label) of an axis: a categorical's options evenly spaced, a numeric range's
    bounds and three values between them (geometric on a log axis)."""
    if axis.categorical:
        return [(axis_position(axis, c), c) for c in axis.choices]
    space = np.geomspace if axis.log else np.linspace
    return [(axis_position(axis, str(v)), f"{v:.3g}") for v in space(axis.low, axis.high, 5)]


def draw_parallel(data: SearchData, path: Path) -> Path:
    """Parallel coordinates of the searched params, each trial a line coloured by its best metric
    (better is brighter); a conditional param a trial never sampled leaves a gap."""
    fig = Figure(figsize=(max(6, 2.2 * len(data.axes)), 5), layout="constrained")
    ax = fig.subplots()
    scored = [t.best for t in data.trials if t.best is not None]
    norm = Normalize(min(scored, default=0), max(scored, default=1))
    cmap = colormaps["viridis" if data.mode == "max" else "viridis_r"]
    xs = range(len(data.axes))
    for trial in sorted(data.trials, key=lambda t: _drawing_order(t, data.mode)):
        ys = [axis_position(a, trial.params.get(a.name)) for a in data.axes]
        color = cmap(norm(trial.best)) if trial.best is not None else "0.75"
        ax.plot(xs, ys, color=color, marker="o", linewidth=1.5, alpha=0.9)
    for x, axis in zip(xs, data.axes):
        ax.axvline(x, color="black", linewidth=1)
        for y, label in axis_ticks(axis):
            ax.text(x, y, f" {label}", fontsize=8, va="center", ha="left")
    ax.set_xticks(list(xs), [f"{a.name}{' (log)' if a.log else ''}" for a in data.axes])
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(data.axes) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"best {data.metric}")
    return _save(fig, path)


def _drawing_order(trial: TrialData, mode: str) -> tuple:
    """Unscored trials first and the best last, so that the best lines are on top."""
    if trial.best is None:
        return (0, 0.0)
    return (1, trial.best if mode == "max" else -trial.best)


def draw_importance(importance: Importance, path: Path) -> Path:
    names = list(importance.values)[::-1]  # most important on top
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importance.values[n] for n in names], color="C0")
    ax.set_xlabel("importance (PED-ANOVA, share of 1)")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def draw_slices(data: SearchData, names: list[str], path: Path) -> Path:
    """A trial's best metric against each param's value: where in its range the good trials are."""
    axes = [a for a in data.axes if a.name in names]
    fig = Figure(figsize=(4 * len(axes), 3.8), layout="constrained")
    for ax, axis in zip(np.atleast_1d(fig.subplots(1, len(axes), sharey=True)), axes):
        shown = [t for t in data.trials if t.best is not None and axis.name in t.params]
        ax.scatter([_slice_x(axis, t.params[axis.name]) for t in shown], [t.best for t in shown],
                   c=[STATUS_COLORS.get(t.status, "black") for t in shown], s=40)
        if axis.categorical:
            ax.set_xticks(range(len(axis.choices)), axis.choices)
            ax.set_xlim(-0.5, len(axis.choices) - 0.5)
        elif axis.log:
            ax.set_xscale("log")
        ax.set_xlabel(axis.name)
        ax.grid(True, alpha=0.3)
    fig.axes[0].set_ylabel(f"best {data.metric}")
    _status_legend(fig.axes[0], [t.status for t in data.trials])
    return _save(fig, path)


def _slice_x(axis: Axis, text: str) -> float:
    return axis.choices.index(text) if axis.categorical else float(text)


def draw_timeline(line: Timeline, path: Path) -> Path:
    """One row per worker slot, one bar per trial coloured by status; the idle share in the title."""
    fig = Figure(figsize=(11, 1.2 + 0.6 * line.slots), layout="constrained")
    ax = fig.subplots()
    for bar in line.bars:
        ax.broken_barh([(bar.start_s, max(bar.end_s - bar.start_s, line.span_s / 500))],
                       (bar.slot - 0.4, 0.8), color=STATUS_COLORS.get(bar.status, "black"),
                       edgecolor="white")
    ax.set_yticks(range(line.slots), [f"slot {s + 1}" for s in range(line.slots)])
    ax.invert_yaxis()
    ax.set_xlabel("wall time since the search started (s)")
    idle = "-" if line.idle_fraction is None else f"{line.idle_fraction:.0%}"
    ax.set_title(f"{len(line.bars)} trials on {line.slots} worker slot(s); idle {idle} of slot time")
    _status_legend(ax, [b.status for b in line.bars], loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)
