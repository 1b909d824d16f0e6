"""`tuner promote` registers a trial's checkpoint with lineage and moves the alias; `tuner predict`
turns the promoted model into a submission, with and without test-time augmentation. The promoted
model holds no pickle (MLflow "models from code"), and `tuner predict` refuses a pickled one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
import yaml

from mlflow.pyfunc import PythonModel

from tests.tuner.tracking.conftest import SPEC, assert_user_error, run_cli
from trainables.data import load_rgb_image
from trainables.inference import load_classifier

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]

IMAGES = 48  # test images predicted per run: enough for the TTA comparison, cheap on 2 cores


@pytest.fixture(scope="module")
def promoted(team_search, team_client):
    """Best trial promoted, then the second best: (board, first output, second output)."""
    uri = team_search.server.uri
    board = json.loads(run_cli("leaderboard", "team", "--tracking-uri", uri,
                             "--format", "json").stdout)
    first = run_cli("promote", "team", "--tracking-uri", uri)
    assert first.returncode == 0, first.stderr
    second = run_cli("promote", "team", "--trial", board[1]["trial"], "--tracking-uri", uri)
    assert second.returncode == 0, second.stderr
    return board, first.stdout, second.stdout


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_promote_registers_with_lineage_and_moves_the_alias(promoted, team_client, team_search):
    board, first, second = promoted
    assert f"promoted trial {board[0]['trial']}" in first and "version 1; alias @champion" in first
    assert "version 2; alias @champion (moved from version 1)" in second
    champion = team_client.get_model_version_by_alias("team", "champion")
    assert champion.version == "2"
    version_1 = team_client.get_model_version("team", "1")
    for version, entry in ((version_1, board[0]), (champion, board[1])):
        assert version.tags["tuner.search"] == "team"
        assert version.tags["tuner.trial_id"] == entry["trial"]
        assert version.tags["tuner.run_id"] == entry["run_id"] == version.run_id
        assert version.tags["tuner.metric"] == "val_acc"
        assert float(version.tags["tuner.metric_value"]) == entry["best"]
        run = team_client.get_run(entry["run_id"])
        assert version.tags["tuner.checkpoint"] == run.data.tags["tuner.best_checkpoint"]
        assert run.info.status == "FINISHED"  # logging the model did not re-open the trial's run


def test_promoted_model_carries_class_map_and_preprocessing(promoted, team_search, demo_data):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(team_search.server.uri)
    mlflow.set_registry_uri(team_search.server.uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/team@champion"))
    card = json.loads(next(local.rglob("model_card.json")).read_text())
    classes = sorted(p.name for p in (demo_data / "train").iterdir())
    assert sorted(card["class_names"]) == classes
    assert card["preprocessing"]["image_size"] == 32 and len(card["preprocessing"]["mean"]) == 3
    # The trial trained on a seeded subset: its class counts, in class index order, add up to it.
    assert len(card["class_counts"]) == len(classes) and sum(card["class_counts"]) == SPEC["fixed"]["train_subset"]
    model = mlflow.pyfunc.load_model("models:/team@champion")
    paths = [str(demo_data / "test" / f"{i}.jpg") for i in (1, 2, 3)]
    predicted = model.predict(pd.DataFrame({"path": paths}))
    assert list(predicted["predicted"]) and set(predicted["predicted"]) <= set(classes)


def test_promote_bad_input_writes_nothing(promoted, team_search, team_client):
    uri = team_search.server.uri
    before = len(team_client.search_model_versions("name='team'"))
    assert_user_error(run_cli("promote", "team", "--trial", "nope", "--tracking-uri", uri),
                      "--trial: 'nope' is not a trial of search 'team'")
    assert_user_error(run_cli("promote", "nope", "--tracking-uri", uri),
                      "no search named 'nope'")
    assert_user_error(run_cli("promote", "team", "--alias", "not ok!", "--tracking-uri", uri),
                      "--alias: Invalid alias name")
    assert len(team_client.search_model_versions("name='team'")) == before


@pytest.fixture(scope="module")
def test_images(demo_data, tmp_path_factory) -> Path:
    """IMAGES real test photos, one text file posing as image 999, and a hidden file."""
    folder = tmp_path_factory.mktemp("test-images")
    for number in range(1, IMAGES + 1):
        shutil.copy(demo_data / "test" / f"{number}.jpg", folder / f"{number}.jpg")
    (folder / "999.jpg").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    return folder


def views(images: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The test-time views by their definition (README, `tuner predict --tta`), built here with
    torch and torchvision's own ops: ``none`` the image; ``flips`` + its mirror (left-right);
    ``crops`` + the four corner crops of the image reflect-padded by 1/8 of its side."""
    out = [images]
    if tta in ("flips", "crops"):
        out.append(torch.flip(images, dims=[-1]))
    if tta == "crops":
        side = images.shape[-1]
        pad = side // 8
        padded = TF.pad(images, [pad, pad, pad, pad], padding_mode="reflect")
        out += [TF.crop(padded, top, left, side, side) for top in (0, 2 * pad) for left in (0, 2 * pad)]
    return out


