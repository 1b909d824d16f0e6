"""Backbone registry: name -> builder(num_classes, width, growth_rate, small_input, ...).

Journal: "go wider" beat "go deeper", so every resnet takes a ``width`` multiplier that scales all
four stages (WRN-style), and densenets take their ``growth_rate``. The iMaterialist winners used
stronger backbones: torchvision's convnext_tiny, efficientnet_v2_s, regnet_y_800mf and
mobilenet_v3_large (whose ``width`` is MobileNet's width multiplier) are registered too.

Each entry DECLARES the knobs it accepts (``knobs``: width, growth_rate); ``check_backbone_settings``
is the one home of the compatibility rules, and reads them from there (TrialConfig calls it at
construction, ``build_model`` again for callers that skip the config). Images under 64 px get a
small-input stem (resnets/densenets: 3x3 stride-1 conv, no max-pool; the others: their first
convolution's stride reduced, so its pretrained weights still fit), otherwise a 32 px image is 1x1
after the stem. Pretrained weights: ``trainables.pretrained``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import BasicBlock, Bottleneck

from trainables.errors import ConfigError
from trainables.pretrained import PretrainedWeightsUnavailable, load_backbone_weights, pretrained_state
from trainables.registry import Registry

log = logging.getLogger(__name__)

SMALL_INPUT_BELOW = 64  # pixels: under this the ImageNet stem throws away too much resolution
RESNET_STAGE_CHANNELS = (64, 128, 256, 512)  # torchvision's planes per stage at width 1.0
KNOB_DEFAULTS = {"width": 1.0, "growth_rate": None}  # TrialConfig's values that mean "not used"
KNOB_NAMES = {"width": "width multiplier", "growth_rate": "growth rate"}


@dataclass(frozen=True)
class Backbone:
    build: Callable[..., nn.Module]
    weights: Optional[tv.WeightsEnum]  # torchvision's default pretrained weights, if any
    knobs: frozenset  # TrialConfig fields this backbone accepts beyond the defaults: width, growth_rate
    head: str  # attribute holding the classifier: "fc" (resnets, regnet) or "classifier" (others)

    @property
    def has_width(self) -> bool:
        return "width" in self.knobs

    @property
    def has_growth_rate(self) -> bool:
        return "growth_rate" in self.knobs


MODELS: Registry[Backbone] = Registry("architecture")


def check_backbone_settings(arch: str, *, width: float, growth_rate: Optional[int],
                            pretrained: bool) -> Backbone:
    """The backbone compatibility rules, read from the entry's declared knobs (ConfigError if broken)."""
    try:
        backbone = MODELS.get(arch)
    except KeyError as err:
        raise ConfigError(f"arch: {err.args[0]}") from None
    values = {"width": width, "growth_rate": growth_rate}
    for knob, value in values.items():
        if value != KNOB_DEFAULTS[knob] and knob not in backbone.knobs:
            having = [n for n in MODELS.names() if knob in MODELS.get(n).knobs]
            raise ConfigError(f"{knob}: {arch} has no {KNOB_NAMES[knob]} ({', '.join(having)} have "
                              f"one), got {value}")
    changed = {k: v for k, v in values.items() if v != KNOB_DEFAULTS[k]}
    if pretrained and changed:
        raise ConfigError(
            "pretrained: weights exist only for width 1.0 and the default growth rate, got "
            + ", ".join(f"{k}={v}" for k, v in changed.items())
        )
    return backbone

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

    MODELS.register(name)(Backbone(build, weights, knobs=frozenset({"width"}), head="fc"))


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
        Backbone(build, weights, knobs=frozenset({"growth_rate"}), head="classifier")
    )


for _name, _spec in _RESNETS.items():
    _register_resnet(_name, *_spec)
for _name, _spec in _DENSENETS.items():
    _register_densenet(_name, *_spec)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _halve_patchify_stem(model: nn.Module) -> None:
    # convnext: its 4x4 stride-4 "patchify" stem at stride 2 (padding 1): 32 px -> 16 px, not 8.
    conv = _first_conv(model)
    conv.stride, conv.padding = (2, 2), (1, 1)


def _stride_one_stem(model: nn.Module) -> None:
    # efficientnet, regnet, mobilenet: a 3x3 stride-2 first convolution, kept at stride 1.
    _first_conv(model).stride = (1, 1)


