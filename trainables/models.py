"""Backbone registry: name -> builder(num_classes, width, growth_rate, small_input, ...).

Journal: "go wider" beat "go deeper", so every resnet takes a ``width`` multiplier that scales all
four stages (WRN-style), and densenets take their ``growth_rate``. Images under 64 px get a small-input
stem (3x3 stride-1 conv, no max-pool), otherwise a 32 px image is 1x1 after the stem.

Pretrained weights come from torchvision's weights API (downloaded once into ``$TORCH_HOME``) or from
a local ``weights_path``; a machine that can do neither gets a ``PretrainedWeightsUnavailable`` naming
both ways out, never a stack trace from urllib.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainables.config import ConfigError
from trainables.registry import Registry

log = logging.getLogger(__name__)

SMALL_INPUT_BELOW = 64  # pixels: under this the ImageNet stem throws away too much resolution
RESNET_STAGE_CHANNELS = (64, 128, 256, 512)  # torchvision's planes per stage at width 1.0


class PretrainedWeightsUnavailable(ConfigError):
    """Pretrained weights were asked for but can be neither downloaded nor read from a file."""


@dataclass(frozen=True)
class Backbone:
    build: Callable[..., nn.Module]
    weights: Optional[tv.WeightsEnum]  # torchvision's default pretrained weights, if any
    has_width: bool
    has_growth_rate: bool
    head: str  # attribute holding the classifier: "fc" (resnets) or "classifier" (densenets)


MODELS: Registry[Backbone] = Registry("architecture")

_RESNETS = {  # block, blocks per stage, weights, bottleneck width per group
    "resnet18": (BasicBlock, [2, 2, 2, 2], tv.ResNet18_Weights.DEFAULT, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], tv.ResNet34_Weights.DEFAULT, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], tv.ResNet50_Weights.DEFAULT, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], tv.ResNet101_Weights.DEFAULT, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], tv.ResNet152_Weights.DEFAULT, 64),
    # Wide ResNets: the bottleneck's inner width doubled (torchvision's width_per_group=128).
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], tv.Wide_ResNet50_2_Weights.DEFAULT, 128),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], tv.Wide_ResNet101_2_Weights.DEFAULT, 128),
}

_DENSENETS = {  # growth rate, block config, initial features (torchvision's values), weights
    "densenet121": (32, (6, 12, 24, 16), 64, tv.DenseNet121_Weights.DEFAULT),
    "densenet161": (48, (6, 12, 36, 24), 96, tv.DenseNet161_Weights.DEFAULT),
    "densenet169": (32, (6, 12, 32, 32), 64, tv.DenseNet169_Weights.DEFAULT),
    "densenet201": (32, (6, 12, 48, 32), 64, tv.DenseNet201_Weights.DEFAULT),
}

# torchvision's densenet files predate the ban on '.' in module names: 'norm.1' is now 'norm1'.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class ScaledResNet(tv.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by ``width``.

    Built directly at the scaled size (a resnet152 at width 0.125 never allocates the full one); at
    width 1.0 its parameter names and shapes are torchvision's, so pretrained weights load.
    """

    def __init__(self, block, layers, *, num_classes: int, width: float, width_per_group: int):
        nn.Module.__init__(self)
        planes = [max(1, round(p * width)) for p in RESNET_STAGE_CHANNELS]
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = planes[0], 1, 1, width_per_group
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _register_resnet(name: str, block, layers, weights, width_per_group: int) -> None:
    def build(*, num_classes: int, width: float = 1.0, small_input: bool = False, **_) -> nn.Module:
        model = ScaledResNet(
            block, layers, num_classes=num_classes, width=width, width_per_group=width_per_group
        )
        if small_input:
            out = model.conv1.out_channels
            model.conv1 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
        return model

    MODELS.register(name)(Backbone(build, weights, has_width=True, has_growth_rate=False, head="fc"))


def _register_densenet(name: str, growth, blocks, init_features, weights) -> None:
    def build(
        *, num_classes: int, growth_rate: Optional[int] = None, small_input: bool = False, **_
    ) -> nn.Module:
        model = tv.DenseNet(
            growth_rate=growth_rate or growth,
            block_config=blocks,
            num_init_features=init_features,
            num_classes=num_classes,
        )
        if small_input:
            model.features.conv0 = nn.Conv2d(
                3, init_features, kernel_size=3, stride=1, padding=1, bias=False
            )
            nn.init.kaiming_normal_(model.features.conv0.weight)
            model.features.pool0 = nn.Identity()
        return model

    MODELS.register(name)(
        Backbone(build, weights, has_width=False, has_growth_rate=True, head="classifier")
    )


