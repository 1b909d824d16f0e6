"""docs/extending.md is true: its marked examples run, and the new entries work through the public path.

Each block after a ``<!-- extending-test: NAME -->`` line is executed in the namespace of the module
it belongs to (as if pasted at the end of that file), in ONE fresh subprocess, so the registrations
never leak into the registries the other tests see. The subprocess runs every check and reports each
outcome; the tests below read them one by one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
MARKED = re.compile(r"<!-- extending-test: (\w+) -->\s*\n```python\n(.*?)\n```", re.S)
MODULE_OF = {  # block -> the file the page says it goes into
    "sampler": "tuner.search.samplers",
    "scheduler": "tuner.search.schedulers",
    "augmentation": "trainables.transforms",
    "backbone": "trainables.models",
}

CHECKS = r'''
import importlib, json, sys, traceback
blocks = json.loads(sys.stdin.read())
outcome = {}

def run(name, check):
    try:
        check()
        outcome[name] = "ok"
    except BaseException:
        outcome[name] = traceback.format_exc()

def paste(block, module):
    exec(compile(blocks[block], f"docs/extending.md [{block}]", "exec"), vars(importlib.import_module(module)))

for block, module in MODULE_OF.items():
    run("paste:" + block, lambda b=block, m=module: paste(b, m))

from tuner.spec import SpecError, parse_spec

def spec(**sections):
    raw = {"name": "s", "data": {"train": "train", "val": "val"},
           "space": {"lr": {"loguniform": [0.001, 1.0]}, "optimizer": {"choice": ["sgd", "adam"]}},
           **sections}
    return parse_spec(raw, source="s.yaml")

def sampler():
    import optuna
    from tuner.search.samplers import build_sampler
    s = spec(sampler={"name": "gp", "seed": 1, "options": {"n_startup_trials": 3}})
    assert s.sampler.options == {"n_startup_trials": 3, "deterministic_objective": False}, s.sampler.options
    built = build_sampler("gp", space=s.space, seed=1, options=s.sampler.options, max_concurrent=2)
    assert isinstance(built, optuna.samplers.GPSampler) and built._n_startup_trials == 3

def sampler_refuses():
    try:
        spec(sampler={"name": "gp", "options": {"n_startup": 3}})
    except SpecError as err:
        assert str(err) == ("s.yaml: sampler.options.n_startup: unknown option; "
                            "valid options: deterministic_objective, n_startup_trials"), str(err)
    else:
        raise AssertionError("an unknown option was accepted")
    try:
        spec(sampler={"name": "gp"}, space={"batch_size": {"grid": [32, 64]}})
    except SpecError as err:
        assert "the gp sampler cannot search a grid parameter" in str(err), str(err)
    else:
        raise AssertionError("a grid parameter was accepted")

def scheduler():
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from tuner.search.schedulers import build_scheduler
    s = spec(scheduler={"name": "hyperband", "brackets": 2})
    assert s.scheduler.options == {"grace_period": 1, "reduction_factor": 3, "brackets": 2}
    built = build_scheduler("hyperband", metric="val_acc", mode="max", epochs=6, options=s.scheduler.options)
    assert isinstance(built, AsyncHyperBandScheduler) and len(built._brackets) == 2

def augmentation():
    import torch
    from trainables.config import ConfigError, TrialConfig
    from trainables.transforms import build_train_transform
    config = TrialConfig.from_dict({"train_dir": "t", "val_dir": "v", "augmentation": "rrc_color",
                                    "aug.jitter": 0.4})
    pipeline = build_train_transform("rrc_color", 16, (0.5,) * 3, (0.25,) * 3, config.aug)
    out = pipeline(torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    try:
        TrialConfig.from_dict({"train_dir": "t", "val_dir": "v", "augmentation": "rrc_color", "aug.grayscale": 2})
    except ConfigError as err:
        assert "aug.grayscale: must be <= 1" in str(err), str(err)
    else:
        raise AssertionError("grayscale 2 was accepted")

def backbone():
    import torch
    from trainables.config import ConfigError, TrialConfig
    from trainables.models import build_model, classifier_head
    TrialConfig.from_dict({"train_dir": "t", "val_dir": "v", "arch": "simple_cnn", "width": 0.5})
    model = build_model("simple_cnn", num_classes=5, image_size=16, width=0.5)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    assert classifier_head(model, "simple_cnn") is model.fc
    try:
        TrialConfig.from_dict({"train_dir": "t", "val_dir": "v", "arch": "simple_cnn", "growth_rate": 8})
    except ConfigError as err:
        assert str(err).startswith("growth_rate: simple_cnn has no growth rate ("), str(err)
    else:
        raise AssertionError("growth_rate was accepted")

for check in (sampler, sampler_refuses, scheduler, augmentation, backbone):
    run(check.__name__, check)
print(json.dumps(outcome))
'''


def marked_blocks() -> dict[str, str]:
    return dict(MARKED.findall(DOC.read_text()))


@pytest.fixture(scope="module")
def outcome() -> dict[str, str]:
    blocks = marked_blocks()
    assert set(blocks) == set(MODULE_OF), f"marked blocks in {DOC.name}: {sorted(blocks)}"
    script = f"MODULE_OF = {MODULE_OF!r}\n{CHECKS}"
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(blocks), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("block", sorted(MODULE_OF))
def test_the_example_pastes_into_its_module(outcome, block):
    assert outcome[f"paste:{block}"] == "ok", outcome[f"paste:{block}"]


@pytest.mark.parametrize("check", ["sampler", "sampler_refuses", "scheduler", "augmentation", "backbone"])
def test_the_new_entry_works_through_the_public_path(outcome, check):
    assert outcome[check] == "ok", outcome[check]


def test_the_registrations_stayed_in_the_subprocess():
    from tuner.search.samplers import SAMPLERS
    from tuner.search.schedulers import SCHEDULERS

    assert "gp" not in SAMPLERS and "hyperband" not in SCHEDULERS
