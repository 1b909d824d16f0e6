"""``tuner leaderboard | promote | predict | evaluate | ui | report | score``: what to do with a finished search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tuner.cli.args import add_tracking
from tuner.errors import UserError
from tuner.lastmile.score import score_submission
from tuner.places import resolve_tracking_uri
from tuner.terminal import echo  # file names and ids: control characters escaped


# The view sets' names, without importing torch (a light command's --help stays fast).
TTA_HELP = "none, flips, crops, five-crop, ten-crop, multi-scale, twelve"


TABLE_ROWS = 50


def cmd_leaderboard(args) -> int:
    from tuner.tracking.store import open_client  # mlflow: the result commands only
    from tuner.tracking.leaderboard import load_board, render  # mlflow: the result commands only

    # A terminal table shows the best TABLE_ROWS unless told otherwise (a 1,000-row table is neither
    # readable nor quick to draw); csv and json, read by scripts, hold every trial.
    top = args.top
    if top is None and args.format == "table" and not args.all:
        top = TABLE_ROWS
    if args.all and args.top is not None:
        raise UserError("--top and --all: choose one")
    board = load_board(open_client(resolve_tracking_uri(args.tracking_uri)), args.name, top=top)
    if args.top is None and top is not None and len(board.entries) == top:
        board.note = f"the best {top} trials; --top N or --all for more"
    # As rendered: the table escapes its cells itself; csv and json are data for scripts, kept as
    # written (csv cells formula-escaped, json escapes control characters; csv's \r\n line ends stay).
    print(render(board, args.format), end="")
    return 0


def cmd_promote(args) -> int:
    from tuner.lastmile.promote import promote  # mlflow, torch: this command only
    from tuner.tracking.store import open_client  # mlflow: the result commands only

    if args.ensemble is not None:
        return _promote_ensemble(args)
    given = [f"--{f.replace('_', '-')}" for f in ENSEMBLE_ONLY if getattr(args, f)]
    if given:
        raise UserError(f"{', '.join(given)}: only with --ensemble K")
    result = promote(open_client(resolve_tracking_uri(args.tracking_uri)), args.name, trial=args.trial,
                     alias=args.alias, model_name=args.model_name)
    value = "-" if result.value is None else f"{result.value:.4f}"
    moved = f" (moved from version {result.previous_version})" if result.previous_version else ""
    echo(f"promoted trial {result.trial} ({result.metric}={value}) as {result.model_name} "
         f"version {result.version}; alias @{result.alias}{moved}: {result.uri}")
    return 0


ENSEMBLE_ONLY = ("val", "tta", "combine", "replacement", "diverse", "select_by", "calibrate", "candidates")


def _promote_ensemble(args) -> int:
    from tuner.lastmile.predict import pick_device  # torch: this command only
    from tuner.lastmile.promote_ensemble import EnsembleOptions, promote_ensemble  # mlflow, torch
    from tuner.tracking.store import open_client  # mlflow: the result commands only

    if args.trial is not None:
        raise UserError("--trial and --ensemble: choose one (an ensemble chooses its own trials)")
    options = EnsembleOptions(
        k=args.ensemble, val_dir=args.val, tta=args.tta or "none", combine=args.combine or "geometric",
        replacement=args.replacement, diverse=args.diverse, select_by=args.select_by or "accuracy",
        calibrate=args.calibrate,
        candidates=args.candidates or max(10, args.ensemble), device=pick_device(args.device),
        progress=not args.quiet)
    result = promote_ensemble(open_client(resolve_tracking_uri(args.tracking_uri)), args.name, options,
                              alias=args.alias, model_name=args.model_name)
    card = result.card
    report = card["validation"]["report_half"]
    members = ", ".join(f"{m['trial']} x{m['weight']:.2f}" for m in card["members"])
    moved = f" (moved from version {result.previous_version})" if result.previous_version else ""
    echo(f"ensemble of {len(card['members'])} ({members}), {card['combine']} mean, tta {card['tta']}")
    line = (f"held-out half of {card['selection']['val_dir']} ({report['images']} images): ensemble "
            f"{report['ensemble']:.4f}, best single trial {report['best_member']:.4f}")
    if "ensemble_calibrated" in report:
        line += f", ensemble + calibration ({card['calibration']['target_spec']}) {report['ensemble_calibrated']:.4f}"
    echo(line)
    echo(f"promoted as {result.model_name} version {result.version}; alias @{result.alias}{moved}: {result.uri}")
    return 0


def cmd_evaluate(args) -> int:
    from tuner.lastmile.evaluate import evaluate, render  # mlflow, torch: this command only

    evaluation = evaluate(
        args.model_uri, Path(args.images), key=Path(args.key) if args.key else None,
        ttas=_listed(args.tta) or ["none"], calibrations=_listed(args.calibrate), members=args.members,
        tracking_uri=resolve_tracking_uri(args.tracking_uri), batch_size=args.batch_size,
        device=args.device, progress=not args.quiet, decode_device=args.decode_device)
    print(render(evaluation), end="")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": evaluation.images, "skipped": evaluation.skipped,
                                               "rows": [r.as_dict() for r in evaluation.rows]}, indent=1))
    return 0


def _listed(value: Optional[str]) -> Optional[list[str]]:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def cmd_predict(args) -> int:
    from tuner.lastmile.predict import predict  # mlflow, torch: this command only

    report = predict(args.model_uri, Path(args.images), Path(args.out),
                     tracking_uri=resolve_tracking_uri(args.tracking_uri), tta=args.tta,
                     batch_size=args.batch_size, progress=not args.quiet, device=args.device,
                     decode_device=args.decode_device)
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
    board.add_argument("--top", type=int, help=f"show only the best N (table default: {TABLE_ROWS})")
    board.add_argument("--all", action="store_true", help="every trial in the table")
    board.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_tracking(board)
    board.set_defaults(func=cmd_leaderboard)

    prom = sub.add_parser("promote", help="register the best trial's model under an alias")
    prom.add_argument("name")
    prom.add_argument("--trial", help="trial id to promote (default: the best)")
    prom.add_argument("--alias", default="champion")
    prom.add_argument("--model-name", help="registered model name (default: the search name)")
    _add_ensemble_options(prom)
    add_tracking(prom)
    prom.set_defaults(func=cmd_promote)

    pred = sub.add_parser("predict", help="write a submission CSV id,predicted")
    pred.add_argument("model_uri", help="models:/NAME@champion, runs:/…, or a checkpoint path")
    pred.add_argument("--images", required=True, help="folder of test images named <id>.<ext>")
    pred.add_argument("--out", required=True, help="CSV to write")
    pred.add_argument("--tta", help=f"test-time views: {TTA_HELP} (default: as promoted)")
    pred.add_argument("--batch-size", type=int, default=64, help="images decoded and predicted at once")
    pred.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    _add_decode_device(pred)
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking(pred)
    pred.set_defaults(func=cmd_predict)

    _register_evaluate(sub)

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


def _add_ensemble_options(prom) -> None:
    last = prom.add_argument_group("ensemble (docs/lastmile.md)")
    last.add_argument("--ensemble", type=int, metavar="K",
                      help="register ONE model combining K trials chosen by greedy forward selection")
    last.add_argument("--val", help="labelled validation folder VAL/<class>/<image> to choose on "
                      "(default: the one the trials validated on)")
    last.add_argument("--tta", help=f"test-time views the members are scored and later predict with: {TTA_HELP}")
    last.add_argument("--combine", choices=("geometric", "arithmetic"),
                      help="mean of the members' softmaxes (default: geometric)")
    last.add_argument("--replacement", action="store_true",
                      help="a member may be picked again (its weight grows) instead of a weaker one added")
    last.add_argument("--diverse", action="store_true", help="prefer a member of an architecture not yet in")
    last.add_argument("--select-by", choices=("accuracy", "log-loss"),
                      help="what each greedy step maximises on the selection half (default: accuracy)")
    last.add_argument("--calibrate", help="prior shift from the training class counts to balanced | file:PRIORS.csv")
    last.add_argument("--candidates", type=int, help="the leaderboard's best N trials considered (default: 10)")
    last.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    last.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_decode_device(parser) -> None:
    parser.add_argument("--decode-device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help="where JPEGs are decoded: auto (default) = on the model's GPU when it runs "
                        "on one (batches of nvjpeg), else Pillow; cpu = Pillow; cuda without a usable "
                        "GPU is an error")


def _register_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="accuracy, top-5, per class and confusion of a model on labelled images")
    ev.add_argument("model_uri", help="models:/NAME@champion, runs:/…, or a checkpoint path")
    ev.add_argument("--images", required=True, help="VAL/<class>/<image>, or a flat folder with --key")
    ev.add_argument("--key", help="CSV id,label for a flat folder of <id>.<ext> images")
    ev.add_argument("--tta", help=f"comma-separated test-time view sets to compare: {TTA_HELP} (default: none)")
    ev.add_argument("--calibrate", help="comma-separated: none, model, balanced, file:PRIORS.csv "
                    "(default: none, and the model's own calibration when it has one)")
    ev.add_argument("--members", action="store_true", help="also score each member alone")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    _add_decode_device(ev)
    ev.add_argument("--json", help="also write every number (per class, confusion) to this file")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking(ev)
    ev.set_defaults(func=cmd_evaluate)
