"""The bound on epochs to the target (bench/curves/bound.py), on hand-made curves whose answers are known."""

from __future__ import annotations

import json

import numpy as np

from bench.curves.bound import crossing_epochs, epochs_to_target, main, simulate

# Nine configurations that never reach 0.5 (one looks good at epoch 1, then stalls) and one that
# reaches it at epoch 4 after a poor first epoch: ASHA may stop it at epoch 1, the oracle never does.
LOSERS = [np.array([0.1 + 0.01 * i] * 9) for i in range(8)] + [np.array([0.45] + [0.46] * 8)]
WINNER = np.array([0.10, 0.30, 0.40, 0.55, 0.6, 0.6, 0.6, 0.6, 0.6])
CURVES = LOSERS + [WINNER]


def test_crossing_epochs_are_one_based_and_none_when_never_reached():
    assert crossing_epochs([WINNER, LOSERS[0]], 0.5) == [4, None]


def test_one_slot_with_only_the_winner_costs_its_crossing_epochs():
    rng = np.random.default_rng(0)
    for rule in ("oracle", "asha"):
        assert epochs_to_target([WINNER], 0.5, rng, rule=rule, slots=1) == 4


def test_oracle_spends_one_epoch_per_loser_and_beats_asha():
    rng = np.random.default_rng(0)
    oracle = [epochs_to_target(CURVES, 0.5, rng, rule="oracle", slots=1) for _ in range(300)]
    # One slot: each loser drawn costs exactly 1 epoch, the winner 4, so the total is 4 + losers drawn.
    assert min(oracle) == 4 and all(v >= 4 for v in oracle)
    asha = simulate(CURVES, 0.5, rule="asha", boost=1.0, runs=100, seed=0, slots=1, max_epochs=100)
    asha = [v if v is not None else np.inf for v in asha]
    assert np.median(asha) > np.median(oracle)


def test_a_sampler_that_draws_the_winner_more_often_reaches_the_target_sooner():
    plain = simulate(CURVES, 0.5, rule="oracle", boost=1.0, runs=400, seed=1, slots=2)
    boosted = simulate(CURVES, 0.5, rule="oracle", boost=5.0, runs=400, seed=1, slots=2)
    assert np.mean(boosted) < np.mean(plain)


def test_the_target_that_no_curve_reaches_is_never_reached():
    rng = np.random.default_rng(0)
    assert epochs_to_target(CURVES, 0.99, rng, rule="asha", max_epochs=200) is None


def test_cli_on_the_shipped_recording_writes_every_run(tmp_path):
    out = tmp_path / "bound.json"
    assert main(["--runs", "20", "--boosts", "1,3", "--target", "0.4583", "--within", "94",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["random_configurations"] == 150 and report["command"].startswith("python bench/curves/bound.py")
    assert [(r["rule"], r["boost"]) for r in report["rows"]] == [("oracle", 1.0), ("asha", 1.0), ("asha", 3.0)]
    for row in report["rows"]:
        assert len(row["epochs"]) == 20 and row["target"] == 0.4583 and 0 <= row["share_within"] <= 1
    # The recording's winners cross at 11-13 epochs: no search of 4 slots gets there in fewer.
    assert min(v for r in report["rows"] for v in r["epochs"] if v is not None) >= 11
