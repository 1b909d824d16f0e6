"""The console of a running search: one screen to watch, instead of Ray's boxes.

Ray Tune's own output prints a boxed config and a boxed result for every trial and a status table
every 30 s (hundreds of lines for the 8-trial demo), and what a trial logs stays in its worker's log
(``log_to_driver=False``). ``SearchConsole``, a Ray Tune callback on the driver, prints instead:

- on a terminal, a rich Live view redrawn in place: counts by status, trials to go, elapsed time and
  time budget left, the best trial so far, one line per running trial (epoch, metric, best so far,
  images/s, searched params);
- one persistent line when a trial ends (its status and why), when a failed trial is retried, and
  once per distinct warning the trials report (``trainables.trial.WARNINGS_KEY``);
- when stdout is not a terminal (CI, a pipe, ``make demo > log``): only those persistent lines and a
  closing count, no redraws, so that a log stays short.

``tuner status`` renders the same ``SearchView`` from MLflow and the Optuna study (``status.py``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from trainables.status import (
    COMPLETED, CONVERGED, DIVERGED, EARLY_STOPPED, FAILED, RUNNING, TRIAL_STATUSES,
)
from trainables.trial import WARNINGS_KEY
from tuner.spec.model import SearchSpec
from tuner.terminal import printable
from tuner.tracking.callback import trial_status

PENDING = "pending"  # created by the searcher, waiting for resources (not a tuner.status value)
ENDED = TRIAL_STATUSES[1:]
STATUS_ORDER = (RUNNING, PENDING, *ENDED)
REDRAW_S = 0.5  # the Live view's refresh: Ray calls on_step_begin far more often


@dataclass
class TrialRow:
    """One trial as the console shows it."""

    trial_id: str
    status: str  # STATUS_ORDER
    params: dict[str, Any]  # the searched ones
    epochs: int  # the trial's budget of epochs
    epoch: int = 0  # the last one reported
    value: Optional[float] = None  # the search metric at that epoch
    best: Optional[float] = None  # the best value of the metric so far
    images_per_s: Optional[float] = None


@dataclass
class SearchView:
    """What the live view and ``tuner status`` show about a search."""

    name: str
    metric: str
    mode: str
    budget: int  # trials the search runs in all
    elapsed_s: float
    time_budget_s: Optional[float] = None
    finished: bool = False
    trials: list[TrialRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counted = Counter(t.status for t in self.trials)
        return {status: counted[status] for status in STATUS_ORDER if counted[status]}

    def best(self) -> Optional[TrialRow]:
        scored = [t for t in self.trials if t.best is not None and math.isfinite(t.best)]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda t: t.best)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def header_line(view: SearchView) -> str:
    counts = view.counts()
    ended = sum(n for status, n in counts.items() if status in ENDED)
    parts = [
        f"search {view.name}{' (finished)' if view.finished else ''}: "
        + (", ".join(f"{n} {status}" for status, n in counts.items()) or "no trial yet"),
        f"{max(view.budget - ended, 0)} of {view.budget} trials to go",
        f"{duration(view.elapsed_s)} elapsed",
    ]
    if view.time_budget_s and not view.finished:
        parts.append(f"{duration(max(view.time_budget_s - view.elapsed_s, 0))} of the time budget left")
    return "; ".join(parts)


def best_line(view: SearchView) -> str:
    best = view.best()
    if best is None:
        return f"best {view.metric}: none yet"
    return f"best {view.metric}: {best.best:.4f} (trial {best.trial_id}: {params_text(best.params)})"


def trial_line(row: TrialRow, metric: str) -> str:
    """A running trial: its progress first, so that a narrow terminal cuts the params."""
    parts = [f"  {row.trial_id}", f"epoch {row.epoch}/{row.epochs}"]
    if row.value is not None:
        parts.append(f"{metric} {row.value:.4f}")
    if row.best is not None:
        parts.append(f"best {row.best:.4f}")
    if row.images_per_s:
        parts.append(f"{row.images_per_s:,.0f} img/s")
    return "  ".join([*parts, params_text(row.params)])


def summary_lines(view: SearchView) -> list[str]:
    """The live view's lines: what ``tuner status`` prints too."""
    running = [trial_line(t, view.metric) for t in view.trials if t.status == RUNNING]
    return [header_line(view), best_line(view), *running]


def end_reason(row: TrialRow, *, stopped_by: str = "", error: str = "") -> str:
    """Why a trial ended, in the words of its status (``trainables.status``)."""
    at = f"at epoch {row.epoch}/{row.epochs}" if row.epoch else "before its first epoch"
    return {
        COMPLETED: f"after all {row.epochs} epochs",
        EARLY_STOPPED: f"{at} by {stopped_by}",
        CONVERGED: f"{at}: its learning rate fell below min_lr",
        DIVERGED: f"{at}: its training loss became NaN or infinite",
        FAILED: f"{at}: {error}",
    }[row.status]


