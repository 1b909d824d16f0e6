"""Batch-size probe: the search itself on known measures, then real steps against a CPU budget."""

from __future__ import annotations

import json

import pytest
import torch

from tuner.cli import main
from tuner.diagnose.batch_size import BudgetTooSmall, diagnose_batch_size, largest_fitting
from tuner.spec.batch_probe import load_probe, max_batch_size, power_of_two_choices, probe_path
from tuner.diagnose.memory import ProbeSettings, measure_saved_tensors, parse_memory_size
from tuner.errors import UserError
from trainables.models import build_model
from trainables.optim import build_optimizer


@pytest.mark.parametrize("usable", [1, 7, 100, 999, 1000, 1001, 4095])
def test_search_finds_the_exact_boundary_of_a_linear_measure(usable):
    calls = []

    def measure(batch):
        calls.append(batch)
        return 50 + 10 * batch

    usable_bytes = 50 + 10 * usable + 5
    best, capped, seen = largest_fitting(measure, usable_bytes, cap=10_000)
    assert best == usable and not capped
    assert seen[best] <= usable_bytes < seen[best + 1]
    assert len(calls) <= usable.bit_length() + 4  # doubling + two interpolated guesses


def test_search_bisects_a_nonlinear_measure_and_out_of_memory():
    def measure(batch):  # quadratic growth, and the device runs out above 300
        return None if batch > 300 else batch * batch

    best, capped, _ = largest_fitting(measure, usable=250 * 250 + 10, cap=4096)
    assert best == 250 and not capped
    best, _, seen = largest_fitting(measure, usable=10**9, cap=4096)
    assert best == 300 and seen[301] is None


def test_search_stops_at_the_cap_and_refuses_a_budget_below_batch_one():
    best, capped, _ = largest_fitting(lambda b: b, usable=10**9, cap=100)
    assert (best, capped) == (100, True)
    with pytest.raises(BudgetTooSmall):
        largest_fitting(lambda b: 1000 + b, usable=500, cap=100)


@pytest.mark.parametrize("text, size", [("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)),
                                        ("2GB", 2 * 10**9), ("4096", 4096), ("64 kib", 65536)])
def test_memory_sizes(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["", "two GiB", "2XB", "-1GiB", "0"])
def test_bad_memory_sizes_are_user_errors(text):
    with pytest.raises(UserError, match="--memory-budget"):
        parse_memory_size(text)


def _fresh_measure(settings: ProbeSettings, batch: int) -> int:
    model = build_model("resnet18", num_classes=10, image_size=32, width=0.125)
    optimizer = build_optimizer(model.parameters(), name="sgd", lr=1e-3)
    return measure_saved_tensors(model, optimizer, settings, batch)


def test_cpu_probe_finds_the_largest_batch_within_the_budget(write_config, tmp_path):
    config = write_config()
    out = tmp_path / "probe.json"
    report = diagnose_batch_size(config, memory_budget="24MiB", out=out, max_batch=512)
    [result] = report.document["results"]
    assert (result["arch"], result["width"]) == ("resnet18", 0.125)
    best, usable = result["max_batch_size"], report.document["usable_bytes"]
    assert usable == int(24 * 2**20 * 0.9) and not result["capped"]
    settings = ProbeSettings(device=torch.device("cpu"), measure="saved-tensors", limit_bytes=24 * 2**20,
                             margin=0.1, image_size=32, num_classes=10, optimizer="sgd", max_batch=512)
    # Independently of the search: the found size trains within the budget, one more would not.
    at_best = _fresh_measure(settings, best)
    assert at_best == result["bytes_at_max"] and at_best <= usable
    assert _fresh_measure(settings, best + 1) > usable
    assert 8 <= best <= 256  # ~0.5 MiB of saved activations per 32 px image at width 0.125

    probe = load_probe(out)
    assert json.loads(out.read_text()) == probe
    assert max_batch_size(probe, arch="resnet18") == best
    assert power_of_two_choices(probe, minimum=8)[-1] <= best < 2 * power_of_two_choices(probe, minimum=8)[-1]


def test_spec_probe_covers_every_width_and_lands_beside_the_spec(demo_spec):
    report = diagnose_batch_size(demo_spec, memory_budget="16MiB", max_batch=64)
    assert report.out == probe_path(demo_spec) == demo_spec.with_name("demo.batch_size.json")
    results = {r["width"]: r["max_batch_size"] for r in report.document["results"]}
    assert set(results) == {0.125, 0.25}
    assert results[0.25] < results[0.125]  # wider layers, more activations per image
    assert report.document["optimizer"] == "adam"  # the spec searches sgd and adam: the larger state


def test_load_probe_rejects_other_files(tmp_path):
    bad = tmp_path / "x.batch_size.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a batch-size probe"):
        load_probe(bad)
    with pytest.raises(UserError, match="run `tuner diagnose batch-size`"):
        load_probe(tmp_path / "missing.json")


@pytest.mark.parametrize("flags, message", [
    (["--arch", "resnet19"], "--arch: unknown architecture 'resnet19'; valid: "),
    (["--image-size", "4"], "--image-size: image_size: must be >= 8 pixels, got 4"),
    (["--memory-budget", "256KiB"], "--memory-budget: 230.40 KiB usable"),
    (["--memory-budget", "lots"], "--memory-budget: expected a size like 2GiB"),
])
def test_bad_input_is_one_line_and_exit_status_2(write_config, capsys, flags, message):
    assert main(["diagnose", "batch-size", str(write_config()), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_prints_the_table_writes_the_json_and_logs_a_run(write_config, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    config = write_config()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["diagnose", "batch-size", str(config), "--image-size", "16", "--memory-budget", "8MiB",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    probe = load_probe(probe_path(config))
    best = probe["results"][0]["max_batch_size"]
    assert "resnet18" in out and f" {best} │" in out
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("diagnostics").experiment_id])
    assert run.data.metrics["max_batch_size.resnet18_w0.125"] == best
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["trial.batch_size.json"]
