"""The ``tuner`` command: a table of subcommands that parse arguments and call library functions.

Each command group registers its parsers from its own module (search.py, results.py, data.py,
diagnose.py); a handler imports the library it calls inside itself, so that a light command
(``leaderboard``, ``ui``, ``data download``) never loads torch or Ray. Bad input (``UserError`` and
the trainable's ``TrialInputError``) becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable, Optional

from tuner.cli import data, diagnose, results, search
from tuner.errors import UserError
from tuner.redact import install_log_redaction, redact
from tuner.terminal import EscapingFormatter, echo
from trainables.errors import TrialInputError  # torch-free: `tuner data` starts fast

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner", description="Hyperparameter search for image classifiers: Ray Tune + Optuna + MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    data_commands = sub.add_parser("data", help="prepare datasets").add_subparsers(
        dest="data_command", required=True)
    data.register(data_commands)  # demo, download, stats, split, cache
    diagnose.register_preview(data_commands)  # preview-augment
    search.register(sub)  # search, resume, status, flush, train
    results.register(sub)  # leaderboard, promote, predict, evaluate, ui, report, score
    diagnose.register(sub)  # diagnose batch-size / lr-range / overfit
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    stderr = logging.StreamHandler()
    stderr.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))  # logs name files too
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[stderr])
    install_log_redaction()
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except (UserError, TrialInputError) as err:
        echo(f"tuner: error: {redact(str(err))}", file=sys.stderr)  # messages quote the names given
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tuner: interrupted; finished work is kept (see `tuner resume`)", file=sys.stderr)
        return 130
    except Exception:  # a bug, or a library's own error: its traceback, with credentials masked
        echo(redact(traceback.format_exc()), file=sys.stderr, end="")
        return 1
