"""``tuner diagnose lr-range CONFIG``: which learning rates train, measured on a small subset.

Two measurements, both on a fixed, seeded subset of ``--samples`` training images with CONFIG's model,
optimizer, batch size and augmentation:

- the learning-rate range test (Smith 2017): one run whose rate grows exponentially from ``--min-lr``
  to ``--max-lr`` over ``--steps`` steps; the loss, smoothed by an exponential moving average, falls,
  bottoms out and then climbs. It stops (diverged) once the smoothed loss exceeds 4x its minimum or,
  past the minimum, rises 10 % above the untrained model's loss (BatchNorm networks often climb back
  to guessing rather than to NaN). The
  rate of the lowest smoothed loss is the highest one that still improves; the suggested search range
  is the two decades below it, ``[lr_min_loss / 100, lr_min_loss]``, and a single rate
  ``lr_min_loss / 10``.
- the journal's procedure: start at 1.0 on ~1,000 images and halve until training converges (here:
  the mean training loss of the last of ``--halving-epochs`` epochs falls to ``--converge-at`` x the
  loss of guessing, ln(classes)). The journal then multiplied it by samples/full "to scale it to the
  full set"; both numbers are printed.

Rates are per step at CONFIG's batch size. A config with ``lr_scaling: linear`` and a
``train_subset`` multiplies its ``lr`` by subset/full when it trains, so ``--write-spec`` writes the
suggested range divided by that factor: the spec's ``lr`` is then what the trials must be given.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from torch.utils.data import Subset

import yaml
from tuner.diagnose.plots import plot_lr_range
from tuner.diagnose.tracking import DiagnosticRecord
from tuner.spec.load import load_spec
from tuner.diagnose.common import load_config, subset_indices
from tuner.errors import UserError
from trainables.config import TrialConfig
from trainables.data import make_loader
from trainables.engine import Diverged, train_one_epoch
from trainables.optim import build_optimizer
from trainables.runner import TrialState

SMOOTHING = 0.9  # EMA factor of the loss per step (bias-corrected); ~10 steps of memory
DIVERGE_FACTOR = 4.0  # the sweep stops once the smoothed loss exceeds 4x its minimum
WARMUP_STEPS = 5  # steps before the divergence rule applies (the first losses are noisy)
UNTRAINED_MARGIN = 1.1  # ... or once it is 10 % worse than the untrained model's first losses
DECADES_BELOW = 2.0  # suggested range: [lr_min_loss / 10^2, lr_min_loss]


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    lr_min_loss: float  # rate at the lowest smoothed loss
    lr_steepest: float  # rate where the smoothed loss falls fastest (per decade)
    lr_diverged: Optional[float]  # rate at which the sweep stopped (None: it never diverged)
    suggested_low: float
    suggested_high: float
    suggested_lr: float


@dataclass
class HalvingAttempt:
    lr: float
    epoch_losses: list[float]
    converged: bool


@dataclass
class HalvingResult:
    attempts: list[HalvingAttempt]
    target_loss: float  # what "converged" means: last epoch's loss at or below this
    lr: Optional[float]  # the first (highest) rate that converged
    lr_scaled: Optional[float]  # the journal's rule: lr x samples / full training set


@dataclass
class LrRangeReport:
    config: dict
    samples: int
    full_train_size: int
    batch_size: int
    config_lr_factor: float  # config lr = effective rate x this (lr_scaling linear with a subset)
    range_test: Optional[RangeTest] = None
    halving: Optional[HalvingResult] = None
    plot: Optional[str] = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Subject:
    """The model, optimizer settings and subset loader that every measurement starts from afresh."""

    def __init__(self, config: TrialConfig, samples: int) -> None:
        self.config = config.replace(train_subset=None, num_workers=0, max_steps_per_epoch=None)
        self.state = TrialState(self.config, crops_on_device=False)  # small loaders: per-sample crops
        train = self.state.splits.train
        indices = subset_indices(len(train), samples, seed=config.seed, flag="--samples",
                                 where=config.train_dir)
        self.samples = samples
        self.batch_size = min(config.batch_size, samples)
        self.loader = make_loader(Subset(train, indices), batch_size=self.batch_size, shuffle=True,
                                  num_workers=0, seed=config.seed, pin_memory=False)
        self.initial = copy.deepcopy(self.state.model.state_dict())
        self.num_classes = self.state.num_classes

    def fresh_optimizer(self, lr: float):
        """Back to the initial weights; a new optimizer over the parameters the config trains."""
        self.state.model.load_state_dict(self.initial)
        trained = [p for p in self.state.model.parameters() if p.requires_grad]
        c = self.config
        return build_optimizer(trained, name=c.optimizer, lr=lr, momentum=c.momentum,
                               nesterov=c.nesterov, weight_decay=c.weight_decay)

    def epoch(self, optimizer, epoch: int) -> float:
        _set_epoch(self.loader, epoch)
        return train_one_epoch(self.state.forward, self.loader, optimizer, self.state.device,
                               frozen=getattr(self.state, "frozen", ()),
                               finish=getattr(self.state, "finish_train", None)).loss

    def batches(self) -> Iterator:
        for epoch in itertools.count():
            _set_epoch(self.loader, epoch)
            yield from self.loader

    def step(self, optimizer, batches: Iterator) -> float:
        return train_one_epoch(self.state.forward, itertools.islice(batches, 1), optimizer,
                               self.state.device, frozen=getattr(self.state, "frozen", ()),
                               finish=getattr(self.state, "finish_train", None)).loss


def _set_epoch(loader, epoch: int) -> None:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def range_test(subject: _Subject, *, min_lr: float, max_lr: float, steps: int) -> RangeTest:
    lrs = np.geomspace(min_lr, max_lr, steps).tolist()
    optimizer = subject.fresh_optimizer(lrs[0])
    batches = subject.batches()
    losses: list[float] = []
    smoothed: list[float] = []
    average, diverged = 0.0, None
    for i, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            loss = subject.step(optimizer, batches)
        except Diverged:
            diverged = lr
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        losses.append(loss)
        smoothed.append(average / (1 - SMOOTHING ** (i + 1)))
        if i >= WARMUP_STEPS and _diverging(losses, smoothed):
            diverged = lr
            break
    if len(smoothed) < 2:
        raise UserError(f"--min-lr: the sweep diverged at once ({lrs[0]:.3g}); lower --min-lr")
    return _summarise(lrs[: len(smoothed)], losses, smoothed, diverged)


def _diverging(losses: list[float], smoothed: list[float]) -> bool:
    """Past its minimum, the smoothed loss is 4x that minimum, or 10 % above the untrained model's."""
    untrained = float(np.mean(losses[:WARMUP_STEPS]))
    best = min(smoothed)
    past_minimum = smoothed.index(best) < len(smoothed) - 1
    return smoothed[-1] > DIVERGE_FACTOR * best or (
        past_minimum and smoothed[-1] > UNTRAINED_MARGIN * untrained)


