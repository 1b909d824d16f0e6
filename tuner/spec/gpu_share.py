"""A spec's GPU share (``resources.gpu``) against the memory its trials were measured to need.

``tuner diagnose batch-size SPEC`` on a CUDA machine measures, per architecture/width of the spec,
the peak memory of one real training step at several batch sizes (``cuda-peak``), and the card's
memory. From that probe:

- ``advise_share`` says how many of the spec's trials fit on one card at the spec's LARGEST batch
  size (the worst trial a search can draw), and the ``resources.gpu`` that packs that many;
- ``check_share`` refuses, before a search starts, a fractional share whose trials cannot all fit:
  Ray packs ``floor(1 / share)`` trials on a card, and it counts shares, not bytes, so an oversize
  share fails only later, as out-of-memory errors in whichever trials happen to meet.

Each process also holds memory outside PyTorch's allocator (the CUDA context, cuDNN/cuBLAS
workspaces): the probe records what it saw (``context_bytes``); older probes get
``DEFAULT_CONTEXT_BYTES``. Only CUDA probes count here: the CPU probe's count of saved tensors is a
model of memory, not a measurement of a card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from tuner.errors import UserError
from trainables.config import TrialConfig

# What a CUDA process holds outside PyTorch's caching allocator: its context and library workspaces.
# Used only when the probe did not record its own; kept on the high side so the check errs safe.
DEFAULT_CONTEXT_BYTES = 768 * 2**20
# More trial processes than this on one card time-slice its SMs: each slows down and the aggregate
# hardly grows (bench/gpu_packing.py measures it), while each still holds a context and a loader.
MAX_TRIALS_PER_GPU = 8


@dataclass(frozen=True)
class TrialMemory:
    label: str  # arch (and width)
    batch_size: int
    bytes: int  # peak of one training step at batch_size, measured or interpolated from the probe


@dataclass(frozen=True)
class ShareAdvice:
    card_bytes: int
    usable_bytes: int  # the card minus the probe's margin
    context_bytes: int
    worst: TrialMemory
    trials_per_gpu: int  # 0: the worst trial does not fit on one card at all
    share: Optional[float]  # resources.gpu that packs trials_per_gpu trials; None when 0 fit

    def describe(self) -> str:
        need = _gib(self.worst.bytes + self.context_bytes)
        head = (f"the largest trial ({self.worst.label}, batch {self.worst.batch_size}) needs {need} GiB "
                f"with its CUDA context; {_gib(self.usable_bytes)} GiB of the card's "
                f"{_gib(self.card_bytes)} GiB are usable")
        if self.share is None:
            return head + ": it does not fit on one card; lower the largest batch_size"
        return head + f": {self.trials_per_gpu} per GPU, resources.gpu: {self.share:g}"


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f}"


def is_cuda_probe(probe: dict) -> bool:
    return probe.get("measure") == "cuda-peak" and bool(probe.get("device_total_bytes"))


def largest_batch(spec) -> int:
    """The largest batch a trial of ``spec`` can be given: the top of its batch_size choices or
    range, else its fixed batch_size, else TrialConfig's default."""
    for param in spec.space:
        if param.name == "batch_size":
            return int(max(param.choices) if param.choices else param.high)
    default = TrialConfig.__dataclass_fields__["batch_size"].default
    return int(spec.base_config().get("batch_size", default))


def trial_memory(result: dict, batch_size: int) -> TrialMemory:
    """One probed candidate's peak at ``batch_size``: the probe's own measurement at that batch,
    else its linear fit (memory grows linearly with the batch), never below the largest measured
    point under it."""
    label = result["arch"] + (f" w{float(result['width']):g}" if float(result["width"]) != 1.0 else "")
    measured = {int(b): m for b, m, _ in result.get("probes", []) if m is not None}
    if batch_size in measured:
        return TrialMemory(label, batch_size, int(measured[batch_size]))
    below = [m for b, m in measured.items() if b <= batch_size]
    estimate = max(below, default=0)
    if result.get("fixed_bytes") is not None and result.get("bytes_per_image") is not None:
        estimate = max(estimate, result["fixed_bytes"] + result["bytes_per_image"] * batch_size)
    elif not below:
        estimate = result["bytes_at_max"]  # one point only: the best the probe can say
    return TrialMemory(label, batch_size, int(estimate))


def advise_share(probe: dict, spec) -> ShareAdvice:
    """Trials per card and the share that packs them, from a CUDA probe and the spec's batches."""
    batch = largest_batch(spec)
    worst = max((trial_memory(r, batch) for r in probe["results"]), key=lambda t: t.bytes)
    card = int(probe["device_total_bytes"])
    usable = int(card * (1.0 - float(probe.get("margin", 0.1))))
    context = int(probe.get("context_bytes") or DEFAULT_CONTEXT_BYTES)
    fit = min(usable // (worst.bytes + context), MAX_TRIALS_PER_GPU)
    # Rounded down so that trials_per_gpu shares never add up to more than one card.
    share = math.floor(1000 / fit) / 1000 if fit else None
    return ShareAdvice(card, usable, context, worst, int(fit), share)


def check_share(probe: dict, spec, probe_name: str) -> Optional[ShareAdvice]:
    """Refuses a fractional ``resources.gpu`` whose packed trials exceed the card by the probe's
    measurement. Returns the advice it checked against (None: nothing to check)."""
    share = float(spec.resources.gpu)
    if not 0 < share < 1 or not is_cuda_probe(probe):
        return None
    image_size = int(spec.base_config().get("image_size", 0))
    if probe.get("image_size") != image_size:
        raise UserError(
            f"{spec.source}: resources.gpu {share:g}: the probe {probe_name} measured "
            f"{probe.get('image_size')} px images, the spec trains at {image_size} px; probe again: "
            f"tuner diagnose batch-size {spec.source}")
    advice = advise_share(probe, spec)
    packed = int(1 / share + 1e-9)
    need = packed * (advice.worst.bytes + advice.context_bytes)
    if need > advice.usable_bytes:
        suggestion = (f"use resources.gpu: {advice.share:g} ({advice.trials_per_gpu} per GPU)"
                      if advice.share else "lower the largest batch_size")
        raise UserError(
            f"{spec.source}: resources.gpu {share:g} packs {packed} trials on a card, and by "
            f"{probe_name} ({probe.get('device_name', 'the card')}) {packed} x "
            f"{_gib(advice.worst.bytes + advice.context_bytes)} GiB ({advice.worst.label} at batch "
            f"{advice.worst.batch_size}, with its CUDA context) = {_gib(need)} GiB exceeds the "
            f"{_gib(advice.usable_bytes)} GiB usable of {_gib(advice.card_bytes)} GiB; {suggestion}")
    return advice
