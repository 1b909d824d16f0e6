"""``tuner diagnose batch-size | lr-range | overfit`` and ``tuner data preview-augment``.

Parse, call ``tuner.diagnose``, print; with ``--tracking-uri`` each run is also an MLflow run in the
experiment ``diagnostics``. Bad input raises UserError (one line, exit status 2, via ``tuner.cli.main``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tuner.cli.args import parse_assignments
from tuner.diagnose.tracking import log_diagnostic
from tuner.places import resolve_tracking_uri
from tuner.redact import redact
from tuner.terminal import echo  # paths and class names: control characters escaped

CONFIG_HELP = "a trial-config YAML or a search spec (its fixed values and first/middle searched ones)"


def _common(parser: argparse.ArgumentParser, *, config: bool = True, out_dir: bool = True) -> None:
    if config:
        parser.add_argument("config", metavar="CONFIG", help=CONFIG_HELP)
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a trial setting, e.g. --set optimizer=adam")
    if out_dir:
        parser.add_argument("--out-dir", default="diagnostics", help="folder for the PNG and JSON")
    parser.add_argument("--tracking-uri", help="also log this diagnostic as an MLflow run in the "
                        "experiment 'diagnostics' (e.g. sqlite:///mlflow.db)")


def register(subparsers) -> None:
    diagnose = subparsers.add_parser(
        "diagnose", help="before a search: largest batch, learning-rate range, can it overfit"
    ).add_subparsers(dest="diagnose_command", required=True)

    batch = diagnose.add_parser("batch-size", help="largest batch that trains one step, per architecture")
    batch.add_argument("config", metavar="SPEC_OR_CONFIG", help=CONFIG_HELP)
    batch.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    batch.add_argument("--arch", action="append", help="probe this architecture (repeatable; "
                       "default: the spec's arch choices)")
    batch.add_argument("--width", action="append", type=float, help="resnet width (repeatable)")
    batch.add_argument("--image-size", type=int, help="pixels (default: the config's)")
    batch.add_argument("--memory-budget", help="limit, e.g. 2GiB (default: the GPU's memory x the "
                       "spec's GPU share; 2GiB on CPU)")
    batch.add_argument("--margin", type=float, default=0.10, help="fraction of the limit kept free")
    batch.add_argument("--measure", choices=("auto", "saved-tensors", "cuda-peak"), default="auto",
                       help="auto: cuda-peak on CUDA, saved-tensors elsewhere")
    batch.add_argument("--max-batch", type=int, default=4096, help="stop doubling here")
    batch.add_argument("--num-classes", type=int, help="skip reading the data folder for the class count")
    batch.add_argument("--out", help="probe JSON (default: beside CONFIG, <stem>.batch_size.json)")
    _common(batch, config=False, out_dir=False)
    batch.set_defaults(func=cmd_batch_size)

    lr = diagnose.add_parser("lr-range", help="learning-rate range test + the journal's halving search")
    _common(lr)
    lr.add_argument("--samples", type=int, default=1000, help="fixed subset of training images")
    lr.add_argument("--method", choices=("both", "range", "halving"), default="both")
    lr.add_argument("--steps", type=int, default=100, help="steps of the exponential sweep")
    lr.add_argument("--min-lr", type=float, default=1e-4)
    lr.add_argument("--max-lr", type=float, default=10.0)
    lr.add_argument("--start-lr", type=float, default=1.0, help="halving: first rate")
    lr.add_argument("--halving-epochs", type=int, default=3, help="halving: epochs per rate")
    lr.add_argument("--converge-at", type=float, default=0.9,
                    help="halving: converged when the last epoch's loss <= this x ln(classes)")
    lr.add_argument("--write-spec", metavar="SPEC", help="rewrite only space.lr's bounds in SPEC")
    lr.set_defaults(func=cmd_lr_range)

    over = diagnose.add_parser("overfit", help="can the model memorise a small fixed subset?")
    _common(over)
    over.add_argument("--samples", type=int, default=512)
    over.add_argument("--max-steps", type=int, default=500, help="step budget")
    over.add_argument("--target-acc", type=float, default=0.95, help="training accuracy to reach")
    over.add_argument("--augment", action="store_true", help="keep CONFIG's augmentation on")
    over.add_argument("--no-lr-probe", action="store_true",
                      help="on failure, skip the two short runs at lr x 10 and lr / 10")
    over.set_defaults(func=cmd_overfit)


def register_preview(data_subparsers) -> None:
    preview = data_subparsers.add_parser(
        "preview-augment", help="grid of N images x M augmented draws, to judge a preset by eye")
    preview.add_argument("dir", metavar="DIR", help="an ImageFolder tree (DIR/<class>/<image>)")
    preview.add_argument("--preset", required=True, help="augmentation preset (none, light, journal, ...)")
    preview.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="preset parameter, e.g. --set rotation=30")
    preview.add_argument("--images", type=int, default=8, help="rows: images, classes in turn")
    preview.add_argument("--draws", type=int, default=6, help="columns: augmented draws per image")
    preview.add_argument("--image-size", type=int, help="pixels (default: the first image's side, <= 224)")
    preview.add_argument("--tile", type=int, default=96, help="pixels per tile in the PNG")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--out", required=True, help="PNG to write")
    _common(preview, config=False, out_dir=False)
    preview.set_defaults(func=cmd_preview_augment)


def _overrides(args) -> dict:
    return parse_assignments(args.set)


def _track(args, record) -> None:
    """Logs the diagnostic when --tracking-uri was given (checked and shown like every other URI)."""
    if not args.tracking_uri:
        return
    uri = resolve_tracking_uri(args.tracking_uri)
    run_id = log_diagnostic(uri, record)
    echo(f"logged MLflow run {run_id} in experiment 'diagnostics' ({redact(uri)})")


def cmd_batch_size(args) -> int:
    from tuner.diagnose import batch_size as probe  # torch: this command only

    def progress(result) -> None:
        label = result.arch + (f" w{result.width:g}" if result.width != 1.0 else "")
        echo(f"  {label}: {result.max_batch_size} ({len(result.probes)} probes, {result.seconds:.1f} s)",
             flush=True)

    report = probe.diagnose_batch_size(
        args.config, overrides=_overrides(args), archs=args.arch, widths=args.width,
        image_size=args.image_size, memory_budget=args.memory_budget, margin=args.margin,
        measure=args.measure, num_classes=args.num_classes, max_batch=args.max_batch,
        out=Path(args.out) if args.out else None, progress=progress,
    )
    print(probe.render_table(report.document), end="")  # rich's table of registry names: as drawn
    echo(f"wrote {report.out} (a spec beside it can say batch_size: {{choice: auto}})")
    if "gpu_share" in report.document:
        echo(f"GPU share: {report.document['gpu_share']['advice']}")
    _track(args, probe.tracking_record(report, args.config))
    return 0


def cmd_lr_range(args) -> int:
    from tuner.diagnose import lr_range  # torch: this command only

    report = lr_range.diagnose_lr_range(
        args.config, overrides=_overrides(args), samples=args.samples, steps=args.steps,
        min_lr=args.min_lr, max_lr=args.max_lr, method=args.method, start_lr=args.start_lr,
        halving_epochs=args.halving_epochs, converge_at=args.converge_at, out_dir=Path(args.out_dir),
    )
    echo(lr_range.render(report), end="")
    if args.write_spec:
        low, high = lr_range.spec_bounds(report)
        echo(f"wrote {lr_range.write_spec_lr(args.write_spec, low, high)} into {args.write_spec}")
    _track(args, lr_range.tracking_record(report, args.config))
    return 0


def cmd_overfit(args) -> int:
    from tuner.diagnose import overfit  # torch: this command only

    result = overfit.diagnose_overfit(
        args.config, overrides=_overrides(args), samples=args.samples, max_steps=args.max_steps,
        target_accuracy=args.target_acc, keep_augmentation=args.augment,
        probe_lr=not args.no_lr_probe, out_dir=Path(args.out_dir),
    )
    echo(overfit.render(result), end="")
    _track(args, overfit.tracking_record(result, args.config))
    return 0


def cmd_preview_augment(args) -> int:
    from tuner.diagnose import preview  # torch: this command only

    params = _overrides(args)
    result = preview.preview_augment(
        args.dir, preset=args.preset, params=params, images=args.images, draws=args.draws,
        image_size=args.image_size, tile=args.tile, seed=args.seed, out=args.out,
    )
    width, height = result.size
    echo(f"wrote {result.out}: {len(result.labels)} images x {args.draws} draws of {args.preset} "
         f"({width}x{height} px); rows: {', '.join(result.labels)}")
    _track(args, preview.tracking_record(result, data_dir=args.dir, preset=args.preset, params=params))
    return 0