def _summarise(lrs, losses, smoothed, diverged) -> RangeTest:
    best = int(np.argmin(smoothed))
    slopes = np.gradient(np.asarray(smoothed), np.log10(lrs))
    # The first few smoothed values are averages of a handful of batches: their slope is noise.
    start = min(WARMUP_STEPS, best)
    steepest = start + int(np.argmin(slopes[start : best + 1]))
    high = lrs[best]
    return RangeTest(
        lrs=lrs, losses=losses, smoothed=smoothed, lr_min_loss=high, lr_steepest=lrs[steepest],
        lr_diverged=diverged, suggested_low=high / 10**DECADES_BELOW, suggested_high=high,
        suggested_lr=high / 10,
    )


def halving_search(
    subject: _Subject, *, start_lr: float, epochs: int, converge_at: float, max_halvings: int,
    full_train_size: int,
) -> HalvingResult:
    """The journal's rule: from ``start_lr``, halve until the training loss converges."""
    target = converge_at * math.log(subject.num_classes)
    attempts: list[HalvingAttempt] = []
    lr = start_lr
    for _ in range(max_halvings + 1):
        optimizer = subject.fresh_optimizer(lr)
        losses: list[float] = []
        try:
            for epoch in range(epochs):
                losses.append(subject.epoch(optimizer, epoch))
        except Diverged:
            losses.append(float("nan"))
        converged = math.isfinite(losses[-1]) and losses[-1] <= target
        attempts.append(HalvingAttempt(lr, losses, converged))
        if converged:
            return HalvingResult(attempts, target, lr, lr * subject.samples / full_train_size)
        lr /= 2
    return HalvingResult(attempts, target, None, None)


