"""The spec parser: every rule gives one clear line naming the file, the key path and the rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner.spec import SpecError, load_spec, parse_spec


def base(tmp_path: Path) -> dict:
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
    return {
        "name": "t",
        "data": {"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "image_size": 32},
        "fixed": {"epochs": 2},
        "space": {"lr": {"loguniform": [0.001, 0.1]}},
    }


def parse(raw: dict) -> object:
    return parse_spec(raw, source="s.yaml")


def test_a_valid_spec_parses_with_defaults(tmp_path):
    spec = parse(base(tmp_path))
    assert spec.metric == "val_acc" and spec.mode == "max"
    assert spec.space[0].kind == "loguniform" and spec.space[0].log
    assert spec.base_config()["epochs"] == 2
    assert Path(spec.data.train).is_absolute()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(bogus=1), "s.yaml: bogus: unknown key"),
        (lambda r: r["fixed"].update(colour="red"), "s.yaml: fixed.colour: unknown trial setting"),
        (lambda r: r["space"].update(lr={"loguniform": [-1, 0.1]}), "s.yaml: space.lr.loguniform: low must be > 0"),
        (lambda r: r["space"].update(lr={"uniform": [0.5, 0.1]}), "s.yaml: space.lr.uniform: low must be < high"),
        (lambda r: r["space"].update(lr={"uniform": [0.5]}), "s.yaml: space.lr.uniform: must be [low, high]"),
        (lambda r: r["space"].update(arch={"choice": []}), "s.yaml: space.arch.choice: must be a non-empty list"),
        (lambda r: r["space"].update(arch={"choice": ["resnet18", "vgg99"]}), "unknown architecture 'vgg99'"),
        (lambda r: r["fixed"].update(optimizer="rmsprop"), "s.yaml: fixed: optimizer: unknown optimizer 'rmsprop'; valid: adam, adamw, sgd"),
        (lambda r: r["fixed"].update(lr=-0.1), "s.yaml: space.lr: is also set in fixed"),
        (lambda r: r.update(space={"batch_size": {"choice": [32]}}) or r["fixed"].update(lr=-0.1),
         "s.yaml: fixed: lr: must be a finite number > 0, got -0.1"),
        (lambda r: r["fixed"].update(width=0), "width: must be > 0, got 0"),
        (lambda r: r["space"].update(width={"choice": [1, 2], "when": {"arch": ["resnet18"]}}),
         "s.yaml: space.width.when.arch: names no earlier choice parameter"),
        (lambda r: r.update(mode="maximise"), "s.yaml: mode: must be one of max, min"),
        (lambda r: r.update(space={}, sampler={"name": "grid"}) or r["space"].update(lr={"uniform": [0.1, 0.2]}),
         "s.yaml: space.lr.uniform: the grid sampler cannot search a uniform parameter"),
        (lambda r: r.update(sampler={"name": "annealing"}), "s.yaml: sampler.name: must be one of"),
        (lambda r: r.update(scheduler={"name": "asha", "reduction_factor": 1}), "s.yaml: scheduler.reduction_factor: must be >= 2"),
        (lambda r: r.update(budget={"num_samples": 0}), "s.yaml: budget.num_samples: must be >= 1"),
        (lambda r: r["space"].update(x={"uniform": [0, 1]}), "s.yaml: space.x: unknown trial setting"),
        (lambda r: r["space"].update(lr={"normal": [0, 1]}), "s.yaml: space.lr.normal: unknown key"),
        (lambda r: r.pop("data"), "s.yaml: data.train: is required"),
        (lambda r: r.update(points_to_evaluate=[{"momentum": 0.9}]), "points_to_evaluate[0].momentum: is not a searched parameter"),
        (lambda r: r.update(resources={"gpu": 1.5}), "resources.gpu: a share above 1 GPU must be a whole number"),
    ],
)
def test_bad_specs_name_file_key_and_rule(tmp_path, change, message):
    raw = base(tmp_path)
    change(raw)
    with pytest.raises(SpecError) as err:
        parse(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_conditions_only_name_choices_that_exist(tmp_path):
    raw = base(tmp_path)
    raw["space"]["arch"] = {"choice": ["resnet18", "densenet121"]}
    raw["space"]["width"] = {"choice": [0.5, 1.0], "when": {"arch": ["resnet50"]}}
    with pytest.raises(SpecError, match=r"space.width.when.arch: \['resnet50'\] is not among its options"):
        parse(raw)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nspace:\n  lr: {loguniform: [0.1, 1\n")
    with pytest.raises(SpecError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_spec(path)


def test_cli_reports_bad_input_in_one_line_with_exit_2(tmp_path):
    raw = base(tmp_path)
    raw["space"]["lr"] = {"loguniform": [-1, 0.1]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "search", "s.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "tuner: error: s.yaml: space.lr.loguniform: low must be > 0, got -1"


@pytest.mark.parametrize("problem, message", [
    ("missing", "data.train: data folder"),
    ("empty_class", "train: class folder(s) b hold no image"),
])
def test_cli_rejects_bad_data_folders(tmp_path, problem, message):
    raw = base(tmp_path)
    if problem == "missing":
        raw["data"]["train"] = str(tmp_path / "nope")
    else:
        from PIL import Image

        for split in ("train", "val"):
            Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / split / "a" / "1.jpg")
        (tmp_path / "train" / "b").mkdir()
        raw["space"] = {"lr": {"loguniform": [0.01, 0.1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    args = ["search", "s.yaml"] if problem == "missing" else ["train", "s.yaml", "--out", "o"]
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_batch_size_auto_reads_the_probe_written_beside_the_spec(tmp_path):
    import json

    raw = base(tmp_path)
    raw["space"]["batch_size"] = {"choice": "auto"}
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"space.batch_size.choice: auto needs the probe s.batch_size.json"):
        load_spec(spec_file)
    probe = {"format": "tuner.batch_size_probe/1", "source": "s.yaml", "created": "now", "device": "cpu",
             "device_name": "cpu", "measure": "saved-tensors", "limit_bytes": 1, "margin": 0.1,
             "usable_bytes": 1, "image_size": 32, "num_classes": 10, "optimizer": "sgd", "max_batch": 4096,
             "results": [{"arch": "resnet18", "width": 1.0, "growth_rate": None, "max_batch_size": 300,
                          "capped": False, "bytes_at_max": 1, "fixed_bytes": 1, "bytes_per_image": 1.0,
                          "probes": [], "seconds": 1.0}]}
    (tmp_path / "s.batch_size.json").write_text(json.dumps(probe))
    spec = load_spec(spec_file)
    assert [p.choices for p in spec.space if p.name == "batch_size"] == [(16, 32, 64, 128, 256)]


@pytest.mark.parametrize("cpu, expected", [(1, 1), (4, 4), (0.5, None)])
def test_a_trial_gets_its_cpu_share_as_torch_threads(tmp_path, cpu, expected):
    """Results depend on the torch thread count: the spec writes it into every trial's config (and
    so into MLflow's params and `tuner train SPEC`); a fixed value wins."""
    raw = {"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
           "resources": {"cpu": cpu}}
    assert parse_spec(raw, source="s.yaml").base_config().get("threads") == expected
    raw["fixed"] = {"threads": 2}
    assert parse_spec(raw, source="s.yaml").base_config()["threads"] == 2


