"""A trial's evaluation artifacts: the journal's per-class errors, confusion and error gallery.

Written into ``<checkpoint dir>/artifacts/`` (see ``trainables.runner``). Every checkpoint carries the
cheap ones (``config.json``, ``summary.json``, ``per_class.csv``, ``confusion.csv``), so a trial that
the scheduler stops early still leaves them; the figures (``confusion.png``, ``mistakes.png``) are
drawn once, with the trial's last report. Figures use matplotlib's Agg canvas directly (no pyplot, so
no global backend is switched in the process that imports us).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

from trainables import csvsafe
from trainables.data import load_rgb_image
from trainables.engine import EvalStats

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
GALLERY_SIZE = 36  # misclassified validation images in mistakes.png (6 x 6)
GALLERY_PIXELS = 96  # each thumbnail's longer side, pixels
LABELLED_CLASSES = 40  # above this many classes the confusion plot has no tick labels


def write_tables(directory: Path, *, config: dict, summary: dict, class_names: Sequence[str],
                 stats: EvalStats) -> Path:
    """config.json (the resolved TrialConfig), summary.json, per_class.csv and confusion.csv."""
    out = Path(directory) / ARTIFACTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    confusion = stats.confusion.tolist()
    with open(out / "per_class.csv", "w", newline="") as handle:
        writer = csvsafe.writer(handle)  # class names are folder names: untrusted
        writer.writerow(["class", "index", "images", "correct", "accuracy"])
        for index, name in enumerate(class_names):
            images, correct = sum(confusion[index]), confusion[index][index]
            accuracy = f"{correct / images:.6f}" if images else ""
            writer.writerow([name, index, images, correct, accuracy])
    with open(out / "confusion.csv", "w", newline="") as handle:
        writer = csvsafe.writer(handle)  # class names are folder names: untrusted
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion):
            writer.writerow([name, *row])
    return out


def write_figures(directory: Path, *, class_names: Sequence[str], stats: EvalStats,
                  val_paths: Sequence[str]) -> None:
    """confusion.png and mistakes.png; a figure that fails is logged, never a failed trial."""
    out = Path(directory) / ARTIFACTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in (("confusion.png", lambda: confusion_figure(stats, class_names)),
                       ("mistakes.png", lambda: mistakes_figure(stats, class_names, val_paths))):
        try:
            figure = draw()
            if figure is not None:
                figure.savefig(out / name, dpi=100)
        except Exception as err:  # a plotting problem must not cost the trial its result
            log.warning("could not draw %s: %s: %s", name, type(err).__name__, err)


def confusion_figure(stats: EvalStats, class_names: Sequence[str]):
    counts = stats.confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)  # each row: where class i went
    n = len(class_names)
    side = min(max(4.0, 0.35 * n + 2), 30.0)  # inches: readable labels up to ~40 classes
    figure = Figure(figsize=(side + 1, side))
    axes = figure.add_subplot()
    image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="fraction of the true class")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    acc = stats.accuracy
    axes.set_title(f"confusion (val_acc {acc:.3f}, {stats.images} images)")
    if n <= LABELLED_CLASSES:
        axes.set_xticks(range(n), [str(c) for c in class_names], rotation=90, fontsize=7)
        axes.set_yticks(range(n), [str(c) for c in class_names], fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                value = int(counts[i, j])
                if value:
                    axes.text(j, i, str(value), ha="center", va="center", fontsize=7,
                              color="white" if rates[i, j] > 0.5 else "black")
    figure.tight_layout()
    return figure


def mistakes_figure(stats: EvalStats, class_names: Sequence[str], val_paths: Sequence[str]):
    """The error gallery: misclassified validation images, each captioned true / predicted.

    One mosaic in one axes (36 sub-axes take seconds to lay out; this takes a fraction of one).
    """
    shown = stats.mistakes[:GALLERY_SIZE]
    columns = 6
    rows = max(1, math.ceil(len(shown) / columns))
    cell, caption = GALLERY_PIXELS, 28  # pixels: thumbnail square, caption band above it
    canvas = np.full((rows * (cell + caption), columns * cell, 3), 255, dtype=np.uint8)
    figure = Figure(figsize=(columns * cell / 72, rows * (cell + caption) / 72), dpi=72)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    if not shown:
        axes.text(0.5, 0.5, "no misclassified validation image", ha="center", va="center")
        return figure
    for slot, (index, true, predicted) in enumerate(shown):
        top, left = (slot // columns) * (cell + caption) + caption, (slot % columns) * cell
        try:
            image = load_rgb_image(val_paths[index])
            scale = (cell - 4) / max(image.size)  # small images are enlarged, big ones shrunk
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            pixels = np.asarray(image)
            y, x = top + (cell - pixels.shape[0]) // 2, left + (cell - pixels.shape[1]) // 2
            canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        except Exception:  # the file changed since evaluation: keep the caption
            pass
        axes.text(left + cell / 2, top - 2, f"true {class_names[true]}\npred {class_names[predicted]}",
                  ha="center", va="bottom", fontsize=7, color="darkred")
    axes.imshow(canvas, interpolation="nearest")
    axes.set_xlim(0, canvas.shape[1])
    axes.set_ylim(canvas.shape[0], 0)
    return figure
