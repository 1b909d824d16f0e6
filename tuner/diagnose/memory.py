"""Memory of one training step: the two measures of ``tuner diagnose batch-size``, and sizes.

- ``measure_cuda_peak``: the peak of memory reserved by PyTorch's CUDA allocator during one real step
  (forward, backward, optimizer step, exactly as the engine runs it: bf16 autocast, channels_last).
- ``measure_saved_tensors``: a deterministic count, so the answer does not depend on what else the
  machine runs: parameters + gradients + optimizer state + every tensor that autograd saves for
  backward (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once; the input batch
  is among them, the first convolution saves it). Transient buffers are not counted: the margin of
  ``--margin`` is there for them.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass

import torch

from tuner.diagnose.common import TensorImages
from tuner.errors import UserError
from trainables.data import make_loader
from trainables.engine import train_one_epoch

GiB, MiB, KiB = 2**30, 2**20, 2**10

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_memory_size(text: str, *, flag: str = "--memory-budget") -> int:
    """``2GiB``, ``512MiB``, ``1.5G`` (binary) or ``2GB`` (decimal) -> bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise UserError(f"{flag}: expected a size like 2GiB, 512MiB or 1500000000, got {text!r}")
    number, prefix, binary, byte = match.groups()
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    base = 1000 if (prefix and byte and not binary) else 1024
    size = int(float(number) * base**power)
    if size <= 0:
        raise UserError(f"{flag}: must be > 0, got {text!r}")
    return size


def format_bytes(size: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


@dataclass
class ProbeSettings:
    device: torch.device
    measure: str  # saved-tensors | cuda-peak
    limit_bytes: int
    margin: float
    image_size: int
    num_classes: int
    optimizer: str
    max_batch: int

    @property
    def usable_bytes(self) -> int:
        return int(self.limit_bytes * (1.0 - self.margin))



def _storage_key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(
        t.numel() * t.element_size()
        for entry in optimizer.state.values() for t in entry.values() if torch.is_tensor(t)
    )
    return params + grads + state


def _random_batch(settings: ProbeSettings, batch: int):
    """A one-batch loader of random images, built like a trial's (so the engine sees its own format)."""
    size = settings.image_size
    data = TensorImages(torch.randn(batch, 3, size, size), torch.randint(0, settings.num_classes, (batch,)))
    return make_loader(data, batch_size=batch, shuffle=False, num_workers=0, seed=0, pin_memory=False)


def _one_step(model, optimizer, settings: ProbeSettings, batch: int) -> None:
    train_one_epoch(model, _random_batch(settings, batch), optimizer, settings.device, max_steps=1)


def measure_saved_tensors(model, optimizer, settings: ProbeSettings, batch: int) -> int:
    """Bytes of one step by count: params, grads, optimizer state and the tensors saved for backward
    (the input batch among them: the first convolution saves it)."""
    saved: dict[tuple, int] = {}
    own = {_storage_key(p) for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in own:
            saved[key] = key[1]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _one_step(model, optimizer, settings, batch)
    return _state_bytes(model, optimizer) + sum(saved.values())


def measure_cuda_peak(model, optimizer, settings: ProbeSettings, batch: int) -> int:
    """Peak bytes reserved by the CUDA caching allocator during one step."""
    device = settings.device
    torch.cuda.synchronize(device)
    release(device)  # blocks cached by a larger earlier probe would count as this one's peak
    torch.cuda.reset_peak_memory_stats(device)
    _one_step(model, optimizer, settings, batch)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_reserved(device))


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
