"""``tuner search | resume | status | flush | train``: parse flags, call the library."""

from __future__ import annotations

from pathlib import Path

from tuner.cli.args import add_insecure, add_tracking, parse_assignments
from tuner.terminal import echo  # trial ids and params: control characters escaped


def _add_ray_output(parser) -> None:
    parser.add_argument("--ray-output", action="store_true",
                        help="also print Ray Tune's own progress: a box per trial, a status table every 30 s")


def cmd_search(args) -> int:
    from tuner.cluster.connect import check_ray_auth_mode  # ray: this command only
    from tuner.search.command import start_search  # ray, optuna, mlflow, torch: this command only

    check_ray_auth_mode(insecure=args.insecure)
    start_search(Path(args.spec), overrides=parse_assignments(args.set), name=args.name,
                 num_samples=args.num_samples, storage=args.storage, address=args.address,
                 tracking_uri=args.tracking_uri, ray_output=args.ray_output)
    return 0


def cmd_resume(args) -> int:
    from tuner.cluster.connect import check_ray_auth_mode  # ray: this command only
    from tuner.search.command import resume  # ray, optuna, mlflow, torch: this command only

    check_ray_auth_mode(insecure=args.insecure)
    resume(args.name, more=args.more, storage=args.storage, address=args.address,
           ray_output=args.ray_output, trust_storage=args.trust_storage)
    return 0


def cmd_status(args) -> int:
    from tuner.search.status import search_status  # ray, optuna, mlflow, torch: this command only

    echo("\n".join(search_status(args.name, args.storage)))
    return 0


def cmd_flush(args) -> int:
    from tuner.search.definition import load_definition  # spec parsing imports torch (TrialConfig)
    from tuner.tracking.buffer import replay  # mlflow: this command only

    _, places, _ = load_definition(args.name, args.storage)
    unsent = replay(tracking_uri=places.tracking_uri, state_dir=places.state_dir, search_name=args.name)
    print(f"{len(unsent)} MLflow writes still unsent" if unsent else "all buffered MLflow writes sent")
    return 1 if unsent else 0


def cmd_train(args) -> int:
    from tuner.train import train_one  # torch: this command only

    train_one(Path(args.config), overrides=parse_assignments(args.set), out=Path(args.out),
              resume=args.resume)
    return 0


def register(sub) -> None:
    search = sub.add_parser("search", help="run a search from a spec YAML")
    search.add_argument("spec", help="search-space YAML (see search_spaces/)")
    search.add_argument("--name", help="search name (default: the spec's name)")
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a trial setting, e.g. --set epochs=3 (a searched key is then fixed)")
    search.add_argument("--num-samples", type=int, help="override budget.num_samples")
    search.add_argument("--storage", help="Ray storage path (default: $TUNER_STORAGE or ./runs)")
    search.add_argument("--address", help="Ray cluster address (default: a local embedded cluster)")
    _add_ray_output(search)
    add_insecure(search)
    add_tracking(search)
    search.set_defaults(func=cmd_search)

    resume = sub.add_parser("resume", help="finish a search whose driver died, or --more trials")
    resume.add_argument("name")
    resume.add_argument("--more", type=int, help="run N further trials on the same study")
    resume.add_argument("--storage", help="Ray storage path the search was started with")
    resume.add_argument("--address", help="Ray cluster address (default: the one it started with)")
    resume.add_argument("--trust-storage", action="store_true",
                        help="let Ray load the search's saved state without checking the driver's "
                        "seal on it (a search saved by an older tuner, or a lost key): only when "
                        "nothing but your drivers can write the storage")
    _add_ray_output(resume)
    add_insecure(resume)
    resume.set_defaults(func=cmd_resume)

    status = sub.add_parser("status", help="a search's trials by status, its best and its running "
                            "trials, read from MLflow and its Optuna study (from any shell)")
    status.add_argument("name")
    status.add_argument("--storage", help="Ray storage path the search was started with")
    status.set_defaults(func=cmd_status)

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
