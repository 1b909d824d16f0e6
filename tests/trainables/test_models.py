"""Backbone registry: every entry trains a step; declared knobs, width, growth rate, pretrained files,
head-only and the head/backbone split of two-stage fine-tuning."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import ConfigError
from trainables.models import (MODELS, PretrainedWeightsUnavailable, build_model, check_backbone_settings,
                               classifier_head, freeze_all_but_head, frozen_modules,
                               set_backbone_trainable, split_head_and_backbone)
from trainables.optim import build_optimizer

SMALL = {"width": 0.125}  # resnets: 8..64 channels per stage
THIN = {"growth_rate": 4}  # densenets: 4 new channels per layer


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_backbone_runs_a_forward_pass_and_an_optimizer_step(arch):
    torch.manual_seed(0)
    knobs = MODELS.get(arch).knobs
    size = SMALL if "width" in knobs else THIN if "growth_rate" in knobs else {}
    model = build_model(arch, num_classes=7, image_size=32, **size)
    optimizer = build_optimizer(model.parameters(), name="sgd", lr=0.1, momentum=0.9)
    # 6 images: stochastic depth (convnext, efficientnet) drops a block for every sample of a 2-image
    # batch often enough that some blocks would get no gradient at all.
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 6, 1, 2, 3, 4])
    logits = model(images)
    assert logits.shape == (6, 7)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(logits, labels).backward()
    optimizer.step()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"{arch}: no gradient reached {silent[:5]}"
    # Every tensor got a gradient; nearly all move at lr 0.1 (convnext's LayerNorms sit behind a
    # 1e-6 layer scale: their first step is below float32's resolution of a weight of 1.0).
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert changed.count(True) >= 0.8 * len(changed), f"{arch}: {changed.count(False)} tensors did not move"


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(Exception, match="unknown architecture 'resnet19'; valid: convnext_tiny, densenet121.*wide_resnet50_2"):
        build_model("resnet19", num_classes=2, image_size=32)


def test_width_scales_every_resnet_stage():
    model = build_model("resnet50", num_classes=3, image_size=224, width=0.25)
    assert model.conv1.out_channels == 16
    assert [layer[0].conv1.out_channels for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == [16, 32, 64, 128]
    assert model.fc.in_features == 128 * 4  # bottleneck expansion
    wide = build_model("wide_resnet50_2", num_classes=3, image_size=224, width=0.25)
    assert wide.layer1[0].conv2.out_channels == 32  # the wide bottleneck's inner width, doubled


def test_growth_rate_and_small_input_stem():
    dense = build_model("densenet121", num_classes=3, image_size=32, growth_rate=12)
    assert dense.features.denseblock1.denselayer1.conv2.out_channels == 12
    assert dense.features.conv0.stride == (1, 1) and isinstance(dense.features.pool0, nn.Identity)
    big = build_model("resnet18", num_classes=3, image_size=224, width=0.125)
    small = build_model("resnet18", num_classes=3, image_size=32, width=0.125)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)


def test_weights_path_fills_the_backbone_and_keeps_a_fresh_head(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", num_classes=1000, image_size=224)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", num_classes=5, image_size=224, pretrained=True,
                        weights_path=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(model.bn1.running_var, source.bn1.running_var)
    assert model.fc.out_features == 5


def test_weights_path_accepts_torchvisions_old_densenet_key_names(tmp_path):
    torch.manual_seed(2)
    source = build_model("densenet121", num_classes=1000, image_size=224)
    # torchvision's published densenet files spell 'norm1' as 'norm.1' (module names of old).
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
           for k, v in source.state_dict().items()}
    torch.save(old, tmp_path / "densenet121.pth")
    model = build_model("densenet121", num_classes=4, image_size=224, pretrained=True,
                        weights_path=str(tmp_path / "densenet121.pth"))
    layer, original = model.features.denseblock3.denselayer5, source.features.denseblock3.denselayer5
    assert torch.equal(layer.norm1.weight, original.norm1.weight)
    assert torch.equal(layer.conv2.weight, original.conv2.weight)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match="weights_path: no such file"):
        build_model("resnet18", num_classes=2, image_size=224, pretrained=True,
                    weights_path=str(tmp_path / "nope.pth"))


def test_offline_pretrained_download_is_a_clear_error(tmp_path, monkeypatch):
    # An empty TORCH_HOME and a URL on a closed loopback port: the download fails at once, offline.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    weights = MODELS.get("resnet18").weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(weights.value, "url", f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("resnet18", num_classes=2, image_size=224, pretrained=True)
    message = str(info.value)
    assert "pretrained: cannot download the resnet18 weights" in message
    assert str(tmp_path / "torch-home") in message and "weights_path" in message


@pytest.mark.parametrize("arch, size", [("resnet18", SMALL), ("densenet121", THIN)])
def test_head_only_freezes_exactly_the_backbone(arch, size):
    torch.manual_seed(3)
    model = build_model(arch, num_classes=4, image_size=32, **size)
    head = freeze_all_but_head(model, arch)
    head_ids = {id(p) for p in head}
    assert head_ids == {id(p) for p in getattr(model, "fc" if arch.startswith("res") else "classifier").parameters()}
    assert all(p.requires_grad == (id(p) in head_ids) for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(head, name="sgd", lr=0.5, momentum=0.9)
    model.train()
    for module in frozen_modules(model, arch):
        module.eval()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    optimizer.step()
    after = model.state_dict()
    moved = sorted(k for k in before if not torch.equal(before[k], after[k]))
    prefix = "fc." if arch.startswith("res") else "classifier."
    assert moved == [f"{prefix}bias", f"{prefix}weight"]  # BatchNorm statistics included


@pytest.mark.parametrize("arch", MODELS.names())
def test_each_backbone_refuses_exactly_the_knobs_it_does_not_declare(arch):
    knobs = MODELS.get(arch).knobs
    for knob, value in (("width", 0.5), ("growth_rate", 8)):
        settings = {"width": 1.0, "growth_rate": None, knob: value}
        if knob in knobs:
            check_backbone_settings(arch, **settings, pretrained=False)
            with pytest.raises(ConfigError, match="pretrained: weights exist only"):
                check_backbone_settings(arch, **settings, pretrained=True)
        else:
            with pytest.raises(ConfigError, match=f"{knob}: {arch} has no"):
                check_backbone_settings(arch, **settings, pretrained=False)


def test_the_modern_backbones_declare_their_knobs():
    assert {n: sorted(MODELS.get(n).knobs) for n in ("convnext_tiny", "efficientnet_v2_s", "regnet_y_800mf",
                                                      "mobilenet_v3_large")} == {
        "convnext_tiny": [], "efficientnet_v2_s": [], "regnet_y_800mf": [], "mobilenet_v3_large": ["width"]}
    thin = build_model("mobilenet_v3_large", num_classes=3, image_size=224, width=0.5)
    assert thin.classifier[0].in_features == 480  # 960 channels x 0.5


@pytest.mark.parametrize("arch", ["regnet_y_800mf", "mobilenet_v3_large"])
def test_weights_path_fills_a_torchvision_backbone_and_the_small_stem_keeps_its_weights(arch, tmp_path):
    torch.manual_seed(4)
    source = build_model(arch, num_classes=1000, image_size=224)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = build_model(arch, num_classes=5, image_size=32, pretrained=True,
                        weights_path=str(tmp_path / "w.pth"))
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    original = next(m for m in source.modules() if isinstance(m, nn.Conv2d))
    assert stem.stride == (1, 1) and original.stride == (2, 2)  # small input: stride 1, same weights
    assert torch.equal(stem.weight, original.weight)
    head = classifier_head(model, arch)
    last = head if isinstance(head, nn.Linear) else head[-1]
    assert last.out_features == 5


def test_head_and_backbone_split_and_the_backbone_can_be_frozen_and_thawed():
    model = build_model("convnext_tiny", num_classes=3, image_size=32)
    head, backbone = split_head_and_backbone(model, "convnext_tiny")
    assert {id(p) for p in head} == {id(p) for p in model.classifier.parameters()}
    assert len(head) + len(backbone) == len(list(model.parameters()))
    set_backbone_trainable(model, "convnext_tiny", False)
    assert all(p.requires_grad for p in head) and not any(p.requires_grad for p in backbone)
    set_backbone_trainable(model, "convnext_tiny", True)
    assert all(p.requires_grad for p in model.parameters())
