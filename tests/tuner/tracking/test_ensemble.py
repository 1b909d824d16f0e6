"""`tuner promote --ensemble K` on the real team search: the members are what greedy forward selection
on the first validation half gives, the card's numbers are the second half's, the model is ONE
registered version without pickle that `tuner predict`, `tuner evaluate` and `mlflow.pyfunc` all
read the same way; bad input registers nothing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.tuner.tracking.conftest import assert_user_error, run_cli
from tests.tuner.tracking.test_promote_predict import PICKLE_HEADER, download
from trainables.data import load_rgb_image
from trainables.inference import load_classifier
from tuner.lastmile.ensemble import combine_probabilities
from tuner.lastmile.selection import accuracy, greedy_select, split_halves

pytestmark = pytest.mark.slow

MODEL = "team-ensemble"
IMAGES = 24


@pytest.fixture(scope="module")
def ensemble(team_search, team_client, quick_data):
    uri = team_search.server.uri
    board = json.loads(run_cli("leaderboard", "team", "--tracking-uri", uri, "--format", "json").stdout)
    proc = run_cli("promote", "team", "--ensemble", "3", "--model-name", MODEL, "--replacement",
                   "--val", str(quick_data / "val"), "--tta", "flips", "--calibrate", "balanced",
                   "--quiet", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    version = team_client.get_model_version_by_alias(MODEL, "champion")
    local = download(f"models:/{MODEL}@champion", uri)
    card = json.loads(next(local.rglob("ensemble.json")).read_text())
    return board, proc.stdout, version, local, card


def candidate_probabilities(board, team_client, val_dir: Path):
    """Each finished trial's softmax on every validation image, computed here from its checkpoint
    with the flips views written out (image and mirror, averaged)."""
    files = [(p, d.name) for d in sorted(val_dir.iterdir()) for p in sorted(d.iterdir())]
    probs = []
    for entry in board:
        location = team_client.get_run(entry["run_id"]).data.tags["tuner.best_checkpoint"]
        classifier = load_classifier(Path(location) / "checkpoint.pt")
        batch = torch.stack([classifier.transform(load_rgb_image(p)) for p, _ in files])
        with torch.no_grad():
            views = [classifier.model(batch).softmax(1), classifier.model(torch.flip(batch, [3])).softmax(1)]
        probs.append(torch.stack(views).mean(0))
    labels = torch.tensor([classifier.class_names.index(name) for _, name in files])
    return torch.stack(probs), labels, [str(p) for p, _ in files]


def test_members_are_the_greedy_choice_and_the_card_reports_the_other_half(ensemble, team_client, quick_data):
    board, out, version, _, card = ensemble
    probs, labels, paths = candidate_probabilities(board, team_client, quick_data / "val")
    select, report = split_halves(paths, labels.tolist())
    expected = greedy_select(probs[:, select], labels[select], 3, replacement=True)
    trials = [entry["trial"] for entry in board]
    assert [step["pick"] for step in card["selection"]["steps"]] == [trials[i] for i in expected.picks]
    assert [(m["trial"], m["weight"]) for m in card["members"]] == \
        [(trials[i], pytest.approx(w)) for i, w in expected.weights.items()]
    # Selected on its own half with replacement, the ensemble is not below its best member there
    # (picking the best member again is always a choice), but for one image: these 2-epoch models
    # are near chance, their probabilities near uniform, and rounding in the geometric mean breaks
    # argmax ties either way.
    chosen = list(expected.weights)
    weights = torch.tensor(list(expected.weights.values()))
    one_image = 1 / len(select)
    best_member = max(accuracy(probs[i][select], labels[select]) for i in range(len(board)))
    on_select = accuracy(combine_probabilities(probs[chosen][:, select], weights, "geometric"), labels[select])
    assert on_select >= best_member - one_image - 1e-9
    assert expected.steps[-1]["accuracy"] >= best_member - one_image - 1e-9
    # The reported numbers are the held-out half's, recomputed here.
    held = card["validation"]["report_half"]
    combined = combine_probabilities(probs[chosen][:, report], weights, "geometric")
    assert held["images"] == len(report) == 100
    assert held["ensemble"] == pytest.approx(accuracy(combined, labels[report]))
    assert held["best_member"] == pytest.approx(accuracy(probs[0][report], labels[report]))
    assert f"ensemble {held['ensemble']:.4f}, best single trial {held['best_member']:.4f}" in out
    # Lineage: one version, in the search's parent run, the alias on it.
    assert version.tags["tuner.kind"] == "ensemble"
    assert version.tags["tuner.members"] == ",".join(m["trial"] for m in card["members"])
    parent = team_client.get_run(version.run_id)
    assert parent.data.tags["tuner.kind"] == "search"
    for member in card["members"]:
        run = team_client.get_run(member["run_id"])
        assert member["checkpoint"] == run.data.tags["tuner.best_checkpoint"]
    assert card["tta"] == "flips" and card["combine"] == "geometric"


def test_calibration_is_recorded_from_the_members_training_counts(ensemble, quick_data):
    *_, card = ensemble
    calibration = card["calibration"]
    assert calibration["target_spec"] == "balanced"
    assert calibration["target"] == pytest.approx([0.1] * 10)
    # The members trained on seeded subsets of the balanced sample: near-uniform, not exact.
    assert sum(calibration["source"]) == pytest.approx(1.0)
    assert max(abs(p - 0.1) for p in calibration["source"]) < 0.05
    assert "ensemble_calibrated" in card["validation"]["report_half"]


def test_the_ensemble_model_holds_no_pickle(ensemble):
    *_, local, card = ensemble
    files = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
    assert [n for n, p in files.items() if p.read_bytes()[:1] == PICKLE_HEADER] == []
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor and flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    members = sorted(n for n in files if n.endswith(".pt"))
    assert members == [f"artifacts/ensemble/member-{n}.pt" for n in range(len(card["members"]))]


def test_predict_evaluate_and_pyfunc_agree(ensemble, team_search, demo_data, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    *_, card = ensemble
    uri = team_search.server.uri
    images = tmp_path / "test"
    images.mkdir()
    for n in range(1, IMAGES + 1):
        shutil.copy(demo_data / "test" / f"{n}.jpg", images / f"{n}.jpg")
    key = tmp_path / "key.csv"
    with open(demo_data / "test_labels.csv", newline="") as src, open(key, "w", newline="") as dst:
        rows = [r for r in csv.DictReader(src) if int(r["id"]) <= IMAGES]
        writer = csv.DictWriter(dst, ["id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "sub.csv"
    proc = run_cli("predict", f"models:/{MODEL}@champion", "--images", str(images), "--out", str(out),
                   "--quiet", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as handle:
        submitted = {r["id"]: r["predicted"] for r in csv.DictReader(handle)}

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    paths = [str(images / f"{n}.jpg") for n in range(1, IMAGES + 1)]
    predicted = model.predict(pd.DataFrame({"path": paths}))
    assert dict(zip([str(n) for n in range(1, IMAGES + 1)], predicted["predicted"])) == submitted

    report = tmp_path / "eval.json"
    proc = run_cli("evaluate", f"models:/{MODEL}@champion", "--images", str(images), "--key", str(key),
                   "--tta", "flips", "--json", str(report), "--quiet", "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(report.read_text())["rows"]
    # Greedy selection with replacement may pick one trial every time: evaluate then scores a
    # one-member model as "model" and lists no members (a member alone is the model itself).
    several = len(card["members"]) > 1
    calibrated = next(r for r in rows if r["model"] == ("ensemble" if several else "model")
                      and r["calibration"] == "model")
    truth = {r["id"]: r["label"] for r in csv.DictReader(open(key, newline=""))}
    hits = sum(submitted[i] == truth[i] for i in truth)
    assert calibrated["accuracy"] == pytest.approx(hits / IMAGES)  # what predict submits, scored
    assert sum(map(sum, calibrated["confusion"])) == IMAGES
    assert len([r for r in rows if r["model"].startswith("member ")]) == (len(card["members"]) if several else 0)
    assert "logged to MLflow run" in proc.stdout


def test_bad_input_registers_nothing(ensemble, team_search, team_client, quick_data):
    board, *_ = ensemble
    uri = team_search.server.uri
    before = len(team_client.search_model_versions(f"name='{MODEL}'"))
    assert_user_error(run_cli("promote", "team", "--ensemble", "9", "--model-name", MODEL,
                              "--tracking-uri", uri),
                      "--ensemble 9: search 'team' has only 4 trial(s) with a val_acc")
    assert_user_error(run_cli("promote", "team", "--ensemble", "2", "--trial", board[0]["trial"],
                              "--tracking-uri", uri), "--trial and --ensemble")
    assert_user_error(run_cli("promote", "team", "--calibrate", "balanced", "--tracking-uri", uri),
                      "--calibrate: only with --ensemble K")
    assert_user_error(run_cli("promote", "team", "--ensemble", "2", "--tta", "sideways",
                              "--model-name", MODEL, "--tracking-uri", uri),
                      "unknown test-time augmentation 'sideways'")
    # A member whose checkpoint is gone: moved away for the call, then back (other tests read it).
    location = Path(team_client.get_run(board[1]["run_id"]).data.tags["tuner.best_checkpoint"])
    hidden = location.with_name(location.name + ".away")
    location.rename(hidden)
    try:
        assert_user_error(run_cli("promote", "team", "--ensemble", "3", "--model-name", MODEL,
                                  "--val", str(quick_data / "val"), "--tracking-uri", uri),
                          f"trial {board[1]['trial']}: checkpoint {location} is gone")
    finally:
        hidden.rename(location)
    assert len(team_client.search_model_versions(f"name='{MODEL}'")) == before
