"""``tuner diagnose batch-size``: per architecture (and width), the largest batch that trains one step.

The journal's ritual: before a search, find for each architecture the largest batch that fits the GPU.
Here each candidate trains one real step (forward, backward, optimizer step, exactly as the engine
does) at batch sizes found by doubling, then bisection (its first two guesses interpolated linearly,
since memory grows linearly with the batch). What "fits" depends on the device (see ``memory``):

- CUDA: the measured peak of memory reserved by PyTorch's allocator, against the card's memory times
  the spec's GPU share, minus a safety margin (default 10 %); an out-of-memory error does not fit.
- CPU (or ``--measure saved-tensors``): a deterministic count of parameters, gradients, optimizer
  state and the tensors autograd saves for backward, against ``--memory-budget`` (default 2 GiB)
  minus the margin.

The result is a table and a JSON file beside the spec (``<spec stem>.batch_size.json``, see
``probe_path``) that a search spec can use through ``load_probe`` / ``max_batch_size``.
"""

from __future__ import annotations

import io
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from rich.console import Console
from rich.table import Table
from tuner.diagnose.common import load_config, load_spec_if_any
from tuner.diagnose.tracking import DiagnosticRecord
from tuner.diagnose.memory import (GiB, ProbeSettings, format_bytes, is_out_of_memory,
                                   measure_cuda_peak, measure_saved_tensors, parse_memory_size, release)
from tuner.errors import UserError
from tuner.spec.batch_probe import PROBE_FORMAT, probe_path
from tuner.spec.gpu_share import advise_share, is_cuda_probe
from trainables.config import ConfigError, TrialConfig
from trainables.data import RobustImageFolder
from trainables.models import MODELS, build_model
from trainables.optim import build_optimizer

DEFAULT_CPU_BUDGET = 2 * GiB
DEFAULT_MARGIN = 0.10  # fraction of the limit kept free: allocator slack, data loading, other tensors
DEFAULT_MAX_BATCH = 4096
GUESSED_STEPS = 2  # bisection steps that use a linear-interpolation guess before plain halving
MEASURES = ("auto", "saved-tensors", "cuda-peak")
STATEFUL_OPTIMIZERS = ("adamw", "adam")  # two moments per parameter: the worst case of a search


@dataclass(frozen=True)
class Candidate:
    arch: str
    width: float = 1.0
    growth_rate: Optional[int] = None

    @property
    def label(self) -> str:
        extra = f" w{self.width:g}" if self.width != 1.0 else ""
        return self.arch + extra + (f" k{self.growth_rate}" if self.growth_rate else "")


@dataclass
class CandidateResult:
    arch: str
    width: float
    growth_rate: Optional[int]
    max_batch_size: int
    capped: bool  # the cap (--max-batch) fitted: the true maximum is larger
    bytes_at_max: int
    fixed_bytes: Optional[int]  # measure's part that does not grow with the batch (estimate)
    bytes_per_image: Optional[float]  # measure's growth per image (estimate)
    probes: list = field(default_factory=list)  # [batch_size, bytes or null (out of memory), fits]
    seconds: float = 0.0


class BudgetTooSmall(UserError):
    """Batch size 1 does not fit; ``needed`` is its measure in bytes (None: out of memory)."""

    def __init__(self, message: str, needed: Optional[int] = None) -> None:
        super().__init__(message)
        self.needed = needed


