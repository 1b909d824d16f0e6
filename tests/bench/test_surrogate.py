"""The curve surrogate on a recording with a known answer: it round-trips through its JSON file,
ranks held-out configurations as the truth does, and its noise is the recorded seed-to-seed spread."""

from __future__ import annotations

import numpy as np
import pytest

from bench.curves.recording import read_metadata, read_table, write_table
from bench.curves.surrogate import Surrogate
from bench.curves.validation import spearman, validate
from tests.bench import synthetic_curves as syn


@pytest.fixture(scope="module")
def recorded():
    return syn.recording()


@pytest.fixture(scope="module")
def model(recorded):
    return Surrogate.fit(*recorded)


def test_the_table_round_trips_with_its_metadata_and_the_space_order(tmp_path, recorded):
    metadata, curves = recorded
    write_table(tmp_path / "c.parquet", curves, metadata)
    again_meta, again = read_table(tmp_path / "c.parquet")
    assert list(again_meta["space"]) == list(syn.SPACE)  # conditions name EARLIER parameters
    assert read_metadata(tmp_path / "c.parquet")["space_sha256"] == metadata["space_sha256"]
    assert [c.config_id for c in again] == [c.config_id for c in curves]
    assert again[3].params == curves[3].params
    np.testing.assert_allclose(again[3].epochs["val_acc"], curves[3].epochs["val_acc"])


def test_the_surrogate_round_trips_through_its_file(tmp_path, model):
    model.save(tmp_path / "s.json")
    loaded = Surrogate.load(tmp_path / "s.json")
    params = {"optimizer": "sgd", "lr": 0.0321, "augmentation": "rrc", "aug.min_scale": 0.5, "mixup_alpha": 0.0}
    np.testing.assert_allclose(loaded.predict(params).val_acc, model.predict(params).val_acc, atol=1e-4)
    np.testing.assert_allclose(loaded.sample(params, 7).val_acc, model.sample(params, 7).val_acc, atol=1e-4)


def test_it_ranks_held_out_configurations_like_the_truth(recorded):
    metadata, curves = recorded
    model = Surrogate.fit(metadata, curves[:45])
    held = [syn.draw(np.random.default_rng(100 + i)) for i in range(15)]
    predicted = [model.predict(p).val_acc[-1] for p in held]
    truth = [syn.quality(p) for p in held]
    assert spearman(truth, predicted) > 0.8
    good = {"optimizer": "sgd", "lr": 0.05, "augmentation": "rrc", "aug.min_scale": 0.25, "mixup_alpha": 0.2}
    bad = {**good, "lr": 0.0012}
    assert model.predict(good).val_acc[-1] > model.predict(bad).val_acc[-1] + 0.1
    # Continuous values between recorded points get their own curves, not the same neighbour's.
    assert model.predict({**good, "lr": 0.03}).val_acc[-1] != model.predict({**good, "lr": 0.012}).val_acc[-1]


def test_the_fit_learns_which_parameters_matter(model):
    weights = dict(zip(model.param_names, model.state["weights"]))
    assert weights["lr"] > weights["mixup_alpha"]


def test_noise_comes_from_the_repeats_and_is_deterministic_per_seed(model):
    assert "residuals" in model.state["noise"]["source"]
    params = {"optimizer": "adamw", "lr": 0.01, "augmentation": "light", "mixup_alpha": 0.0}
    a, b = model.sample(params, 1).val_acc, model.sample(params, 1).val_acc
    np.testing.assert_array_equal(a, b)
    spread = np.std([model.sample(params, s).val_acc[-1] for s in range(30)])
    assert 0.0 < spread < 0.05


def test_validation_reports_rank_correlation_on_held_out_curves(recorded):
    result = validate(*recorded, folds=3)
    assert result["spearman_final"] > 0.8 and result["configurations"] == len(recorded[1])


def test_spearman_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(1.0)
