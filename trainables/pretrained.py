"""Pretrained weights for a backbone: torchvision's download, or a local ``weights_path`` (offline).

A machine that can do neither gets a ``PretrainedWeightsUnavailable`` naming both ways out, never a
stack trace from urllib. Only tensors whose name and shape match are loaded: a fresh ``num_classes``
head and a small-input stem whose shape changed stay freshly initialised.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision import models as tv

from trainables.errors import ConfigError

log = logging.getLogger(__name__)

# torchvision's densenet files predate the ban on '.' in module names: 'norm.1' is now 'norm1'.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class PretrainedWeightsUnavailable(ConfigError):
    """Pretrained weights were asked for but can be neither downloaded nor read from a file."""


def pretrained_state(arch: str, weights: Optional[tv.WeightsEnum], weights_path: Optional[str]) -> dict:
    """The state_dict to start ``arch`` from: ``weights_path`` when given, else torchvision's."""
    if weights_path:
        return read_weights_file(Path(weights_path))
    if weights is None:
        raise PretrainedWeightsUnavailable(f"pretrained: torchvision has no weights for {arch}")
    try:  # torchvision's weights API downloads once into $TORCH_HOME/hub/checkpoints and reuses it
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket and HTTP errors, hash mismatch: "not obtainable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainedWeightsUnavailable(
            f"pretrained: cannot download the {arch} weights from {weights.url} "
            f"({type(err).__name__}: {reason}); when offline, copy that file into "
            f"{torch.hub.get_dir()}/checkpoints/ or set weights_path to a local .pth state_dict"
        ) from None
    return _rename_old_densenet_keys(state)


def read_weights_file(path: Path) -> dict:
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"weights_path: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, a truncated file, not a torch file at all
        raise PretrainedWeightsUnavailable(
            f"weights_path: {path} is not a loadable state_dict ({str(err).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("ema"), dict):  # one of ours, with EMA
        state = state["ema"]["model"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):  # one of our checkpoints
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsUnavailable(f"weights_path: {path} holds no state_dict")
    return _rename_old_densenet_keys(state)


def _rename_old_densenet_keys(state: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def load_backbone_weights(model: nn.Module, state: dict, arch: str) -> None:
    """Loads every tensor whose name and shape match; the new head and a small-input stem stay fresh."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise PretrainedWeightsUnavailable(f"pretrained: no tensor of the weights fits {arch}")
    fresh = sorted(k for k in own if k not in usable)
    model.load_state_dict(usable, strict=False)
    log.info("pretrained %s: %d tensors loaded, %d fresh (%s)", arch, len(usable), len(fresh),
             ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""))
