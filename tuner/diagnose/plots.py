"""The diagnostics' figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib  # pyplot's backend must be chosen before pyplot is first imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend: no GUI on a headless node

    return plt


def plot_lr_range(report, path: Path) -> Path:
    """Loss vs learning rate (log scale): the sweep, its smoothing, the marks, the halving attempts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    test = report.range_test
    if test is not None:
        ax.plot(test.lrs, test.losses, color="0.75", linewidth=1, label="loss per step")
        ax.plot(test.lrs, test.smoothed, color="C0", linewidth=2, label="smoothed loss")
        ax.axvspan(test.suggested_low, test.suggested_high, color="C2", alpha=0.15,
                   label=f"suggested range {test.suggested_low:.3g} .. {test.suggested_high:.3g}")
        ax.axvline(test.lr_min_loss, color="C2", linestyle="--", label=f"lowest loss {test.lr_min_loss:.3g}")
        ax.axvline(test.lr_steepest, color="C1", linestyle=":", label=f"steepest {test.lr_steepest:.3g}")
        if test.lr_diverged is not None:
            ax.axvline(test.lr_diverged, color="C3", linestyle="--", label=f"diverged {test.lr_diverged:.3g}")
        finite = [v for v in test.smoothed if math.isfinite(v)]
        if report.halving is not None:
            finite += [a.epoch_losses[-1] for a in report.halving.attempts if math.isfinite(a.epoch_losses[-1])]
        if finite:
            ax.set_ylim(min(finite) * 0.9, max(test.smoothed[0], min(finite)) * 1.6)
    halving = report.halving
    if halving is not None:
        for attempt in halving.attempts:
            last = attempt.epoch_losses[-1]
            value = last if math.isfinite(last) else (ax.get_ylim()[1] if test is not None else 0)
            ax.scatter([attempt.lr], [value], marker="o" if attempt.converged else "x",
                       color="C4" if attempt.converged else "C3", zorder=3)
        ax.scatter([], [], marker="o", color="C4", label="halving: converged (last-epoch loss)")
        ax.scatter([], [], marker="x", color="C3", label="halving: did not converge")
        ax.axhline(halving.target_loss, color="C4", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"learning rate (per step, batch size {report.batch_size})")
    ax.set_ylabel("training loss")
    config = report.config
    ax.set_title(f"lr range: {config['arch']} w{config['width']:g} {config['optimizer']}, "
                 f"{report.samples} images")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_overfit(result, path: Path) -> Path:
    """Training loss and accuracy per epoch on the fixed subset, with the target accuracy."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    steps = [h["step"] for h in result.history]
    left.plot(steps, [h["loss"] for h in result.history], marker=".")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.set_yscale("log")
    right.plot(steps, [h["accuracy"] for h in result.history], marker=".", color="C1")
    right.axhline(result.target_accuracy, color="C2", linestyle="--",
                  label=f"target {result.target_accuracy:.2f}")
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("training accuracy")
    right.legend(loc="lower right")
    verdict = "PASSED" if result.passed else "FAILED"
    fig.suptitle(f"overfit {result.samples} images: {verdict} ({result.label})")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
