"""``tuner leaderboard NAME``: the ranked trials of a search, read back from MLflow.

MLflow is the single source of truth: what the table shows is exactly what the UI shows. Trials are
ranked by ``best_<metric>`` (the best epoch so far, as logged by the tracking callback); the key
params are the ones the search sampled (the parent run's ``space.*`` params).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from typing import Optional

from mlflow.tracking import MlflowClient

from rich.console import Console
from rich.table import Table
from rich.text import Text

from trainables import csvsafe
from tuner.errors import UserError
from tuner.redact import redact
from tuner.terminal import printable
from tuner.tracking.store import tracking_errors
from tuner.tracking.tags import KIND_TAG, PARENT_TAG, STATUS_TAG, TRIAL_TAG

FALLBACK_PARAMS = ("arch", "width", "lr", "batch_size", "optimizer", "augmentation")
FORMATS = ("table", "csv", "json")
PAGE = 1000  # runs per search_runs request


@dataclass
class Entry:
    rank: int
    trial: str
    run_id: str
    name: str
    status: str
    best: Optional[float]  # best value of the search metric over the trial's epochs
    val_acc: Optional[float]  # last epoch's
    val_loss: Optional[float]  # last epoch's
    epochs: int
    params: dict


@dataclass
class Board:
    search: str
    experiment_id: str
    metric: str
    mode: str
    param_names: list[str]
    entries: list[Entry]
    note: Optional[str] = None  # shown under the table (e.g. that it is cut to the best N)


def find_search(client: MlflowClient, name: str):
    """(experiment, parent run) of a search (its latest parent run); a clear error when none."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise UserError(f"no search named {name!r} in the tracking store {redact(client.tracking_uri)}")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not parents:
        raise UserError(f"experiment {name!r} holds no tuner search run")
    return experiment, parents[0]


def searched_params(parent) -> list[str]:
    names = sorted(k[len("space."):] for k in parent.data.params if k.startswith("space."))
    return names or list(FALLBACK_PARAMS)


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, *,
               best_first: Optional[tuple[str, str]] = None, limit: Optional[int] = None) -> list:
    """The search's trial runs; ``best_first`` (metric key, mode) with ``limit``: only the best
    ``limit`` of them, sorted by the store (runs without the metric last, as MLflow sorts missing
    values), so ``--top 10`` of a 1,000-trial search reads 10 runs, not 1,000."""
    order_by = None
    if best_first is not None:
        key, mode = best_first
        order_by = [f"metrics.`{key}` {'DESC' if mode == 'max' else 'ASC'}", "attributes.start_time ASC"]
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{KIND_TAG}` = 'trial'",
            max_results=min(PAGE, limit) if limit else PAGE, page_token=token, order_by=order_by,
        )
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs[:limit] if limit else runs


def load_board(client: MlflowClient, name: str, *, top: Optional[int] = None) -> Board:
    if top is not None and top < 1:
        raise UserError(f"--top: must be >= 1, got {top}")
    with tracking_errors(client.tracking_uri):
        experiment, parent = find_search(client, name)
        metric = parent.data.params.get("metric", "val_acc")
        mode = parent.data.params.get("mode", "max")
        key, names = f"best_{metric}", searched_params(parent)
        runs = trial_runs(client, experiment.experiment_id, parent.info.run_id,
                          best_first=(key, mode) if top else None, limit=top)

    def order(run) -> tuple:
        value = run.data.metrics.get(key)
        if value is None:
            return (1, 0.0, run.info.start_time)  # never reported: last
        return (0, -value if mode == "max" else value, run.info.start_time)

    entries = [
        Entry(
            rank=i + 1,
            trial=run.data.tags.get(TRIAL_TAG, "?"),
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=run.data.tags.get(STATUS_TAG, "?"),
            best=run.data.metrics.get(key),
            val_acc=run.data.metrics.get("val_acc"),
            val_loss=run.data.metrics.get("val_loss"),
            epochs=int(run.data.metrics.get("epoch", 0)),
            params={k: _short(run.data.params[k]) for k in names if k in run.data.params},
        )
        for i, run in enumerate(sorted(runs, key=order))
    ]
    return Board(name, experiment.experiment_id, metric, mode, names, entries[:top] if top else entries)


def render(board: Board, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([asdict(e) for e in board.entries], indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csvsafe.writer(buffer)  # run names and params are anyone's text: no formulas
        writer.writerow(["rank", "trial", "status", f"best_{board.metric}", "val_acc", "val_loss",
                         "epochs", *board.param_names, "run_id", "run_name"])
        for e in board.entries:
            writer.writerow([e.rank, e.trial, e.status, _csv(e.best), _csv(e.val_acc), _csv(e.val_loss),
                             e.epochs, *(e.params.get(k, "") for k in board.param_names), e.run_id, e.name])
        return buffer.getvalue()
    if fmt == "table":
        return _rich_table(board)
    raise UserError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _rich_table(board: Board) -> str:
    table = Table(title=_text(f"search {board.search}: ranked by best {board.metric} ({board.mode})"))
    numeric = {"#", "epochs", f"best {board.metric}", "last val_acc", "last val_loss"}
    columns = ("#", "trial", "status", f"best {board.metric}", "last val_acc", "last val_loss", "epochs",
               *board.param_names)
    for column in columns:
        table.add_column(_text(column), justify="right" if column in numeric else "left")
    for e in board.entries:
        cells = (str(e.rank), e.trial, e.status, _fmt(e.best), _fmt(e.val_acc), _fmt(e.val_loss),
                 str(e.epochs), *(e.params.get(k, "") for k in board.param_names))
        table.add_row(*map(_text, cells))
    if not board.entries:
        table.caption = "no trial has started yet"
    elif board.note:
        table.caption = _text(board.note)
    console = Console(width=180, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _text(value: str) -> Text:
    """A cell as plain text: no rich markup ("[/]" in a run name would raise, "[link=…]" would link),
    control characters escaped before rich measures the column."""
    return Text(printable(value))


def _short(text: str) -> str:
    """MLflow stores params as text: show floats with 4 significant digits."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() and "." not in text else f"{number:.4g}"


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _csv(value: Optional[float]) -> float | str:
    return "" if value is None else value  # a float: csv writes its repr, and a number is never escaped
