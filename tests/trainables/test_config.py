"""TrialConfig: bad values fail at construction, naming the key, the value and the rule."""

from __future__ import annotations

import json

import pytest

from trainables.config import ConfigError, TrialConfig

BASE = {"train_dir": "data/train", "val_dir": "data/val"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"lr": -0.1}, "lr: must be a finite number > 0, got -0.1"),
        ({"lr": float("nan")}, "lr: must be a finite number > 0"),
        ({"width": 0}, "width: must be > 0, got 0.0"),
        ({"augmentation": "heavy"}, "augmentation: unknown augmentation preset 'heavy'; valid: autoaugment, journal, light, none, "
         "randaugment, rrc, trivialaugment"),
        ({"arch": "resnet19"}, "valid: convnext_tiny, densenet121, densenet161"),
        ({"optimizer": "lion"}, "optimizer: unknown optimizer 'lion'; valid: adam, adamw, sgd"),
        ({"schedule": "step"}, "schedule: unknown schedule 'step'; valid: cosine, dev-decay, none, onecycle"),
        ({"finetune": "last"}, "finetune: must be one of full, head, got 'last'"),
        ({"epochs": 0}, "epochs: must be >= 1, got 0"),
        ({"epochs": 2.5}, "epochs: must be a whole number, got 2.5"),
        ({"batch_size": "big"}, "batch_size: must be a whole number, got 'big'"),
        ({"pretrained": "yes"}, "pretrained: must be true or false, got 'yes'"),
        ({"decay_factor": 1.0}, "decay_factor: must be in (0, 1), got 1.0"),
        ({"train_subset": 0}, "train_subset: must be >= 1 (or null), got 0"),
        ({"aug": {"rotation": 5}}, "aug: unknown parameter(s) rotation; valid: erasing, eval_crop, pad_fraction"),
        ({"aug": {"erasing": 1.5}}, "aug.erasing: must be <= 1, got 1.5"),
        ({"augmentation": "randaugment", "aug": {"num_ops": 1.5}}, "aug.num_ops: must be a whole number"),
        ({"augmentation": "randaugment", "aug": {"magnitude": 31}}, "aug.magnitude: must be <= 30, got 31"),
        ({"augmentation": "journal", "aug": {"grayscale": 1.5}}, "aug.grayscale: must be <= 1, got 1.5"),
        ({"aug": {"eval_crop": 0}}, "aug.eval_crop: must be in (0, 1], got 0"),
        ({"arch": "densenet121", "width": 2}, "width: densenet121 has no width multiplier"),
        ({"arch": "convnext_tiny", "width": 0.5}, "width: convnext_tiny has no width multiplier ("),
        ({"growth_rate": 12}, "growth_rate: resnet18 has no growth rate (densenet121, densenet161"),
        ({"pretrained": True, "width": 0.5}, "pretrained: weights exist only for width 1.0"),
        ({"weights_path": "w.pth"}, "weights_path: needs pretrained: true"),
        ({"device": "gpu"}, "device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"std": [0.2, 0.0, 0.2], "mean": [0.5, 0.5, 0.5]}, "std: must be > 0 per channel"),
        ({"mean": [0.5, 0.5]}, "mean: must hold 3 numbers"),
        # the modern recipe's knobs
        ({"label_smoothing": 0.5}, "label_smoothing: must be in [0, 0.5), got 0.5"),
        ({"label_smoothing": -0.1}, "label_smoothing: must be in [0, 0.5), got -0.1"),
        ({"pct_start": 1.0}, "pct_start: must be in (0, 1), got 1.0"),
        ({"div_factor": 0.5}, "div_factor: must be >= 1, got 0.5"),
        ({"final_div_factor": 0}, "final_div_factor: must be >= 1, got 0.0"),
        ({"mixup_alpha": -1}, "mixup_alpha: must be >= 0 (0: off), got -1.0"),
        ({"cutmix_alpha": float("inf")}, "cutmix_alpha: must be >= 0 (0: off), got inf"),
        ({"mix_prob": 1.5}, "mix_prob: must be in [0, 1], got 1.5"),
        ({"ema_decay": 1.0}, "ema_decay: must be in [0, 1) (0: off), got 1.0"),
        ({"grad_clip_norm": 0}, "grad_clip_norm: must be > 0 (or null), got 0.0"),
        ({"head_epochs": -1}, "head_epochs: must be >= 0, got -1"),
        ({"head_epochs": 10, "epochs": 10}, "head_epochs: must be < epochs (10); finetune: head trains"),
        ({"head_epochs": 2, "finetune": "head"}, "head_epochs: finetune: head already trains only the head"),
        ({"backbone_lr_mult": 0}, "backbone_lr_mult: must be > 0, got 0.0"),
        ({"backbone_lr_mult": 0.1, "finetune": "head"}, "backbone_lr_mult: finetune: head never trains"),
        ({"arch": "mobilenet_v3_large", "width": 0.5, "pretrained": True}, "pretrained: weights exist only"),
        ({"learning_rate": 0.1}, "unknown trial setting(s) learning_rate; valid settings:"),
    ],
)
def test_bad_values_fail_at_construction_naming_value_and_rule(changes, expected):
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_dict({**BASE, **changes})
    assert expected in str(info.value)


def test_missing_data_folders_are_named():
    with pytest.raises(ConfigError, match="missing trial setting.*train_dir"):
        TrialConfig.from_dict({"val_dir": "v"})


def test_yaml_and_optuna_values_are_coerced():
    # YAML 1.1 reads 1e-3 as a string; Optuna and JSON may hand over 64.0 for an int.
    config = TrialConfig.from_dict({**BASE, "lr": "1e-3", "batch_size": 64.0, "aug.pad_fraction": 0})
    assert config.lr == 0.001 and isinstance(config.batch_size, int) and config.batch_size == 64
    assert config.aug == {"pad_fraction": 0}


def test_round_trips_through_a_plain_json_dict():
    config = TrialConfig.from_dict({**BASE, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2],
                                    "augmentation": "journal", "aug.rotation": 15})
    again = TrialConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.aug == {"rotation": 15}


def test_every_recipe_knob_round_trips_and_is_searchable_by_a_dotted_or_plain_key():
    values = {"label_smoothing": 0.1, "schedule": "onecycle", "pct_start": 0.25, "div_factor": 10,
              "final_div_factor": 100, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5,
              "ema_decay": 0.99, "grad_clip_norm": 2, "head_epochs": 1, "backbone_lr_mult": 0.1,
              "augmentation": "randaugment", "aug.num_ops": 3, "aug.magnitude": 12, "aug.erasing": 0.25,
              "arch": "mobilenet_v3_large", "width": 0.5}
    config = TrialConfig.from_dict({**BASE, **values})
    assert config.aug == {"num_ops": 3, "magnitude": 12, "erasing": 0.25}
    assert config.grad_clip_norm == 2.0 and config.div_factor == 10.0
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

