"""The batch-size probe file: written by ``tuner diagnose batch-size``, read by a spec's
``batch_size: {choice: auto}``.

Its home is the spec side because the spec READS it (the probe command, which imports torch, writes
it through ``PROBE_FORMAT``); a spec never imports the probe itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tuner.errors import UserError

PROBE_FORMAT = "tuner.batch_size_probe/1"


def probe_path(config_path: str | Path) -> Path:
    """Where the probe of ``search_spaces/x.yaml`` is written: ``search_spaces/x.batch_size.json``."""
    path = Path(config_path)
    return path.with_name(path.stem + ".batch_size.json")


def load_probe(path: str | Path) -> dict:
    """Reads a probe JSON written by ``tuner diagnose batch-size`` (checks its format)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no batch-size probe; run `tuner diagnose batch-size` on the spec first")
    try:
        probe = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not a batch-size probe (malformed JSON: {err.msg})") from None
    if not isinstance(probe, dict) or probe.get("format") != PROBE_FORMAT or not probe.get("results"):
        raise UserError(f"{path}: not a batch-size probe (format must be {PROBE_FORMAT!r} with results)")
    return probe


def max_batch_size(probe: dict, *, arch: Optional[str] = None, width: Optional[float] = None) -> int:
    """The largest batch that fits every probed candidate matching ``arch``/``width`` (None: any)."""
    sizes = [
        r["max_batch_size"] for r in probe["results"]
        if (arch is None or r["arch"] == arch) and (width is None or float(r["width"]) == float(width))
    ]
    if not sizes:
        raise UserError(f"batch-size probe has no entry for arch={arch} width={width}; probe it first")
    return min(sizes)


def power_of_two_choices(probe: dict, *, arch=None, width=None, minimum: int = 16) -> list[int]:
    """Powers of two from ``minimum`` up to the probed maximum: ``batch_size: {choice: auto}``."""
    top = max_batch_size(probe, arch=arch, width=width)
    choices = [2**k for k in range(0, top.bit_length()) if minimum <= 2**k <= top]
    return choices or [top]
