"""``tuner leaderboard | promote | predict | ui | report | score``: what to do with a finished search."""

from __future__ import annotations

from pathlib import Path

from tuner.cli.args import add_tracking
from tuner.lastmile.score import score_submission
from tuner.places import resolve_tracking_uri
from tuner.terminal import echo  # file names and ids: control characters escaped


def cmd_leaderboard(args) -> int:
    from tuner.tracking.store import open_client  # mlflow: the result commands only
    from tuner.tracking.leaderboard import load_board, render  # mlflow: the result commands only

    board = load_board(open_client(resolve_tracking_uri(args.tracking_uri)), args.name, top=args.top)
    # As rendered: the table escapes its cells itself; csv and json are data for scripts, kept as
    # written (csv cells formula-escaped, json escapes control characters; csv's \r\n line ends stay).
    print(render(board, args.format), end="")
    return 0


def cmd_promote(args) -> int:
    from tuner.lastmile.promote import promote  # mlflow, torch: this command only
    from tuner.tracking.store import open_client  # mlflow: the result commands only

    result = promote(open_client(resolve_tracking_uri(args.tracking_uri)), args.name, trial=args.trial,
                     alias=args.alias, model_name=args.model_name)
    value = "-" if result.value is None else f"{result.value:.4f}"
    moved = f" (moved from version {result.previous_version})" if result.previous_version else ""
    echo(f"promoted trial {result.trial} ({result.metric}={value}) as {result.model_name} "
         f"version {result.version}; alias @{result.alias}{moved}: {result.uri}")
    return 0


def cmd_predict(args) -> int:
    from tuner.lastmile.predict import predict  # mlflow, torch: this command only

    report = predict(args.model_uri, Path(args.images), Path(args.out),
                     tracking_uri=resolve_tracking_uri(args.tracking_uri), tta=args.tta,
                     batch_size=args.batch_size, progress=not args.quiet)
    echo(f"wrote {report.written} rows to {report.out}")
    if report.skipped:
        shown = ", ".join(report.skipped[:50]) + (" …" if len(report.skipped) > 50 else "")
        echo(f"skipped {len(report.skipped)} file(s) that are no readable image: ids {shown}")
    return 0


def cmd_ui(args) -> int:
    from tuner.tracking.ui import serve  # mlflow: the result commands only

    return serve(tracking_uri=resolve_tracking_uri(args.tracking_uri), search=args.name, port=args.port)


def cmd_report(args) -> int:
    from tuner.report import write_report  # matplotlib, mlflow, optuna: this command only
    from tuner.search.definition import load_definition  # the spec parser: this command only

    # The saved definition knows the search's tracking URI and its Optuna storage.
    _, places, spec = load_definition(args.name, args.storage)
    echo(str(write_report(args.name, places, spec=spec)))
    return 0


def cmd_score(args) -> int:
    accuracy, rows = score_submission(args.submission, args.key)
    echo(f"submission {args.submission}: {rows} rows, top-1 accuracy {accuracy:.4f} "
         f"(error {1 - accuracy:.4f})")
    return 0


def register(sub) -> None:
    board = sub.add_parser("leaderboard", help="ranked trials of a search")
    board.add_argument("name")
    board.add_argument("--top", type=int, help="show only the best N")
    board.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_tracking(board)
    board.set_defaults(func=cmd_leaderboard)

    prom = sub.add_parser("promote", help="register the best trial's model under an alias")
    prom.add_argument("name")
    prom.add_argument("--trial", help="trial id to promote (default: the best)")
    prom.add_argument("--alias", default="champion")
    prom.add_argument("--model-name", help="registered model name (default: the search name)")
    add_tracking(prom)
    prom.set_defaults(func=cmd_promote)

    pred = sub.add_parser("predict", help="write a submission CSV id,predicted")
    pred.add_argument("model_uri", help="models:/NAME@champion, runs:/…, or a checkpoint path")
    pred.add_argument("--images", required=True, help="folder of test images named <id>.<ext>")
    pred.add_argument("--out", required=True, help="CSV to write")
    pred.add_argument("--tta", choices=("none", "flips", "crops"), default="none")
    pred.add_argument("--batch-size", type=int, default=128)
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking(pred)
    pred.set_defaults(func=cmd_predict)

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1, opened on a search's leaderboard")
    ui.add_argument("name", nargs="?", help="search to open (default: the list of experiments)")
    ui.add_argument("--port", type=int, default=5000, help="local port (default: 5000)")
    add_tracking(ui)
    ui.set_defaults(func=cmd_ui)

    report = sub.add_parser("report", help="a search's report: one offline HTML page with its figures")
    report.add_argument("name")
    report.add_argument("--storage", help="Ray storage path the search was started with")
    report.set_defaults(func=cmd_report)

    score = sub.add_parser("score", help="top-1 accuracy of a submission against an answer key")
    score.add_argument("submission")
    score.add_argument("--key", required=True, help="CSV id,label")
    score.set_defaults(func=cmd_score)
