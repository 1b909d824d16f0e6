"""index.html of a search report: one self-contained file.

Figures are embedded as base64 ``data:`` URIs and the style is inline: no script, no stylesheet or
font to fetch, so the page opens the same offline, from a file:// URL, or in MLflow's artifact
viewer. Every text that comes from MLflow (trial ids, statuses, params) is escaped.
"""

from __future__ import annotations

import base64
from collections import Counter
from html import escape
from pathlib import Path
from typing import Optional

from trainables.status import EARLY_STOPPED, RUNNING
from tuner.report.build import Report
from tuner.report.data import end_reason

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; } p.note { color: #a40; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
"""


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _figure(path: Optional[Path], alt: str) -> str:
    if path is None:
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'


def _section(title: str, text: str, figure: str = "", *, note: bool = False) -> str:
    """``text`` is HTML already (its MLflow parts escaped); a note is what could not be shown."""
    paragraph = f'<p class="note">{text}</p>' if note else f"<p>{text}</p>"
    return f"<section><h2>{escape(title)}</h2>\n{paragraph}\n{figure}</section>\n"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _summary(report: Report) -> str:
    trials = report.data.trials
    counts = Counter(t.status for t in trials)
    listing = ", ".join(f"{n} {escape(status)}" for status, n in sorted(counts.items()))
    text = f"<p>{len(trials)} trials: {listing}.</p>" if trials else ""
    if not any(t.status != RUNNING for t in trials):
        nothing = "" if report.reported else ": no epoch to plot"
        text += _note(f"No trial of this search has finished yet{nothing}.")
    return text


def progress_text(report: Report) -> str:
    points, metric = report.progress, escape(report.data.metric)
    if not points:
        return "No epoch reported yet."
    best = points[-1].best
    first = next(p for p in points if p.best == best)
    return (f"Best {metric} {best:.4f}, first reached {first.time_s:.0f} s after the search started, "
            f"after {first.epochs} of the {points[-1].epochs} epochs that all trials together "
            f"trained (the last at {points[-1].time_s:.0f} s).")


def curves_text(report: Report) -> str:
    data = report.data
    stopped = sum(t.status == EARLY_STOPPED for t in data.trials)
    if data.rungs:
        rungs = ", ".join(f"{r:g}" for r in data.rungs)
        scheduler = f"ASHA's rungs (dashed) at epochs {rungs} of {data.epochs}"
    else:
        scheduler = f"scheduler {escape(data.scheduler)}: no rungs to draw"
    return (f"{escape(data.metric)} per epoch of {len(data.trials)} trials; {scheduler}; "
            f"{stopped} trials stopped by the scheduler, marked x where they stopped.")


def parallel_text(report: Report) -> str:
    data = report.data
    scored = [t.best for t in data.trials if t.best is not None]
    logs = ", ".join(escape(a.name) for a in data.axes if a.log) or "none"
    spread = f"from {min(scored):.4f} to {max(scored):.4f}" if scored else "none scored yet"
    return (f"Each line is a trial, coloured by its best {escape(data.metric)} ({spread}); "
            f"log axes: {logs}; choices evenly spaced; a gap is a param the trial did not sample.")


def importance_text(report: Report) -> str:
    imp = report.importance
    if not imp.values:
        return escape(imp.note)
    shares = ", ".join(f"{escape(p)} {v:.2f}" for p, v in imp.values.items())
    return (f"PED-ANOVA (Optuna) over the {imp.complete} trials that ran all their epochs; the "
            f"{imp.pruned} stopped by the scheduler are left out, their values being from fewer "
            f"epochs. Shares: {shares}.")


def slices_text(report: Report) -> str:
    why = "the most important params" if report.importance.values else \
        "the searched params (no importances yet)"
    return (f"Best {escape(report.data.metric)} of each trial against its value of "
            f"{', '.join(escape(p) for p in report.slices)}: {why}; colour = how the trial ended.")


def timeline_text(report: Report) -> str:
    line = report.timeline
    if not line.bars:
        return "No trial has started yet."
    idle = "-" if line.idle_fraction is None else f"{line.idle_fraction:.1%}"
    used = "-" if line.utilisation is None else f"{line.utilisation:.1%}"
    return (f"{len(line.bars)} trials on {line.slots} worker slots (max_concurrent "
            f"{report.data.max_concurrent}) over {line.span_s:.0f} s; idle {idle} of the slot time "
            f"(1 - trial time / (slots x span)); {used} of it in the trials' epochs, training and "
            f"validation (slot utilisation: sum of epoch_time_s / (slots x span)).")


def leaderboard_table(report: Report) -> str:
    data = report.data
    trials = {t.run_id: t for t in data.trials}
    names = data.board.param_names
    head = ["#", "trial", "status", "ended", f"best {data.metric}", "last val_acc",
            "last val_loss", "epochs", *names]
    rows = []
    for e in data.board.entries:
        cells = [str(e.rank), e.trial, e.status, end_reason(trials[e.run_id]) if e.run_id in trials
                 else e.status, _num(e.best), _num(e.val_acc), _num(e.val_loss), str(e.epochs),
                 *(e.params.get(k, "") for k in names)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>\n{header}\n" + "\n".join(rows) + "\n</table>\n"


def render_page(report: Report, figures: dict[str, Path]) -> str:
    """The page; ``figures`` maps a section ("progress", "curves", …) to its PNG (absent: none)."""
    sections = [
        _section("Best so far", progress_text(report), _figure(figures.get("progress"), "best so far")),
        _section("Learning curves", curves_text(report), _figure(figures.get("curves"), "curves")),
        _section("Parallel coordinates", parallel_text(report),
                 _figure(figures.get("parallel"), "parallel coordinates")),
        _section("Hyper-parameter importance", importance_text(report),
                 _figure(figures.get("importance"), "importance"), note=not report.importance.values),
        _section("Slices", slices_text(report), _figure(figures.get("slices"), "slices")),
        _section("Timeline", timeline_text(report), _figure(figures.get("timeline"), "timeline")),
        _section("Leaderboard", f"Ranked by best {escape(report.data.metric)} ({report.data.mode}).",
                 leaderboard_table(report)),
    ]
    title = escape(f"search {report.data.search}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n{_summary(report)}\n"
            + "".join(sections) + "</body></html>\n")
