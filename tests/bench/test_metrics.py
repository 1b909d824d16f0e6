"""Anytime curves, epochs to a target and the method plumbing, on hand-made examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.curves.metrics import anytime_best, epochs_to_reach, quantiles, speedup, summarise_method
from bench.curves.methods import expected_epochs_per_trial, journal_lr_grid, journal_plain_values


def test_anytime_best_is_the_running_maximum_carried_to_the_budget():
    np.testing.assert_allclose(anytime_best([0.2, 0.1, 0.5, 0.4], 6), [0.2, 0.2, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(anytime_best([0.2, 0.1, 0.5, 0.9], 3), [0.2, 0.2, 0.5])  # cut at the budget
    assert np.isnan(anytime_best([], 3)).all()


def test_epochs_to_reach():
    curve = [0.1, 0.3, 0.3, 0.6]
    assert epochs_to_reach(curve, 0.3) == 2
    assert epochs_to_reach(curve, 0.6) == 4
    assert epochs_to_reach(curve, 0.7) is None
    assert epochs_to_reach([math.nan, 0.5], 0.4) == 2


def test_summary_of_a_method_over_three_seeds():
    curves = [[0.1, 0.2, 0.4, 0.4], [0.2, 0.3, 0.3, 0.5], [0.0, 0.1, 0.6, 0.6]]
    q = quantiles(curves)
    np.testing.assert_allclose(q["median"], [0.1, 0.2, 0.4, 0.5])
    summary = summarise_method(curves, target=0.4)
    assert summary["epochs_to_target"] == 3  # the MEDIAN curve reaches 0.4 at epoch 3
    assert summary["epochs_to_target_per_seed"] == [3, 4, 3]
    assert summary["final_best_median"] == pytest.approx(0.5)
    assert summary["seeds_reaching_target"] == 3


def test_speedup_is_baseline_epochs_over_the_method_epochs():
    assert speedup(120, 40) == 3.0
    assert speedup(120, None) is None


class _Spec:
    def __init__(self, name, epochs, **options):
        self.epochs = epochs
        self.scheduler = type("S", (), {"name": name, "options": options})()


def test_expected_epochs_per_trial():
    assert expected_epochs_per_trial(_Spec("fifo", 15)) == 15
    # rungs 1, 3, 9, then 15: 1 + 2/3 + 6/9 + 6/27
    assert expected_epochs_per_trial(_Spec("asha", 15, grace_period=1, reduction_factor=3)) == \
        pytest.approx(1 + 2 / 3 + 6 / 9 + 6 / 27)


def test_the_journal_grid_inside_the_recipe_space():
    space = {"optimizer": {"choice": ["sgd", "adamw"]}, "lr": {"loguniform": [0.001, 0.4]},
             "weight_decay": {"loguniform": [0.00005, 0.1]}, "augmentation": {"choice": ["light", "rrc"]},
             "aug.min_scale": {"choice": [0.25, 0.5], "when": {"augmentation": ["rrc"]}}}
    assert journal_lr_grid(space) == [2.0 ** -k for k in range(2, 10)]
    assert journal_plain_values(space) == {"optimizer": "sgd", "weight_decay": 0.0005, "augmentation": "light"}


def test_resume_keeps_only_finished_methods_of_a_run_under_the_same_conditions(tmp_path):
    from bench.search_quality import kept_results

    conditions = {"seeds": [0, 1], "budget_epochs": 30, "priors": "none", "curves_sha256": "abc"}
    rows = [{"seed": 0, "curve": [0.1]}, {"seed": 1, "curve": [0.2]}]
    saved = {"conditions": conditions, "methods": {"random+fifo": {"per_seed": rows},
                                                   "default": {"per_seed": rows[:1]},  # cut short
                                                   "no-such-method": {"per_seed": rows}}}
    out = tmp_path / "sq.json"
    assert kept_results(out, conditions) == {}  # nothing saved yet
    out.write_text(json.dumps(saved))
    assert kept_results(out, conditions) == {"random+fifo": rows}
    assert kept_results(out, {**conditions, "curves_sha256": "another recording"}) == {}
