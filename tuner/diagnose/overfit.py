"""``tuner diagnose overfit CONFIG``: can the model memorise a few hundred images?

A healthy network memorises a small fixed subset quickly; one that cannot has a bug, and the journal
lost weeks to one (only the last layer was being trained). CONFIG's model and optimizer train on
``--samples`` fixed, seeded images without augmentation (decoded once, held in memory) until the
training accuracy of an epoch reaches ``--target-acc`` or ``--max-steps`` steps are spent.

Whatever the verdict, four likely causes are checked, each with what was found:

- frozen parameters: how many of the model's parameters the optimizer actually trains (head-only);
- learning rate: a non-finite loss (too high), else, when the run failed, two short runs at lr x 10
  and lr / 10 (a clearly lower loss at the same step means the rate is out of range);
- labels shuffled relative to images: how often an image's nearest neighbour by pixels (16x16
  thumbnails, cosine) has its label, against the same with labels permuted 20 times; no better than
  permuted labels means the labels look unrelated to the pictures (a hint, weaker on fine-grained data);
- augmentation still on: whether loading the same image twice gives different tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from tuner.diagnose.plots import plot_overfit
from tuner.diagnose.tracking import DiagnosticRecord
from tuner.diagnose.common import decode, load_config, subset_indices
from tuner.errors import UserError
from trainables.config import TrialConfig
from trainables.data import RobustImageFolder, make_loader
from trainables.engine import Diverged, train_one_epoch
from trainables.runner import TrialState

THUMBNAIL = 16  # pixels: the label check compares images at this size
PERMUTATIONS = 20  # label permutations that give the chance level of the label check
LR_PROBE_FACTOR = 10.0
LR_PROBE_GAIN = 0.8  # a probe "does clearly better" at <= 80 % of the run's loss at the same step


@dataclass
class Check:
    name: str  # frozen_parameters | learning_rate | shuffled_labels | augmentation
    found: Optional[bool]  # None: not checked
    detail: str


@dataclass
class OverfitResult:
    label: str  # arch, width, optimizer, lr
    samples: int
    target_accuracy: float
    max_steps: int
    passed: bool
    steps: int
    final_loss: float
    final_accuracy: float
    diverged: bool
    history: list[dict] = field(default_factory=list)  # {"epoch", "step", "loss", "accuracy"}
    checks: list[Check] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def found(self) -> list[Check]:
        return [c for c in self.checks if c.found]

    def to_dict(self) -> dict:
        return asdict(self)


def _label(config: TrialConfig) -> str:
    width = f" w{config.width:g}" if config.width != 1.0 else ""
    head = " head-only" if config.finetune == "head" else ""
    return f"{config.arch}{width}{head} {config.optimizer} lr={config.lr:.3g} bs={config.batch_size}"


def _train(state: TrialState, data: Dataset, *, batch_size: int, max_steps: int,
           target: Optional[float]) -> tuple[list[dict], bool]:
    """Epochs over ``data`` until the epoch's accuracy reaches ``target`` or the steps run out."""
    loader = make_loader(data, batch_size=batch_size, shuffle=True, num_workers=0,
                         seed=state.config.seed, pin_memory=False)
    history: list[dict] = []
    steps, epoch = 0, 0
    while steps < max_steps:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        try:
            stats = train_one_epoch(state.forward, loader, state.optimizer, state.device,
                                    max_steps=max_steps - steps, frozen=getattr(state, "frozen", ()),
                                    finish=getattr(state, "finish_train", None))
        except Diverged:
            return history, True
        steps += math.ceil(stats.images / batch_size)
        epoch += 1
        history.append({"epoch": epoch, "step": steps, "loss": stats.loss, "accuracy": stats.accuracy})
        if target is not None and stats.accuracy >= target:
            break
    return history, False


def check_frozen(state: TrialState) -> Check:
    total = sum(p.numel() for p in state.model.parameters())
    in_optimizer = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
    trained = sum(p.numel() for p in state.model.parameters() if p.requires_grad and id(p) in in_optimizer)
    if trained == total:
        return Check("frozen_parameters", False, f"all {total:,} parameters are trained")
    return Check("frozen_parameters", True,
                 f"only {trained:,} of {total:,} parameters ({trained / total:.1%}) are trained "
                 f"(finetune: {state.config.finetune}); the rest are frozen")