def test_set_on_a_searched_key_fixes_it_for_the_search(tmp_path):
    raw = base(tmp_path)
    raw["space"].update(arch={"choice": ["resnet18", "resnet34"]},
                        width={"choice": [0.125, 0.25], "when": {"arch": ["resnet18"]}},
                        optimizer={"choice": ["sgd", "adam"]})
    raw["points_to_evaluate"] = [{"lr": 0.05, "arch": "resnet18", "width": 0.25, "optimizer": "sgd"}]
    spec = parse_spec(raw, source="s.yaml", overrides={"optimizer": "adamw"})
    assert "optimizer" not in {p.name for p in spec.space} and spec.base_config()["optimizer"] == "adamw"
    assert spec.points_to_evaluate == ({"lr": 0.05, "arch": "resnet18", "width": 0.25},)
    # A parameter conditional on the pinned key: unconditional where the value meets the condition,
    width = parse_spec(raw, source="s.yaml", overrides={"arch": "resnet18"}).space
    assert [(p.name, p.when) for p in width if p.name == "width"] == [("width", ())]
    # ... and gone where it does not (with a resnet34, width never applies).
    spec = parse_spec(raw, source="s.yaml", overrides={"arch": "resnet34"})
    assert {p.name for p in spec.space} == {"lr", "optimizer"}
    assert spec.points_to_evaluate == ({"lr": 0.05, "optimizer": "sgd"},)


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", "x y", "", "nàme"])
def test_a_search_name_that_could_leave_the_storage_is_refused(tmp_path, name):
    from tuner.errors import UserError
    from tuner.places import search_places
    from tuner.search.command import start_search

    with pytest.raises(UserError, match="must be a non-empty name of letters, digits, - and _"):
        search_places(name, tracking_uri="sqlite:///x.db", storage=str(tmp_path / "runs"))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(base(tmp_path)))
    with pytest.raises(UserError, match=r"^--name .*: must be a non-empty name"):
        start_search(spec, overrides={}, name=name)  # refused before anything is written
    assert not (tmp_path / "runs").exists() and not list(tmp_path.parent.glob("x"))
