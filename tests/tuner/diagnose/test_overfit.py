"""overfit: a healthy config memorises its subset; head-only, shuffled labels, augmentation and a
diverging rate are each found by their own check."""

from __future__ import annotations

import json

from tuner.cli import main
from tuner.diagnose.overfit import diagnose_overfit


def _checks(result) -> dict:
    return {check.name: check.found for check in result.checks}


def test_a_healthy_config_passes_and_finds_nothing(write_config, tmp_path):
    result = diagnose_overfit(write_config(), samples=128, max_steps=200, target_accuracy=0.95,
                              out_dir=tmp_path)
    assert result.passed and result.final_accuracy >= 0.95 and result.steps <= 200
    assert _checks(result) == {"frozen_parameters": False, "learning_rate": False,
                               "shuffled_labels": False, "augmentation": False}
    saved = json.loads((tmp_path / "overfit.json").read_text())
    assert saved["passed"] is True and saved["history"][-1]["accuracy"] >= 0.95
    assert (tmp_path / "overfit.png").stat().st_size > 10_000


def test_head_only_fails_and_is_found(write_config, tmp_path):
    result = diagnose_overfit(write_config(finetune="head"), samples=128, max_steps=40,
                              probe_lr=False, out_dir=tmp_path)
    assert not result.passed
    found = result.found()
    assert [c.name for c in found] == ["frozen_parameters"]
    assert "only 650 of 176,402 parameters (0.4%) are trained (finetune: head)" in found[0].detail


def test_shuffled_labels_are_found(write_config, shuffled_train, tmp_path):
    result = diagnose_overfit(write_config(train_dir=shuffled_train), samples=256, max_steps=8,
                              probe_lr=False, out_dir=tmp_path)
    checks = _checks(result)
    assert checks["shuffled_labels"] is True and checks["frozen_parameters"] is False


def test_augmentation_left_on_and_a_diverging_rate_are_found(write_config, tmp_path):
    result = diagnose_overfit(write_config(lr=1e4), samples=64, max_steps=20, keep_augmentation=True,
                              out_dir=tmp_path)
    checks = _checks(result)
    assert not result.passed and result.diverged
    assert checks["augmentation"] is True and checks["learning_rate"] is True
    assert "lr 1e+04 is too high" in next(c.detail for c in result.checks if c.name == "learning_rate")


def test_cli_reports_the_verdict_and_the_causes(write_config, tmp_path, capsys):
    config = write_config(finetune="head")
    code = main(["diagnose", "overfit", str(config), "--samples", "64", "--max-steps", "16",
                 "--no-lr-probe", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "FAILED after 16 steps" in out and "likely causes found: frozen_parameters" in out
    assert "[FOUND] frozen_parameters: only 650 of" in out
    assert main(["diagnose", "overfit", str(config), "--samples", "3001"]) == 2
    assert "--samples: 3001 is larger than the 3000 images" in capsys.readouterr().err


def test_with_tracking_uri_the_run_holds_verdict_checks_curves_and_plot(write_config, tmp_path,
                                                                          monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["diagnose", "overfit", str(write_config(finetune="head")), "--samples", "64",
                 "--max-steps", "8", "--no-lr-probe", "--out-dir", "out", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("diagnostics").experiment_id])
    assert run.data.metrics["passed"] == 0.0 and run.data.params["samples"] == "64"
    assert run.data.tags["tuner.check.frozen_parameters"] == "found"
    assert run.data.tags["tuner.check.learning_rate"] == "not checked"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4  # 64 images / 32: 4 epochs
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["overfit.json", "overfit.png"]