# --- the search ---------------------------------------------------------------------------------
def largest_fitting(
    measure: Callable[[int], Optional[int]], usable: int, cap: int
) -> tuple[int, bool, dict[int, Optional[int]]]:
    """Largest batch b <= cap with measure(b) <= usable: doubling, then bisection.

    ``measure`` returns bytes or None (out of memory). Returns (batch, capped, {batch: bytes}).
    Raises BudgetTooSmall when batch 1 does not fit.
    """
    seen: dict[int, Optional[int]] = {}

    def fits(batch: int) -> bool:
        seen[batch] = measure(batch)
        return seen[batch] is not None and seen[batch] <= usable

    if not fits(1):
        raise BudgetTooSmall("batch size 1 does not fit", needed=seen[1])
    lo, hi = 1, None
    while lo < cap and hi is None:  # doubling
        batch = min(2 * lo, cap)
        if fits(batch):
            lo = batch
        else:
            hi = batch
    if hi is None:
        return lo, True, seen
    for step in range(10_000):  # bisection
        if hi - lo <= 1:
            break
        middle = (lo + hi) // 2
        if step < GUESSED_STEPS and seen[hi] is not None and seen[hi] > seen[lo]:
            guess = lo + int((usable - seen[lo]) * (hi - lo) // (seen[hi] - seen[lo]))
            middle = min(max(guess, lo + 1), hi - 1)
        if fits(middle):
            lo = middle
        else:
            hi = middle
    return lo, False, seen


def _linear_fit(seen: dict[int, Optional[int]]) -> tuple[Optional[int], Optional[float]]:
    points = sorted((b, m) for b, m in seen.items() if m is not None)
    if len(points) < 2:
        return None, None
    (b0, m0), (b1, m1) = points[0], points[-1]
    per_image = (m1 - m0) / (b1 - b0)
    return int(m0 - per_image * b0), per_image


def probe_candidate(candidate: Candidate, settings: ProbeSettings) -> CandidateResult:
    """Builds the model once and searches its largest batch; frees the device afterwards."""
    start = time.perf_counter()
    model = build_model(
        candidate.arch, num_classes=settings.num_classes, image_size=settings.image_size,
        width=candidate.width, growth_rate=candidate.growth_rate,
    ).to(settings.device)
    if settings.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), name=settings.optimizer, lr=1e-3)
    step = measure_cuda_peak if settings.measure == "cuda-peak" else measure_saved_tensors

    def measure(batch: int) -> Optional[int]:
        try:
            return step(model, optimizer, settings, batch)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                if batch == 1:
                    raise UserError(
                        f"--image-size: {candidate.label} cannot train on {settings.image_size} px "
                        f"images ({str(err).splitlines()[0]})"
                    ) from None
                raise
        finally:
            optimizer.zero_grad(set_to_none=True)
        # Out of memory. Freed only here: inside `except` the traceback still holds the step's tensors.
        release(settings.device)
        return None

    try:
        best, capped, seen = largest_fitting(measure, settings.usable_bytes, settings.max_batch)
    except BudgetTooSmall as err:
        needs = "out of memory" if err.needed is None else f"needs {format_bytes(err.needed)}"
        raise BudgetTooSmall(
            f"--memory-budget: {format_bytes(settings.usable_bytes)} usable (limit "
            f"{format_bytes(settings.limit_bytes)} minus {settings.margin:.0%} margin) is too small "
            f"for {candidate.label} at batch size 1 ({needs} by the {settings.measure} measure)"
        ) from None
    finally:
        del model, optimizer
        release(settings.device)
    fixed, per_image = _linear_fit(seen)
    return CandidateResult(
        arch=candidate.arch, width=candidate.width, growth_rate=candidate.growth_rate,
        max_batch_size=best, capped=capped, bytes_at_max=int(seen[best]),
        fixed_bytes=fixed, bytes_per_image=per_image,
        probes=[[b, m, m is not None and m <= settings.usable_bytes] for b, m in sorted(seen.items())],
        seconds=time.perf_counter() - start,
    )