def check_augmentation(dataset: Dataset, index: int, augmentation: str) -> Check:
    torch.manual_seed(1)
    first = dataset[index]
    torch.manual_seed(2)
    second = dataset[index]
    if first is None or second is None:
        return Check("augmentation", None, "the first image of the subset is unreadable")
    if torch.equal(first[0], second[0]):
        return Check("augmentation", False, "the training transform is deterministic (no augmentation)")
    return Check("augmentation", True, f"augmentation {augmentation!r} is on: the same image loads "
                 "differently each time, so there is nothing fixed to memorise")


def label_agreement(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (cosine similarity) of ``labels``."""
    similarity = features @ features.T
    similarity.fill_diagonal_(-math.inf)
    return (labels[similarity.argmax(dim=1)] == labels).double().mean().item()


def check_labels(train_dir: str, indices: list[int], seed: int) -> Check:
    thumbnails = v2.Compose([v2.ToImage(), v2.Resize(THUMBNAIL, antialias=True),
                             v2.CenterCrop(THUMBNAIL), v2.ToDtype(torch.float32, scale=True)])
    data = decode(RobustImageFolder(train_dir, transform=thumbnails), indices)
    features = data.images.flatten(1)
    features = F.normalize(features - features.mean(dim=1, keepdim=True), dim=1)
    real = label_agreement(features, data.labels)
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.tensor([
        label_agreement(features, data.labels[torch.randperm(len(data.labels), generator=generator)])
        for _ in range(PERMUTATIONS)
    ])
    chance, spread = shuffled.mean().item(), shuffled.std().item()
    numbers = (f"an image's nearest neighbour by pixels shares its label {real:.1%} of the time, "
               f"{chance:.1%} +- {spread:.1%} with labels shuffled")
    if real > chance + 3 * max(spread, 1e-3):
        return Check("shuffled_labels", False, numbers)
    return Check("shuffled_labels", True, f"labels look unrelated to the images: {numbers} "
                 "(check the class folders; on fine-grained data pixels may not tell classes apart)")


def check_learning_rate(config: TrialConfig, data: Dataset, history: list[dict], diverged: bool,
                        passed: bool, *, batch_size: int, max_steps: int, probe: bool) -> Check:
    if diverged:
        at = history[-1]["step"] if history else 0
        return Check("learning_rate", True, f"the loss became NaN/inf after step {at}: lr {config.lr:.3g} "
                     "is too high (see `tuner diagnose lr-range`)")
    if passed or not probe or not history:
        return Check("learning_rate", None if not passed else False,
                     "not probed" if not passed else f"lr {config.lr:.3g} trains")
    # Compare at the end of the first epoch that reaches a quarter of the budget.
    mark = next(h for h in history if h["step"] >= min(max_steps // 4, history[-1]["step"]))
    results = []
    for factor in (LR_PROBE_FACTOR, 1 / LR_PROBE_FACTOR):
        state = TrialState(config.replace(lr=config.lr * factor), crops_on_device=False)
        probe_history, probe_diverged = _train(state, data, batch_size=batch_size,
                                               max_steps=mark["step"], target=None)
        loss = math.inf if probe_diverged or not probe_history else probe_history[-1]["loss"]
        results.append((config.lr * factor, loss))
    better = [(lr, loss) for lr, loss in results if loss <= LR_PROBE_GAIN * mark["loss"]]
    summary = ", ".join(f"lr {lr:.3g}: {loss:.3f}" for lr, loss in results)
    if better:
        lr, loss = min(better, key=lambda item: item[1])
        return Check("learning_rate", True, f"lr {config.lr:.3g} looks out of range: after "
                     f"{mark['step']} steps its loss is {mark['loss']:.3f}; {summary}")
    return Check("learning_rate", False, f"neither lr x {LR_PROBE_FACTOR:g} nor / {LR_PROBE_FACTOR:g} "
                 f"does clearly better after {mark['step']} steps (loss {mark['loss']:.3f}; {summary})")


def diagnose_overfit(
    config_path: str | Path, *, overrides: Optional[dict] = None, samples: int = 512,
    max_steps: int = 500, target_accuracy: float = 0.95, keep_augmentation: bool = False,
    probe_lr: bool = True, out_dir: Path = Path("diagnostics"),
) -> OverfitResult:
    if max_steps < 1:
        raise UserError(f"--max-steps: must be >= 1, got {max_steps}")
    if not 0 < target_accuracy <= 1:
        raise UserError(f"--target-acc: must be in (0, 1], got {target_accuracy}")
    config = load_config(config_path, overrides)
    changes = dict(train_subset=None, num_workers=0, max_steps_per_epoch=None)
    if not keep_augmentation:
        changes.update(augmentation="none", aug={})
    config = config.replace(**changes)
    # Per-sample crops even on a GPU: these checks look at single images, and their loaders are small.
    state = TrialState(config, crops_on_device=False)
    train = state.splits.train
    indices = subset_indices(len(train), samples, seed=config.seed, flag="--samples",
                             where=config.train_dir)
    augmentation = check_augmentation(train, indices[0], config.augmentation)
    data = Subset(train, indices) if augmentation.found else decode(train, indices)
    batch_size = min(config.batch_size, samples)
    history, diverged = _train(state, data, batch_size=batch_size, max_steps=max_steps,
                               target=target_accuracy)
    last = history[-1] if history else {"step": 0, "loss": math.nan, "accuracy": 0.0}
    passed = not diverged and last["accuracy"] >= target_accuracy
    result = OverfitResult(
        label=_label(config), samples=samples, target_accuracy=target_accuracy, max_steps=max_steps,
        passed=passed, steps=last["step"], final_loss=last["loss"], final_accuracy=last["accuracy"],
        diverged=diverged, history=history,
    )
    result.checks = [
        check_frozen(state),
        check_learning_rate(config, data, history, diverged, passed, batch_size=batch_size,
                            max_steps=max_steps, probe=probe_lr),
        check_labels(config.train_dir, indices, config.seed),
        augmentation,
    ]
    _write(result, Path(out_dir))
    return result


def _write(result: OverfitResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_overfit(result, out_dir / "overfit.png")
    summary = out_dir / "overfit.json"
    result.files = [str(plot), str(summary)]
    summary.write_text(json.dumps(result.to_dict(), indent=1))


def render(result: OverfitResult) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    how = "diverged" if result.diverged else (
        f"training accuracy {result.final_accuracy:.3f}, loss {result.final_loss:.4f}")
    lines = [f"overfit {result.samples} images ({result.label}): {verdict} after {result.steps} steps "
             f"({how}; target accuracy {result.target_accuracy:.2f}, budget {result.max_steps} steps)"]
    found = result.found()
    if not result.passed:
        lines.append("likely causes found: " + (", ".join(c.name for c in found) if found else
                                                 "none of those checked"))
    for check in result.checks:
        mark = {True: "FOUND", False: "ok", None: "-"}[check.found]
        lines.append(f"  [{mark:>5}] {check.name}: {check.detail}")
    lines.append(f"plot: {result.files[0]}; numbers: {result.files[1]}")
    return "\n".join(lines) + "\n"


def tracking_record(result: OverfitResult, source: str):
    return DiagnosticRecord(
        "overfit", f"overfit {result.label}",
        params={"config": result.label, "samples": result.samples, "target_accuracy": result.target_accuracy,
                "max_steps": result.max_steps, "source": source},
        metrics={"passed": float(result.passed), "steps": result.steps, "final_loss": result.final_loss,
                 "final_accuracy": result.final_accuracy},
        curves={"train_loss": [h["loss"] for h in result.history],
                "train_acc": [h["accuracy"] for h in result.history]},
        artifacts=[Path(f) for f in result.files],
        tags={"tuner.source": source, "tuner.overfit": "passed" if result.passed else "failed",
              **{f"tuner.check.{c.name}": _found_word(c.found) for c in result.checks}},
    )


def _found_word(found: Optional[bool]) -> str:
    return "not checked" if found is None else ("found" if found else "not found")
