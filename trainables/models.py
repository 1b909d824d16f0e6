"""Backbone registry: name -> builder(num_classes, width, growth_rate, small_input, pretrained, ...).

Journal: "go wider" beat "go deeper", so every resnet takes a ``width`` multiplier that scales all
four stages (WRN-style), and densenets take their ``growth_rate``. Images under 64 px get a small-input
stem (3x3 stride-1 conv, no max-pool), otherwise a 32 px image is 1x1 after the stem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainables.registry import Registry

SMALL_INPUT_BELOW = 64  # pixels: under this the ImageNet stem throws away too much resolution


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but can be neither downloaded nor read from a file."""


@dataclass(frozen=True)
class Backbone:
    build: Callable[..., nn.Module]
    weights: Optional[tv.WeightsEnum]  # torchvision's default pretrained weights, if any
    has_width: bool
    has_growth_rate: bool


MODELS: Registry[Backbone] = Registry("architecture")

_RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], tv.ResNet18_Weights.DEFAULT, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], tv.ResNet34_Weights.DEFAULT, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], tv.ResNet50_Weights.DEFAULT, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], tv.ResNet101_Weights.DEFAULT, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], tv.ResNet152_Weights.DEFAULT, 64),
    # Wide ResNets: the bottleneck's inner width doubled (torchvision's width_per_group=128).
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], tv.Wide_ResNet50_2_Weights.DEFAULT, 128),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], tv.Wide_ResNet101_2_Weights.DEFAULT, 128),
}

_DENSENETS = {  # growth rate, block config, initial features (torchvision's values)
    "densenet121": (32, (6, 12, 24, 16), 64, tv.DenseNet121_Weights.DEFAULT),
    "densenet161": (48, (6, 12, 36, 24), 96, tv.DenseNet161_Weights.DEFAULT),
    "densenet169": (32, (6, 12, 32, 32), 64, tv.DenseNet169_Weights.DEFAULT),
    "densenet201": (32, (6, 12, 48, 32), 64, tv.DenseNet201_Weights.DEFAULT),
}


class ScaledResNet(tv.ResNet):
    """torchvision's ResNet with every stage's channel count multiplied by ``width``."""

    def __init__(self, block, layers, *, num_classes: int, width: float, width_per_group: int):
        super().__init__(block, layers, num_classes=num_classes, width_per_group=width_per_group)
        if width == 1.0:
            return
        planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        _init_like_torchvision(self)


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
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

    MODELS.register(name)(Backbone(build, weights, has_width=True, has_growth_rate=False))


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
            model.features.pool0 = nn.Identity()
        return model

    MODELS.register(name)(Backbone(build, weights, has_width=False, has_growth_rate=True))


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
    backbone = MODELS.get(arch)
    if width != 1.0 and not backbone.has_width:
        raise ValueError(f"width: {arch} has no width multiplier (only resnets do), got {width}")
    if growth_rate is not None and not backbone.has_growth_rate:
        raise ValueError(f"growth_rate: {arch} has no growth rate (only densenets do)")
    if pretrained and (width != 1.0 or growth_rate is not None):
        raise ValueError("pretrained: weights exist only for width 1.0 and the default growth rate")
    small = image_size < SMALL_INPUT_BELOW
    model = backbone.build(
        num_classes=num_classes, width=width, growth_rate=growth_rate, small_input=small
    )
    if pretrained:
        state = _pretrained_state(arch, backbone, weights_path)
        _load_backbone_weights(model, state)
    return model


def _pretrained_state(arch: str, backbone: Backbone, weights_path: Optional[str]) -> dict:
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise PretrainedWeightsUnavailable(f"weights_path: no such file {path}")
        return torch.load(path, map_location="cpu", weights_only=True)
    if backbone.weights is None:
        raise PretrainedWeightsUnavailable(f"pretrained: torchvision has no weights for {arch}")
    try:  # torchvision's weights API downloads once into TORCH_HOME and reuses the file
        return backbone.weights.get_state_dict(progress=True)
    except Exception as err:  # URLError, socket errors, HTTP errors: all mean "not reachable"
        raise PretrainedWeightsUnavailable(
            f"pretrained: could not download {backbone.weights} ({type(err).__name__}: {err}); "
            "pass weights_path to a local .pth file when offline"
        ) from None


def _load_backbone_weights(model: nn.Module, state: dict) -> None:
    """Loads every tensor whose name and shape match; the new head and a small-input stem stay fresh."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise PretrainedWeightsUnavailable("pretrained: no tensor of the weights file fits this model")
    model.load_state_dict(usable, strict=False)


def default_weights_normalisation(arch: str) -> Optional[tuple[list[float], list[float]]]:
    """Mean/std that the pretrained weights were trained with (ImageNet's for torchvision)."""
    weights = MODELS.get(arch).weights
    if weights is None:
        return None
    preset = weights.transforms()
    return list(preset.mean), list(preset.std)


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The head: ``fc`` for resnets, ``classifier`` for densenets."""
    head = getattr(model, "fc", None) or getattr(model, "classifier")
    return list(head.parameters())