# --- candidates and settings from CONFIG ----------------------------------------------------------
def candidates_from(config: TrialConfig, spec, *, archs=None, widths=None) -> list[Candidate]:
    """(arch, width, growth) pairs to probe: the spec's choices (the largest of a range), or flags."""
    space = {p.name: p for p in spec.space} if spec is not None else {}
    if archs:
        for arch in archs:
            if arch not in MODELS:
                raise UserError(f"--arch: unknown architecture {arch!r}; valid: {', '.join(MODELS.names())}")
    else:
        archs = list(space["arch"].choices) if "arch" in space else [config.arch]
    found: list[Candidate] = []
    for arch in archs:
        backbone = MODELS.get(arch)
        arch_widths = [1.0]
        if backbone.has_width:
            arch_widths = widths or _values_for(space.get("width"), arch, config.width, 1.0)
        growths = [None]
        if backbone.has_growth_rate:
            growths = _values_for(space.get("growth_rate"), arch, config.growth_rate, None)
        for width in arch_widths:
            for growth in growths:
                candidate = Candidate(arch, float(width), None if growth is None else int(growth))
                if candidate not in found:
                    found.append(candidate)
    return found


def _values_for(param, arch: str, fixed, unset) -> list:
    """Values a trial of ``arch`` can take: ``fixed`` when not searched, ``unset`` when its
    ``when`` condition leaves it out for this arch (the trial then keeps TrialConfig's default)."""
    if param is None:
        return [fixed]
    if not all(arch in allowed for name, allowed in param.when if name == "arch"):
        return [unset]
    if param.choices:
        return list(param.choices)
    return [param.high]  # a range: the widest network is the one that must fit


def settings_for(
    config: TrialConfig, spec, *, image_size: Optional[int], memory_budget: Optional[str],
    margin: float, measure: str, num_classes: Optional[int], max_batch: int,
) -> ProbeSettings:
    if image_size is not None:
        try:
            config = config.replace(image_size=image_size)
        except ConfigError as err:
            raise UserError(f"--image-size: {err}") from None
    if not 0 <= margin < 1:
        raise UserError(f"--margin: must be in [0, 1), got {margin}")
    if max_batch < 1:
        raise UserError(f"--max-batch: must be >= 1, got {max_batch}")
    device = _resolve_device(config.device)
    if measure == "auto":
        measure = "cuda-peak" if device.type == "cuda" else "saved-tensors"
    if measure == "cuda-peak" and device.type != "cuda":
        raise UserError(f"--measure: cuda-peak needs a CUDA device, the config resolves to {device}")
    if memory_budget is not None:
        limit = parse_memory_size(memory_budget)
    elif device.type == "cuda":
        share = spec.resources.gpu if spec is not None and 0 < spec.resources.gpu < 1 else 1.0
        limit = int(torch.cuda.get_device_properties(device).total_memory * share)
    else:
        limit = DEFAULT_CPU_BUDGET
    if num_classes is None:
        num_classes = len(RobustImageFolder(config.train_dir).classes)
    return ProbeSettings(
        device=device, measure=measure, limit_bytes=limit, margin=margin,
        image_size=config.image_size, num_classes=num_classes,
        optimizer=_worst_optimizer(config, spec), max_batch=max_batch,
    )


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {name} asked for, but this machine has no usable CUDA GPU")
    return torch.device(name)


def _worst_optimizer(config: TrialConfig, spec) -> str:
    options = [config.optimizer]
    if spec is not None:
        options += [c for p in spec.space if p.name == "optimizer" for c in p.choices]
    for name in STATEFUL_OPTIMIZERS:
        if name in options:
            return name
    return config.optimizer


# --- the probe file -------------------------------------------------------------------------------
def probe_document(settings: ProbeSettings, results: list[CandidateResult], source: str) -> dict:
    device = settings.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "format": PROBE_FORMAT,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "device_name": name,
        "measure": settings.measure,
        "limit_bytes": settings.limit_bytes,
        "margin": settings.margin,
        "usable_bytes": settings.usable_bytes,
        "image_size": settings.image_size,
        "num_classes": settings.num_classes,
        "optimizer": settings.optimizer,
        "max_batch": settings.max_batch,
        **card_memory(device),
        "results": [asdict(r) for r in results],
    }