def config_lr_factor(config: TrialConfig, full_train_size: int) -> float:
    """Config lr per effective rate: a trial with lr_scaling linear trains at lr x subset/full."""
    if config.lr_scaling == "linear" and config.train_subset:
        return full_train_size / config.train_subset
    return 1.0


def diagnose_lr_range(
    config_path: str | Path, *, overrides: Optional[dict] = None, samples: int = 1000,
    steps: int = 100, min_lr: float = 1e-4, max_lr: float = 10.0, method: str = "both",
    start_lr: float = 1.0, halving_epochs: int = 3, converge_at: float = 0.9,
    max_halvings: int = 12, out_dir: Path = Path("diagnostics"),
) -> LrRangeReport:
    _check_arguments(samples=samples, steps=steps, min_lr=min_lr, max_lr=max_lr, method=method,
                     start_lr=start_lr, halving_epochs=halving_epochs, converge_at=converge_at)
    config = load_config(config_path, overrides)
    subject = _Subject(config, samples)
    full = subject.state.splits.full_train_size
    report = LrRangeReport(
        config={k: getattr(config, k) for k in ("arch", "width", "optimizer", "batch_size", "augmentation",
                                                "finetune", "lr_scaling", "train_subset", "image_size")},
        samples=samples, full_train_size=full, batch_size=subject.batch_size,
        config_lr_factor=config_lr_factor(config, full),
    )
    if method in ("range", "both"):
        report.range_test = range_test(subject, min_lr=min_lr, max_lr=max_lr, steps=steps)
    if method in ("halving", "both"):
        report.halving = halving_search(subject, start_lr=start_lr, epochs=halving_epochs,
                                        converge_at=converge_at, max_halvings=max_halvings,
                                        full_train_size=full)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.plot = str(plot_lr_range(report, out_dir / "lr_range.png"))
    summary = out_dir / "lr_range.json"
    report.files = [report.plot, str(summary)]
    summary.write_text(json.dumps(report.to_dict(), indent=1))
    return report


def _check_arguments(*, samples, steps, min_lr, max_lr, method, start_lr, halving_epochs, converge_at):
    if method not in ("range", "halving", "both"):
        raise UserError(f"--method: must be range, halving or both, got {method!r}")
    if steps < 10:
        raise UserError(f"--steps: must be >= 10 (a sweep needs points to smooth), got {steps}")
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min-lr/--max-lr: need 0 < min-lr < max-lr, got {min_lr} and {max_lr}")
    if start_lr <= 0:
        raise UserError(f"--start-lr: must be > 0, got {start_lr}")
    if halving_epochs < 1:
        raise UserError(f"--halving-epochs: must be >= 1, got {halving_epochs}")
    if not 0 < converge_at < 1:
        raise UserError(f"--converge-at: must be in (0, 1), got {converge_at}")
    if samples < 1:
        raise UserError(f"--samples: must be >= 1, got {samples}")


# --- writing the spec's lr bounds -------------------------------------------------------------------
def yaml_float(value: float) -> str:
    """A number PyYAML reads back as a float (it reads ``1e-05``, with no dot, as a string)."""
    text = f"{value:.3g}"
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + (f"e{exponent}" if exponent else "")


def _child(node, key: str):
    if node is None or not hasattr(node, "value") or not isinstance(node.value, list):
        return None
    for item in node.value:
        if isinstance(item, tuple) and getattr(item[0], "value", None) == key:
            return item[1]
    return None


def write_spec_lr(spec_path: str | Path, low: float, high: float) -> str:
    """Rewrites only the two bounds of ``space.lr`` in the spec's text; returns the new entry.

    The rest of the file (comments, order, style) is left byte for byte. The result is validated with
    ``load_spec`` before it replaces the file; an invalid result leaves the file untouched.
    """
    path = Path(spec_path)
    load_spec(path)  # the spec must be valid before we touch it
    text = path.read_text()
    entry = _child(_child(yaml.compose(text), "space"), "lr")
    if entry is None:
        raise UserError(f"{path.name}: space.lr: not searched; add `lr: {{loguniform: [low, high]}}` "
                        "to space and run again")
    kinds = [k for k in ("loguniform", "uniform") if _child(entry, k) is not None]
    bounds = _child(entry, kinds[0]) if kinds else None
    if bounds is None or not isinstance(bounds.value, list) or len(bounds.value) != 2:
        raise UserError(f"{path.name}: space.lr: --write-spec rewrites the bounds of a loguniform or "
                        "uniform [low, high] entry, and this one is neither")
    new = text
    for node, value in sorted(zip(bounds.value, (low, high)), key=lambda p: -p[0].start_mark.index):
        new = new[: node.start_mark.index] + yaml_float(value) + new[node.end_mark.index :]
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(new)
    try:
        spec = load_spec(partial)
    except UserError as err:
        partial.unlink()
        raise UserError(f"{path.name}: the rewritten lr bounds do not validate ({err}); file unchanged") from None
    partial.replace(path)
    param = next(p for p in spec.space if p.name == "lr")
    return f"space.lr: {param.kind} [{param.low:g}, {param.high:g}]"


