"""``tuner leaderboard NAME``: the ranked trials of a search, read back from MLflow.

MLflow is the single source of truth: what the table shows is exactly what the UI shows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Optional

from mlflow.tracking import MlflowClient

from tuner.errors import UserError
from tuner.tracking import KIND_TAG, SEARCH_TAG, STATUS_TAG, TRIAL_TAG

KEY_PARAMS = ("arch", "width", "lr", "batch_size", "optimizer", "augmentation")


@dataclass
class Entry:
    rank: int
    trial: str
    run_id: str
    name: str
    status: str
    best: Optional[float]  # best value of the search metric over the trial's epochs
    val_acc: Optional[float]  # last epoch's
    val_loss: Optional[float]
    epochs: int
    params: dict


@dataclass
class Board:
    search: str
    experiment_id: str
    metric: str
    mode: str
    entries: list[Entry]


def find_search(client: MlflowClient, name: str):
    """(experiment, parent run) of a search; a clear error when there is none."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise UserError(f"no search named {name!r} in the tracking store")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'search'", max_results=1
    )
    if not parents:
        raise UserError(f"experiment {name!r} holds no tuner search run")
    return experiment, parents[0]


def load_board(client: MlflowClient, name: str, *, top: Optional[int] = None) -> Board:
    experiment, parent = find_search(client, name)
    metric = parent.data.params.get("metric", "val_acc")
    mode = parent.data.params.get("mode", "max")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'trial' and tags.`{SEARCH_TAG}` = '{name}'",
        max_results=5000,
    )
    key = f"best_{metric}"

    def score(run) -> float:
        value = run.data.metrics.get(key)
        if value is None:
            return float("inf")  # never reported: last
        return -value if mode == "max" else value

    runs = sorted(runs, key=lambda r: (score(r), r.info.start_time))
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
            params={k: _short(run.data.params[k]) for k in KEY_PARAMS if k in run.data.params},
        )
        for i, run in enumerate(runs)
    ]
    return Board(name, experiment.experiment_id, metric, mode, entries[:top] if top else entries)


def render(board: Board, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([asdict(e) for e in board.entries], indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["rank", "trial", "status", f"best_{board.metric}", "val_acc", "val_loss",
                         "epochs", *KEY_PARAMS, "run_id"])
        for e in board.entries:
            writer.writerow([e.rank, e.trial, e.status, e.best, e.val_acc, e.val_loss, e.epochs,
                             *(e.params.get(k, "") for k in KEY_PARAMS), e.run_id])
        return buffer.getvalue()
    return _rich_table(board)


def _rich_table(board: Board) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"search {board.search}: best {board.metric} ({board.mode})")
    for column in ("#", "trial", "status", f"best {board.metric}", "val_loss", "epochs", *KEY_PARAMS):
        table.add_column(column, justify="right" if column in ("#", "epochs") else "left")
    for e in board.entries:
        table.add_row(
            str(e.rank), e.trial, e.status, _fmt(e.best), _fmt(e.val_loss), str(e.epochs),
            *(e.params.get(k, "") for k in KEY_PARAMS),
        )
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _short(text: str) -> str:
    """MLflow stores params as text: show floats with 4 significant digits."""
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() and "." not in text else f"{number:.4g}"


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"