def end_line(row: TrialRow, metric: str, *, stopped_by: str = "", error: str = "") -> str:
    line = f"trial {row.trial_id} {row.status} {end_reason(row, stopped_by=stopped_by, error=error)}"
    if row.status == FAILED:
        return line
    best = f"best {metric} {row.best:.4f}" if row.best is not None else f"no {metric}"
    return f"{line}: {best} ({params_text(row.params)})"


def trial_error(trial) -> tuple[str, Optional[str]]:
    """A failed trial's error in one line (the exception: the traceback's last line) and the file
    that holds the whole of it, which Ray writes before it calls on_trial_error/on_trial_recover."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "no error file (see the Ray logs)", None
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "empty error file"), path


def _text(line: str) -> Text:
    """Plain text (no rich markup: a param value is anyone's text), one line whatever the width."""
    return Text(printable(line), no_wrap=True, overflow="ellipsis")


def render(view: SearchView) -> Group:
    return Group(*(_text(line) for line in summary_lines(view)))


class SearchConsole(Callback):
    """Ray Tune callback that draws the live view and prints the persistent lines (module doc)."""

    def __init__(self, spec: SearchSpec, *, budget: int, console: Optional[Console] = None) -> None:
        self.name, self.metric, self.mode = spec.name, spec.metric, spec.mode
        self.epochs, self.budget, self.time_budget_s = spec.epochs, budget, spec.budget.time_budget_s
        self.param_names = [p.name for p in spec.space]
        self.scheduler, self.max_failures = spec.scheduler.name, spec.budget.max_failures
        self.console = console or Console()
        self._live: Optional[Live] = None
        self._started = time.monotonic()
        self._drawn = 0.0
        self._warned: set[str] = set()

    # Ray pickles callbacks with the experiment (tuner.pkl): a console and its terminal stay out.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "console": None, "_live": None, "_warned": set()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, console=Console())

    def setup(self, **info) -> None:
        self._started = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.start()

    def close(self) -> None:
        """Stops the Live view: on the search's end, or when the driver is interrupted."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def view(self, trials, *, finished: bool = False) -> SearchView:
        return SearchView(self.name, self.metric, self.mode, self.budget,
                          time.monotonic() - self._started, self.time_budget_s, finished,
                          [self.row(t) for t in trials])

    def row(self, trial, status: Optional[str] = None) -> TrialRow:
        result = trial.last_result or {}
        config = trial.config or {}
        best = (trial.metric_analysis.get(self.metric) or {}).get(self.mode)
        return TrialRow(
            trial.trial_id, status or _status(trial),
            {k: config[k] for k in self.param_names if k in config},
            int(config.get("epochs", self.epochs)), int(result.get("epoch", 0)),
            _number(result.get(self.metric)), _number(best), _number(result.get("images_per_s")),
        )

    def print(self, line: str) -> None:
        """A persistent line: above the Live view on a terminal, the whole of it in a log."""
        self.console.print(_text(line), soft_wrap=True)

    def _redraw(self, trials, *, now: bool = False) -> None:
        if self._live is None or (not now and time.monotonic() - self._drawn < REDRAW_S):
            return
        self._live.update(render(self.view(trials)), refresh=True)
        self._drawn = time.monotonic()

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._redraw(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for message in result.get(WARNINGS_KEY) or ():
            if message not in self._warned:
                self._warned.add(message)
                self.print(f"warning from trial {trial.trial_id}: {message}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self.row(trial, trial_status(trial.last_result, errored=False))
        self.print(end_line(row, self.metric, stopped_by=self._stopped_by()))
        self._redraw(trials, now=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error, path = trial_error(trial)
        if path:
            error = f"{error} (full error: {path})"
        self.print(end_line(self.row(trial, FAILED), self.metric, error=error))
        self._redraw(trials, now=True)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        error, _ = trial_error(trial)
        self.print(f"trial {trial.trial_id} failed, retry {trial.num_failures} of {self.max_failures} "
                   f"from its last checkpoint: {error}")

    def on_experiment_end(self, trials, **info) -> None:
        self.close()
        self.print(header_line(self.view(trials, finished=True)))

    def _stopped_by(self) -> str:
        if self.time_budget_s and time.monotonic() - self._started >= self.time_budget_s:
            return "the time budget"
        return f"the {self.scheduler} scheduler"


def _status(trial) -> str:
    """A Ray trial's status in the console's words."""
    if trial.status == "ERROR":
        return FAILED
    if trial.status == "TERMINATED":
        return trial_status(trial.last_result, errored=False)
    return RUNNING if trial.status == "RUNNING" else PENDING


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
