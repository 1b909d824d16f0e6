"""ASHA lets the spec's points_to_evaluate (trusted recipes) run all their epochs."""

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from tuner.search.points_to_end import PointsRunToTheEndASHA, is_point
from tuner.search.schedulers import build_scheduler

SEARCHED = {"optimizer", "lr", "aug.min_scale"}
POINT = {"optimizer": "adamw", "lr": 0.003}


def test_a_point_is_a_trial_with_exactly_its_searched_values():
    base = {"epochs": 15, "arch": "resnet18"}  # fixed settings are not searched: they never count
    assert is_point({**base, **POINT}, [POINT], SEARCHED)
    assert not is_point({**base, "optimizer": "adamw", "lr": 0.0031}, [POINT], SEARCHED)
    # a sampled parameter beyond the point: another configuration
    assert not is_point({**base, **POINT, "aug.min_scale": 0.5}, [POINT], SEARCHED)
    # a partial point does not make every trial that shares its choices a point
    assert not is_point({**base, "optimizer": "adamw", "lr": 0.2}, [{"optimizer": "adamw"}], SEARCHED)


def asha(**options):
    return build_scheduler("asha", metric="val_acc", mode="max", epochs=9,
                           options={"grace_period": 1, "reduction_factor": 3, "points_to_end": True, **options},
                           points=(POINT,), searched=frozenset(SEARCHED))


def run_rung(scheduler, trials, epoch, values):
    return [scheduler.on_trial_result(None, t, {"training_iteration": epoch, "val_acc": v})
            for t, v in zip(trials, values)]


def test_asha_stops_a_weak_trial_but_lets_a_weak_point_go_on_and_counts_its_value():
    scheduler = asha()
    assert isinstance(scheduler, PointsRunToTheEndASHA)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"optimizer": "sgd", "lr": 0.1 * (i + 1)}) for i in range(4)]
    point = SimpleNamespace(trial_id="p", config={"epochs": 9, **POINT})
    for t in [*trials, point]:
        scheduler.on_trial_add(None, t)
    run_rung(scheduler, trials, 1, [0.5, 0.6, 0.7, 0.8])
    low = SimpleNamespace(trial_id="low", config={"optimizer": "sgd", "lr": 0.9})
    scheduler.on_trial_add(None, low)
    assert run_rung(scheduler, [low], 1, [0.1]) == [TrialScheduler.STOP]
    # the point, as weak at the same rung, goes on; at every later rung too
    assert run_rung(scheduler, [point], 1, [0.1]) == [TrialScheduler.CONTINUE]
    assert run_rung(scheduler, [point], 3, [0.1]) == [TrialScheduler.CONTINUE]
    # its value was recorded at the rung: the bar for later trials includes it
    rung_1 = dict(scheduler._brackets[0]._rungs)[1]
    assert rung_1["p"] == 0.1
    # the last epoch still ends it
    assert run_rung(scheduler, [point], 9, [0.2]) == [TrialScheduler.STOP]


def test_plain_asha_without_points_or_when_turned_off():
    from ray.tune.schedulers import ASHAScheduler

    assert type(asha(points_to_end=False)) is ASHAScheduler
    plain = build_scheduler("asha", metric="val_acc", mode="max", epochs=9,
                            options={"grace_period": 1, "reduction_factor": 3, "points_to_end": True})
    assert type(plain) is ASHAScheduler


def test_a_search_of_the_shipped_recipe_keeps_its_three_points_to_the_end():
    from pathlib import Path

    from tuner.search.driver import spec_scheduler
    from tuner.spec import load_spec

    spec = load_spec(Path(__file__).parents[3] / "search_spaces" / "recipe.yaml")
    scheduler = spec_scheduler(spec)
    assert isinstance(scheduler, PointsRunToTheEndASHA)
    assert scheduler._points == [dict(p) for p in spec.points_to_evaluate] and len(scheduler._points) == 3
    assert scheduler._searched == {p.name for p in spec.space}