def independent_probabilities(classifier, batch: torch.Tensor, tta: str) -> torch.Tensor:
    """Softmax of the bare model on each view, averaged: not through Classifier.probabilities."""
    with torch.no_grad():
        return torch.stack([classifier.model(v).float().softmax(dim=1) for v in views(batch, tta)]).mean(dim=0)


@pytest.fixture(scope="module")
def champion(promoted, team_client, test_images):
    """The @champion checkpoint and the first IMAGES test photos, preprocessed."""
    version = team_client.get_model_version_by_alias("team", "champion")
    classifier = load_classifier(Path(version.tags["tuner.checkpoint"]) / "checkpoint.pt")
    ids = [str(n) for n in range(1, IMAGES + 1)]
    batch = torch.stack([classifier.transform(load_rgb_image(test_images / f"{i}.jpg")) for i in ids])
    return classifier, ids, batch


def test_tta_views_average_what_they_promise(champion):
    classifier, _, batch = champion
    assert batch.shape[-2:] == (32, 32)  # pad = 4 px: crops really shift
    expected = {tta: independent_probabilities(classifier, batch, tta) for tta in ("none", "flips", "crops")}
    for tta, probs in expected.items():
        torch.testing.assert_close(classifier.probabilities(batch, tta=tta), probs, atol=1e-6, rtol=1e-5)
    # The views change the answer: the mirror and the crops are not the image again.
    assert (expected["flips"] - expected["none"]).abs().amax() > 1e-3
    assert (expected["crops"] - expected["flips"]).abs().amax() > 1e-3


@pytest.mark.parametrize("tta", ["none", "flips", "crops"])
def test_predict_writes_the_submission(champion, team_search, test_images, tmp_path, tta):
    out = tmp_path / "sub" / "submission.csv"
    proc = run_cli("predict", "models:/team@champion", "--images", str(test_images), "--out",
                 str(out), "--tta", tta, "--batch-size", "20", "--tracking-uri", team_search.server.uri)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {IMAGES} rows" in proc.stdout
    assert "skipped 1 file(s) that are no readable image: ids 999" in proc.stdout
    assert "predict: 100%" in proc.stderr  # the progress bar
    rows = read_csv(out)
    assert [r["id"] for r in rows] == [str(n) for n in range(1, IMAGES + 1)]  # numeric id order
    classifier, ids, batch = champion
    labels = independent_probabilities(classifier, batch, tta).argmax(dim=1).tolist()
    assert {r["id"]: r["predicted"] for r in rows} == {i: classifier.class_names[p] for i, p in zip(ids, labels)}
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]  # no .part left