def spec_bounds(report: LrRangeReport) -> tuple[float, float]:
    """The bounds ``--write-spec`` writes, in the config's lr units."""
    factor = report.config_lr_factor
    if report.range_test is not None:
        test = report.range_test
        return test.suggested_low * factor, test.suggested_high * factor
    if report.halving is not None and report.halving.lr is not None:
        return report.halving.lr / 10**DECADES_BELOW * factor, report.halving.lr * factor
    raise UserError("--write-spec: no rate to write: the halving search never converged")


def render(report: LrRangeReport) -> str:
    config, lines = report.config, []
    width = f" w{config['width']:g}" if config["width"] != 1.0 else ""
    lines.append(f"{config['arch']}{width} {config['optimizer']}, batch size {report.batch_size}, "
                 f"augmentation {config['augmentation']}, {report.samples} of {report.full_train_size} images")
    test = report.range_test
    if test is not None:
        end = (f"diverged at {test.lr_diverged:.3g}" if test.lr_diverged is not None
               else f"did not diverge up to {test.lrs[-1]:.3g}")
        lines += [
            f"range test ({len(test.losses)} steps from {test.lrs[0]:.3g}): lowest smoothed loss "
            f"{min(test.smoothed):.3f} at lr {test.lr_min_loss:.3g}; steepest fall at "
            f"{test.lr_steepest:.3g}; {end}",
            f"  suggested search range: loguniform [{test.suggested_low:.3g}, {test.suggested_high:.3g}]; "
            f"a single rate: {test.suggested_lr:.3g}",
        ]
    halving = report.halving
    if halving is not None:
        tries = ", ".join(f"{a.lr:.3g}: {a.epoch_losses[-1]:.3f}{' converged' if a.converged else ''}"
                          for a in halving.attempts)
        lines.append(f"journal's halving (last-epoch loss, converged at <= {halving.target_loss:.3f}): {tries}")
        if halving.lr is None:
            lines.append("  no rate converged: lower --start-lr, raise --halving-epochs, or run overfit")
        else:
            lines.append(f"  highest converging rate {halving.lr:.3g}; x {report.samples}/"
                         f"{report.full_train_size} for the full set (the journal's rule): {halving.lr_scaled:.3g}")
    if report.config_lr_factor != 1.0:
        low, high = spec_bounds(report)
        lines.append(f"in the config's lr units (lr_scaling linear, train_subset {config['train_subset']}: "
                     f"x {report.config_lr_factor:.3g}): [{low:.3g}, {high:.3g}]")
    lines.append(f"plot: {report.files[0]}; numbers: {report.files[1]}")
    return "\n".join(lines) + "\n"


def tracking_record(report: LrRangeReport, source: str):
    config = report.config
    record = DiagnosticRecord(
        "lr-range", f"lr-range {config['arch']} w{config['width']:g} {config['optimizer']}",
        params={**config, "samples": report.samples, "source": source},
        artifacts=[Path(f) for f in report.files], tags={"tuner.source": source},
    )
    test, halving = report.range_test, report.halving
    if test is not None:
        record.metrics.update({k: getattr(test, k) for k in (
            "lr_min_loss", "lr_steepest", "suggested_low", "suggested_high", "suggested_lr")})
        if test.lr_diverged is not None:
            record.metrics["lr_diverged"] = test.lr_diverged
        record.curves = {"sweep_lr": test.lrs, "sweep_loss": test.losses, "sweep_smoothed_loss": test.smoothed}
    if halving is not None and halving.lr is not None:
        record.metrics.update({"halving_lr": halving.lr, "halving_lr_scaled": halving.lr_scaled})
    return record