for _name, _spec in _RESNETS.items():
    _register_resnet(_name, *_spec)
for _name, _spec in _DENSENETS.items():
    _register_densenet(_name, *_spec)


def build_model(
    arch: str,
    *,
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    growth_rate: Optional[int] = None,
    pretrained: bool = False,
    weights_path: Optional[str] = None,
) -> nn.Module:
    """Builds a backbone with a fresh ``num_classes`` head; pretrained weights fill everything else."""
    try:
        backbone = MODELS.get(arch)
    except KeyError as err:
        raise ConfigError(f"arch: {err.args[0]}") from None
    if width != 1.0 and not backbone.has_width:
        raise ConfigError(f"width: {arch} has no width multiplier (only resnets do), got {width}")
    if growth_rate is not None and not backbone.has_growth_rate:
        raise ConfigError(f"growth_rate: {arch} has no growth rate (only densenets do)")
    if pretrained and (width != 1.0 or growth_rate is not None):
        raise ConfigError("pretrained: weights exist only for width 1.0 and the default growth rate")
    small = image_size < SMALL_INPUT_BELOW
    model = backbone.build(
        num_classes=num_classes, width=width, growth_rate=growth_rate, small_input=small
    )
    if pretrained:
        _load_backbone_weights(model, _pretrained_state(arch, backbone, weights_path), arch)
    return model


def _pretrained_state(arch: str, backbone: Backbone, weights_path: Optional[str]) -> dict:
    if weights_path:
        return _read_weights_file(Path(weights_path))
    if backbone.weights is None:
        raise PretrainedWeightsUnavailable(f"pretrained: torchvision has no weights for {arch}")
    try:  # torchvision's weights API downloads once into $TORCH_HOME/hub/checkpoints and reuses it
        state = backbone.weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket and HTTP errors, hash mismatch: "not obtainable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainedWeightsUnavailable(
            f"pretrained: cannot download the {arch} weights from {backbone.weights.url} "
            f"({type(err).__name__}: {reason}); when offline, copy that file into "
            f"{torch.hub.get_dir()}/checkpoints/ or set weights_path to a local .pth state_dict"
        ) from None
    return _rename_old_densenet_keys(state)


def _read_weights_file(path: Path) -> dict:
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"weights_path: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, a truncated file, not a torch file at all
        raise PretrainedWeightsUnavailable(
            f"weights_path: {path} is not a loadable state_dict ({str(err).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # one of our checkpoints
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


def _load_backbone_weights(model: nn.Module, state: dict, arch: str) -> None:
    """Loads every tensor whose name and shape match; the new head and a small-input stem stay fresh."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise PretrainedWeightsUnavailable(f"pretrained: no tensor of the weights fits {arch}")
    fresh = sorted(k for k in own if k not in usable)
    model.load_state_dict(usable, strict=False)
    log.info("pretrained %s: %d tensors loaded, %d fresh (%s)", arch, len(usable), len(fresh),
             ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""))


def default_weights_normalisation(arch: str) -> Optional[tuple[list[float], list[float]]]:
    """Mean/std that the pretrained weights were trained with (ImageNet's for torchvision)."""
    weights = MODELS.get(arch).weights
    if weights is None:
        return None
    preset = weights.transforms()
    return list(preset.mean), list(preset.std)


def classifier_head(model: nn.Module, arch: str) -> nn.Module:
    """The classifier: ``fc`` for resnets, ``classifier`` for densenets."""
    return getattr(model, MODELS.get(arch).head)


def freeze_all_but_head(model: nn.Module, arch: str) -> list[nn.Parameter]:
    """finetune=head: the backbone's parameters stop requiring grad; returns the head's parameters.

    The backbone's BatchNorm statistics must stay frozen too (the engine keeps ``frozen_modules`` in
    eval mode), otherwise "frozen" features would still drift with every training batch.
    """
    head_ids = {id(p) for p in classifier_head(model, arch).parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in head_ids)
    return [p for p in model.parameters() if id(p) in head_ids]


def frozen_modules(model: nn.Module, arch: str) -> list[nn.Module]:
    """Direct children of ``model`` other than the head: what head-only training keeps in eval mode."""
    head = classifier_head(model, arch)
    return [child for child in model.children() if child is not head]
