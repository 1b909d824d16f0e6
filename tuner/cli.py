"""The ``tuner`` command: a table of subcommands that parse arguments and call library functions.

Bad input (``UserError`` and the trainable's ``ConfigError``/``DataError``) becomes one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

import yaml

from tuner.errors import UserError

EXIT_USER_ERROR = 2


def parse_assignments(pairs: list[str]) -> dict:
    """``--set lr=0.1 --set aug.rotation=5`` -> {"lr": 0.1, "aug.rotation": 5} (values parsed as YAML)."""
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set: expected key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(raw) if raw else None
    return values


# --- data ---
def cmd_data_demo(args) -> int:
    from tuner.datasets.demo import unpack_demo_data

    counts = unpack_demo_data(args.out)
    print(f"sample data in {args.out}: {counts['train']} train, {counts['val']} val, "
          f"{counts['test']} test images, answer key test_labels.csv")
    return 0


# --- search ---
def cmd_search(args) -> int:
    from tuner.search import run_from_cli

    return run_from_cli(args)


def cmd_resume(args) -> int:
    from tuner.resume import resume_from_cli

    return resume_from_cli(args)


def cmd_flush(args) -> int:
    from tuner.resume import load_definition
    from tuner.tracking_buffer import replay

    _, places, _ = load_definition(args.name, args.storage)
    unsent = replay(tracking_uri=places.tracking_uri, state_dir=places.state_dir, search_name=args.name)
    print(f"{len(unsent)} MLflow writes still unsent" if unsent else "all buffered MLflow writes sent")
    return 1 if unsent else 0


def cmd_leaderboard(args) -> int:
    from tuner.leaderboard import load_board, open_client, render
    from tuner.workspace import tracking_uri

    board = load_board(open_client(tracking_uri(args.tracking_uri)), args.name, top=args.top)
    print(render(board, args.format), end="")
    return 0


def cmd_promote(args) -> int:
    from tuner.leaderboard import open_client
    from tuner.promote import promote
    from tuner.workspace import tracking_uri

    result = promote(open_client(tracking_uri(args.tracking_uri)), args.name, trial=args.trial,
                     alias=args.alias, model_name=args.model_name)
    value = "-" if result.value is None else f"{result.value:.4f}"
    moved = f" (moved from version {result.previous_version})" if result.previous_version else ""
    print(f"promoted trial {result.trial} ({result.metric}={value}) as {result.model_name} "
          f"version {result.version}; alias @{result.alias}{moved}: {result.uri}")
    return 0


def cmd_predict(args) -> int:
    from tuner.predict import predict
    from tuner.workspace import tracking_uri

    report = predict(args.model_uri, Path(args.images), Path(args.out),
                     tracking_uri=tracking_uri(args.tracking_uri), tta=args.tta,
                     batch_size=args.batch_size, progress=not args.quiet)
    print(f"wrote {report.written} rows to {report.out}")
    if report.skipped:
        shown = ", ".join(report.skipped[:50]) + (" …" if len(report.skipped) > 50 else "")
        print(f"skipped {len(report.skipped)} file(s) that are no readable image: ids {shown}")
    return 0


def cmd_ui(args) -> int:
    from tuner.ui import serve
    from tuner.workspace import tracking_uri

    return serve(tracking_uri=tracking_uri(args.tracking_uri), search=args.name, port=args.port)


def cmd_score(args) -> int:
    from tuner.datasets.demo import score_submission

    accuracy, rows = score_submission(args.submission, args.key)
    print(f"submission {args.submission}: {rows} rows, top-1 accuracy {accuracy:.4f} "
          f"(error {1 - accuracy:.4f})")
    return 0


def cmd_train(args) -> int:
    from tuner.train import train_from_cli

    return train_from_cli(args)


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $TUNER_TRACKING_URI "
                        "or sqlite:///./mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner", description="Hyperparameter search for image classifiers: Ray Tune + Optuna + MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from tuner import cli_data, cli_diagnose

    data = sub.add_parser("data", help="prepare datasets").add_subparsers(dest="data_command", required=True)
    demo = data.add_parser("demo", help="lay out the shipped CIFAR-10 sample like the competition")
    demo.add_argument("--out", required=True, help="target folder")
    demo.set_defaults(func=cmd_data_demo)
    cli_data.register(data)  # download, stats, split, cache
    cli_diagnose.register_preview(data)  # preview-augment
    _add_search_commands(sub)
    _add_result_commands(sub)
    cli_diagnose.register(sub)  # diagnose batch-size / lr-range / overfit
    return parser


def _add_search_commands(sub) -> None:
    search = sub.add_parser("search", help="run a search from a spec YAML")
    search.add_argument("spec", help="search-space YAML (see search_spaces/)")
    search.add_argument("--name", help="search name (default: the spec's name)")
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fixed trial setting, e.g. --set epochs=3")
    search.add_argument("--num-samples", type=int, help="override budget.num_samples")
    search.add_argument("--storage", help="Ray storage path (default: $TUNER_STORAGE or ./runs)")
    search.add_argument("--address", help="Ray cluster address (default: a local embedded cluster)")
    _add_tracking(search)
    search.set_defaults(func=cmd_search)

    resume = sub.add_parser("resume", help="finish a search whose driver died, or --more trials")
    resume.add_argument("name")
    resume.add_argument("--more", type=int, help="run N further trials on the same study")
    resume.add_argument("--storage", help="Ray storage path the search was started with")
    resume.add_argument("--address", help="Ray cluster address (default: the one it started with)")
    resume.set_defaults(func=cmd_resume)

    flush = sub.add_parser("flush", help="send a search's buffered MLflow writes (after an outage)")
    flush.add_argument("name")
    flush.add_argument("--storage", help="Ray storage path the search was started with")
    flush.set_defaults(func=cmd_flush)

    train = sub.add_parser("train", help="run ONE trial without Ray, with progress bars")
    train.add_argument("config", help="a trial config YAML, or a search spec (its fixed values)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", default="runs/train", help="folder for checkpoint and artifacts")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.set_defaults(func=cmd_train)



def _add_result_commands(sub) -> None:
    board = sub.add_parser("leaderboard", help="ranked trials of a search")
    board.add_argument("name")
    board.add_argument("--top", type=int, help="show only the best N")
    board.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_tracking(board)
    board.set_defaults(func=cmd_leaderboard)

    prom = sub.add_parser("promote", help="register the best trial's model under an alias")
    prom.add_argument("name")
    prom.add_argument("--trial", help="trial id to promote (default: the best)")
    prom.add_argument("--alias", default="champion")
    prom.add_argument("--model-name", help="registered model name (default: the search name)")
    _add_tracking(prom)
    prom.set_defaults(func=cmd_promote)

    pred = sub.add_parser("predict", help="write a submission CSV id,predicted")
    pred.add_argument("model_uri", help="models:/NAME@champion, runs:/…, or a checkpoint path")
    pred.add_argument("--images", required=True, help="folder of test images named <id>.<ext>")
    pred.add_argument("--out", required=True, help="CSV to write")
    pred.add_argument("--tta", choices=("none", "flips", "crops"), default="none")
    pred.add_argument("--batch-size", type=int, default=128)
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_tracking(pred)
    pred.set_defaults(func=cmd_predict)

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1, opened on a search's leaderboard")
    ui.add_argument("name", nargs="?", help="search to open (default: the list of experiments)")
    ui.add_argument("--port", type=int, default=5000, help="local port (default: 5000)")
    _add_tracking(ui)
    ui.set_defaults(func=cmd_ui)

    score = sub.add_parser("score", help="top-1 accuracy of a submission against an answer key")
    score.add_argument("submission")
    score.add_argument("--key", required=True, help="CSV id,label")
    score.set_defaults(func=cmd_score)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from tuner.redact import install_log_redaction, redact

    install_log_redaction()
    handler: Callable[[argparse.Namespace], int] = args.func
    from trainables.errors import TrialInputError  # torch-free: `tuner data` starts fast

    try:
        return handler(args)
    except (UserError, TrialInputError) as err:
        print(f"tuner: error: {redact(str(err))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tuner: interrupted; finished work is kept (see `tuner resume`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