def card_memory(device: torch.device) -> dict:
    """The card's memory and what this process holds outside PyTorch's allocator (CUDA context,
    library workspaces): what ``tuner.spec.gpu_share`` needs to pack trials. Read after the probes,
    with the cache emptied; another process on the card makes it larger, which errs safe."""
    if device.type != "cuda":
        return {"device_total_bytes": None, "context_bytes": None}
    release(device)
    free, total = torch.cuda.mem_get_info(device)
    outside = total - free - torch.cuda.memory_reserved(device)
    return {"device_total_bytes": int(total), "context_bytes": int(max(outside, 0))}


# --- the command ----------------------------------------------------------------------------------
@dataclass
class BatchSizeReport:
    document: dict
    out: Path


def diagnose_batch_size(
    config_path: str | Path, *, overrides: Optional[dict] = None, archs=None, widths=None,
    image_size: Optional[int] = None, memory_budget: Optional[str] = None,
    margin: float = DEFAULT_MARGIN, measure: str = "auto", num_classes: Optional[int] = None,
    max_batch: int = DEFAULT_MAX_BATCH, out: Optional[Path] = None, progress=None,
) -> BatchSizeReport:
    """Probes every candidate of CONFIG and writes the probe JSON (beside CONFIG unless ``out``)."""
    overrides = dict(overrides or {})
    config = load_config(config_path, overrides)
    spec = load_spec_if_any(config_path, overrides)
    if "arch" in overrides and not archs:
        archs = [overrides["arch"]]
    if "width" in overrides and not widths:
        widths = [overrides["width"]]
    candidates = candidates_from(config, spec, archs=archs, widths=widths)
    settings = settings_for(
        config, spec, image_size=image_size, memory_budget=memory_budget, margin=margin,
        measure=measure, num_classes=num_classes, max_batch=max_batch,
    )
    results = []
    for candidate in candidates:
        results.append(probe_candidate(candidate, settings))
        if progress is not None:
            progress(results[-1])
    document = probe_document(settings, results, str(config_path))
    if spec is not None and is_cuda_probe(document):
        advice = advise_share(document, spec)
        document["gpu_share"] = {**asdict(advice), "advice": advice.describe()}
    out = Path(out) if out is not None else probe_path(config_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(json.dumps(document, indent=1))
    partial.replace(out)
    return BatchSizeReport(document, out)


def render_table(document: dict) -> str:
    title = (
        f"largest batch per architecture on {document['device']} ({document['measure']}: "
        f"{format_bytes(document['usable_bytes'])} usable of {format_bytes(document['limit_bytes'])}, "
        f"{document['image_size']} px, {document['optimizer']})"
    )
    table = Table(title=title)
    for column in ("arch", "width", "growth", "max batch", "memory at max", "per image", "probes", "s"):
        table.add_column(column, justify="left" if column == "arch" else "right")
    for r in document["results"]:
        per_image = r["bytes_per_image"]
        table.add_row(
            r["arch"], f"{r['width']:g}", str(r["growth_rate"] or "-"),
            (">= " if r["capped"] else "") + str(r["max_batch_size"]),
            format_bytes(r["bytes_at_max"]), format_bytes(per_image) if per_image else "-",
            str(len(r["probes"])), f"{r['seconds']:.1f}",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=140).print(table)
    return buffer.getvalue()


def tracking_record(report: BatchSizeReport, source: str):
    document = report.document
    params = {k: document[k] for k in ("device", "device_name", "measure", "limit_bytes", "margin",
                                       "image_size", "num_classes", "optimizer", "max_batch")}
    metrics = {}
    for r in document["results"]:
        name = r["arch"] + (f"_w{r['width']:g}" if r["width"] != 1.0 else "")
        name += f"_k{r['growth_rate']}" if r["growth_rate"] else ""
        metrics[f"max_batch_size.{name}"] = r["max_batch_size"]
        metrics[f"bytes_at_max.{name}"] = r["bytes_at_max"]
    return DiagnosticRecord("batch-size", f"batch-size {Path(source).name}", params={**params, "source": source},
                            metrics=metrics, artifacts=[report.out], tags={"tuner.source": source})