def test_predict_bad_input_leaves_no_half_file(promoted, team_search, tmp_path, test_images):
    uri = team_search.server.uri
    out = tmp_path / "submission.csv"
    out.write_text("id,predicted\nkeep,me\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "1.txt").write_text("x")
    cases = [
        (["models:/team@champion", "--images", str(tmp_path / "empty")], "test image folder is empty"),
        (["models:/team@champion", "--images", str(tmp_path / "junk")], "is a readable image"),
        (["models:/team@nope", "--images", str(test_images)], "does not resolve"),
        (["models:/nope/1", "--images", str(test_images)], "does not resolve"),
        (["no-such-model", "--images", str(test_images)], "does not resolve"),
    ]
    for args, message in cases:
        assert_user_error(run_cli("predict", *args, "--out", str(out), "--tracking-uri", uri), message)
    assert out.read_text() == "id,predicted\nkeep,me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "junk", "submission.csv"]


# --------------------------------------------------------------------------------------------
# No pickle: whoever can write a model's artifacts must not get code run by a pickle on load.

PICKLE_HEADER = b"\x80"  # the PROTO opcode every pickle of protocol 2+ starts with


def download(uri: str, server_uri: str) -> Path:
    import mlflow

    mlflow.set_tracking_uri(server_uri)
    mlflow.set_registry_uri(server_uri)
    return Path(mlflow.artifacts.download_artifacts(uri))


def test_promoted_model_holds_no_pickle(promoted, team_search):
    """Both promoted versions, as stored: no python_model.pkl, no file that is a pickle; the
    pyfunc is the package's own model code, the checkpoint and the model card plain artifacts."""
    for version in ("1", "2"):
        local = download(f"models:/team/{version}", team_search.server.uri)
        files = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
        assert not [n for n in files if Path(n).name.startswith("python_model.pkl")], sorted(files)
        pickles = [n for n, p in files.items() if p.read_bytes()[:1] == PICKLE_HEADER]
        assert pickles == [], f"version {version}: pickled files {pickles}"
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        assert "python_model" not in flavor  # the key MLflow sets for a cloudpickled model
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        shipped = ROOT / "tuner" / "lastmile" / "pyfunc_model.py"  # the package's own source
        assert (local / Path(flavor["model_code_path"]).name).read_text() == shipped.read_text()
        assert {"artifacts/checkpoint.pt", "artifacts/model_card.json"} <= set(files)


def test_pyfunc_loads_without_pickle_and_agrees_with_predict(champion, team_search, test_images,
                                                             tmp_path, monkeypatch):
    """With MLflow told to refuse pickles, the champion loads through pyfunc and predicts real photos
    as the checkpoint does, and as `tuner predict` writes them."""
    import mlflow
    import pandas as pd

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    download("models:/team@champion", team_search.server.uri)  # sets the tracking and registry URI
    model = mlflow.pyfunc.load_model("models:/team@champion")
    classifier, ids, batch = champion
    paths = [str(test_images / f"{i}.jpg") for i in ids]
    predicted = model.predict(pd.DataFrame({"path": paths}))
    labels = independent_probabilities(classifier, batch, "none").argmax(dim=1).tolist()
    assert list(predicted["path"]) == paths
    assert list(predicted["predicted"]) == [classifier.class_names[p] for p in labels]
    out = tmp_path / "submission.csv"
    proc = run_cli("predict", "models:/team@champion", "--images", str(test_images), "--out", str(out),
                   "--quiet", "--tracking-uri", team_search.server.uri)
    assert proc.returncode == 0, proc.stderr
    assert {r["id"]: r["predicted"] for r in read_csv(out)} == dict(zip(ids, predicted["predicted"]))


class LegacyClassifierModel(PythonModel):  # MLflow warns (once) that predict has no type hints
    """The pyfunc `tuner promote` cloudpickled before models from code (same body)."""

    def load_context(self, context) -> None:
        self.classifier = load_classifier(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import pandas as pd  # only when MLflow calls it

        paths = list(model_input["path"])
        batch = torch.stack([self.classifier.transform(load_rgb_image(p)) for p in paths])
        predicted = self.classifier.probabilities(batch).argmax(dim=1).tolist()
        return pd.DataFrame({"path": paths,
                             "predicted": [self.classifier.class_names[i] for i in predicted]})


@pytest.fixture(scope="module")
def legacy_model(promoted, team_search, team_client) -> str:
    """A model registered as an older `tuner promote` did: a cloudpickled python_model beside the
    champion's checkpoint, in an experiment of its own (the search's runs stay as they are)."""
    import mlflow
    from mlflow.models import Model

    download("models:/team@champion", team_search.server.uri)  # sets the tracking and registry URI
    version = team_client.get_model_version_by_alias("team", "champion")
    checkpoint = Path(version.tags["tuner.checkpoint"]) / "checkpoint.pt"
    run = team_client.create_run(team_client.create_experiment("legacy-promote"))
    Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run.info.run_id,
              python_model=LegacyClassifierModel(), artifacts={"checkpoint": str(checkpoint)},
              registered_model_name="legacy", pip_requirements=["torch"])
    team_client.set_terminated(run.info.run_id)
    for key in ("tuner.search", "tuner.trial_id"):  # the lineage the old promote tagged it with
        team_client.set_model_version_tag("legacy", "1", key, version.tags[key])
    return "models:/legacy/1"


def test_predict_refuses_a_pickled_model_from_an_older_promote(legacy_model, team_search, team_client,
                                                               test_images, tmp_path):
    import mlflow
    import pandas as pd

    local = download(legacy_model, team_search.server.uri)
    assert (local / "python_model.pkl").read_bytes()[:1] == PICKLE_HEADER  # it is the old format
    # MLflow itself still loads it (its own default, MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true).
    model = mlflow.pyfunc.load_model(legacy_model)
    assert len(model.predict(pd.DataFrame({"path": [str(test_images / "1.jpg")]}))) == 1
    out = tmp_path / "submission.csv"
    result = run_cli("predict", legacy_model, "--images", str(test_images), "--out", str(out),
                     "--tracking-uri", team_search.server.uri)
    assert_user_error(result, "is a pickled pyfunc (python_model.pkl), promoted by an older tuner")
    trial = team_client.get_model_version("legacy", "1").tags["tuner.trial_id"]
    assert f"promote it again with `tuner promote team --trial {trial} --model-name legacy`" in result.stderr
    assert not out.exists()
    # Named by its logged-model id (no registered version, no lineage tags): the generic advice.
    model_id = yaml.safe_load((local / "MLmodel").read_text())["model_id"]
    result = run_cli("predict", f"models:/{model_id}", "--images", str(test_images), "--out",
                     str(out), "--tracking-uri", team_search.server.uri)
    assert_user_error(result, "`tuner promote SEARCH --trial TRIAL`")
    assert not out.exists()
