"""preview-augment: the grid's size, its labels, draws that differ; bad input; MLflow logging."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tuner.cli import main
from tuner.diagnose.preview import CAPTION, HEADER, PAD, grid_size, preview_augment
from tuner.diagnose.tracking import EXPERIMENT


def test_grid_has_the_expected_size_labels_and_differing_draws(demo_data, tmp_path):
    out = tmp_path / "grid.png"
    result = preview_augment(demo_data / "train", preset="journal", params={"rotation": 30}, images=4,
                             draws=3, tile=64, out=out)
    with Image.open(out) as png:
        assert png.size == result.size == grid_size(4, 3, 64) == (PAD + 4 * (64 + PAD),
                                                                  HEADER + 4 * (64 + CAPTION + PAD) + PAD)
        pixels = np.asarray(png.convert("RGB"))
    assert result.labels == ["airplane", "automobile", "bird", "cat"]  # classes in turn
    assert result.draws.shape == (4, 3, 3, 32, 32)  # the sample's 32 px side
    for row in range(4):
        draws = result.draws[row]
        assert not any(np.allclose(draws[a], draws[b]) for a in range(3) for b in range(a + 1, 3))
        # ... and it shows in the PNG: the tiles of one row differ from each other.
        top = HEADER + row * (64 + CAPTION + PAD)
        tiles = [pixels[top: top + 64, PAD + c * (64 + PAD): PAD + c * (64 + PAD) + 64] for c in range(4)]
        assert all(not np.array_equal(tiles[a], tiles[b]) for a in range(4) for b in range(a + 1, 4))


def test_same_seed_same_grid_and_preset_none_is_the_plain_image(demo_data, tmp_path):
    one = preview_augment(demo_data / "train", preset="light", images=2, draws=2, out=tmp_path / "a.png")
    two = preview_augment(demo_data / "train", preset="light", images=2, draws=2, out=tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert one.paths == two.paths
    plain = preview_augment(demo_data / "train", preset="none", images=2, draws=2, out=tmp_path / "c.png")
    assert np.allclose(plain.draws[:, 0], plain.originals) and np.allclose(plain.draws[:, 1], plain.originals)


@pytest.mark.parametrize("flags, message", [
    (["--preset", "sepia"], "--preset: unknown augmentation preset 'sepia'; valid: "),
    (["--preset", "journal", "--set", "spin=3"], "--set: aug: unknown parameter(s) spin"),
    (["--preset", "light", "--images", "0"], "--images: must be >= 1, got 0"),
])
def test_bad_input_is_one_line_and_exit_status_2(demo_data, tmp_path, capsys, flags, message):
    assert main(["data", "preview-augment", str(demo_data / "train"), *flags,
                 "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_with_tracking_uri_it_is_an_mlflow_run_in_diagnostics(demo_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the embedded artifact store is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["data", "preview-augment", str(demo_data / "train"), "--preset", "journal",
                 "--set", "grayscale=0.5", "--images", "2", "--draws", "2", "--out", "grid.png",
                 "--tracking-uri", uri]) == 0
    assert "logged MLflow run" in capsys.readouterr().out
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.data.tags["tuner.diagnostic"] == "preview-augment" and run.info.status == "FINISHED"
    assert run.data.params["preset"] == "journal" and run.data.params["aug.grayscale"] == "0.5"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["grid.png"]
    assert (tmp_path / "mlruns" / EXPERIMENT).is_dir()