def _register_torchvision(name: str, builder, weights, *, head: str, knobs: frozenset,
                          small_stem: Callable[[nn.Module], None]) -> None:
    def build(*, num_classes: int, width: float = 1.0, small_input: bool = False, **_) -> nn.Module:
        extra = {"width_mult": width} if "width" in knobs else {}
        model = builder(weights=None, num_classes=num_classes, **extra)
        if small_input:
            small_stem(model)  # only a stride changes: the pretrained stem still fits
        return model

    MODELS.register(name)(Backbone(build, weights, knobs=knobs, head=head))


_TORCHVISION = {  # builder, weights, classifier attribute, knobs, small-input stem
    "convnext_tiny": (tv.convnext_tiny, tv.ConvNeXt_Tiny_Weights.DEFAULT, "classifier", frozenset(),
                      _halve_patchify_stem),
    "efficientnet_v2_s": (tv.efficientnet_v2_s, tv.EfficientNet_V2_S_Weights.DEFAULT, "classifier",
                          frozenset(), _stride_one_stem),
    "regnet_y_800mf": (tv.regnet_y_800mf, tv.RegNet_Y_800MF_Weights.DEFAULT, "fc", frozenset(),
                       _stride_one_stem),
    # MobileNet's width multiplier scales every layer (rounded to multiples of 8).
    "mobilenet_v3_large": (tv.mobilenet_v3_large, tv.MobileNet_V3_Large_Weights.DEFAULT, "classifier",
                           frozenset({"width"}), _stride_one_stem),
}
for _name, (_builder, _weights, _head, _knobs, _stem) in _TORCHVISION.items():
    _register_torchvision(_name, _builder, _weights, head=_head, knobs=_knobs, small_stem=_stem)


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
    backbone = check_backbone_settings(arch, width=width, growth_rate=growth_rate, pretrained=pretrained)
    small = image_size < SMALL_INPUT_BELOW
    model = backbone.build(
        num_classes=num_classes, width=width, growth_rate=growth_rate, small_input=small
    )
    if pretrained:
        load_backbone_weights(model, pretrained_state(arch, backbone.weights, weights_path), arch)
    return model


def default_weights_normalisation(arch: str) -> Optional[tuple[list[float], list[float]]]:
    """Mean/std that the pretrained weights were trained with (ImageNet's for torchvision)."""
    weights = MODELS.get(arch).weights
    if weights is None:
        return None
    preset = weights.transforms()
    return list(preset.mean), list(preset.std)


def classifier_head(model: nn.Module, arch: str) -> nn.Module:
    """The classifier, as the registry entry names it (``fc`` or ``classifier``)."""
    return getattr(model, MODELS.get(arch).head)


def freeze_all_but_head(model: nn.Module, arch: str) -> list[nn.Parameter]:
    """finetune=head: the backbone's parameters stop requiring grad; returns the head's parameters.

    The backbone's BatchNorm statistics must stay frozen too (the engine keeps ``frozen_modules`` in
    eval mode), otherwise "frozen" features would still drift with every training batch.
    """
    head, _ = split_head_and_backbone(model, arch)
    set_backbone_trainable(model, arch, False)
    return head


def split_head_and_backbone(model: nn.Module, arch: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(classifier parameters, every other parameter), each in the model's own order."""
    head_ids = {id(p) for p in classifier_head(model, arch).parameters()}
    parameters = list(model.parameters())
    return ([p for p in parameters if id(p) in head_ids],
            [p for p in parameters if id(p) not in head_ids])


def set_backbone_trainable(model: nn.Module, arch: str, trainable: bool) -> None:
    """Backbone parameters require grad or not; the head always does. A parameter without a grad is
    skipped by every optimizer (no step, no weight decay), so freezing needs no optimizer change."""
    _, backbone = split_head_and_backbone(model, arch)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for parameter in backbone:
        parameter.requires_grad_(trainable)


def frozen_modules(model: nn.Module, arch: str) -> list[nn.Module]:
    """Direct children of ``model`` other than the head: what head-only training keeps in eval mode."""
    head = classifier_head(model, arch)
    return [child for child in model.children() if child is not head]


__all__ = ["MODELS", "Backbone", "PretrainedWeightsUnavailable", "build_model", "check_backbone_settings",
           "classifier_head", "default_weights_normalisation", "freeze_all_but_head", "frozen_modules",
           "set_backbone_trainable", "split_head_and_backbone"]
