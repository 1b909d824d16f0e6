"""Candidates for the default search, registered beside the reported methods of ``methods.py``.

Each was compared with the default on the tuning seeds 0-19 only (``bench/curves/README.md``,
"Choosing the default"); none is reported on seeds 20-39 unless it became the default.
``search_quality.py`` imports this module so that ``--methods`` can name them.
"""

from __future__ import annotations

from typing import Optional

from bench.curves.methods import bench_spec, method, real_driver

def _candidate(name: str, summary: str, sampler: Optional[dict], scheduler: Optional[dict]) -> None:
    method(name, summary)(lambda bench, seed: real_driver(
        bench, seed, bench_spec(bench, seed, name, sampler=sampler, scheduler=scheduler)))


for _grace in (2, 3):
    _candidate(f"tpe+asha-g{_grace}", f"TPE + ASHA grace {_grace}, rf 3",
               None, {"name": "asha", "grace_period": _grace, "reduction_factor": 3})
_candidate("tpe+asha-rf4", "TPE + ASHA grace 1, rf 4", None, {"name": "asha", "reduction_factor": 4})
_candidate("tpe+asha-stoppoints", "TPE + ASHA that may stop the spec's points_to_evaluate early",
           None, {"name": "asha", "points_to_end": False})
_candidate("tpe5+asha", "TPE with 5 random start-ups + ASHA (grace 1, rf 3)",
           {"name": "tpe", "options": {"n_startup_trials": 5}}, None)
_candidate("tpe-nolie+asha", "TPE without the constant liar + ASHA (grace 1, rf 3)",
           {"name": "tpe", "options": {"constant_liar": False}}, None)
_candidate("tpe-nolie+asha-rf4", "TPE without the constant liar + ASHA grace 1, rf 4",
           {"name": "tpe", "options": {"constant_liar": False}}, {"name": "asha", "reduction_factor": 4})
_candidate("tpe-ei64+asha", "TPE scoring 64 candidates per suggestion + ASHA (grace 1, rf 3)",
           {"name": "tpe", "options": {"n_ei_candidates": 64}}, None)
_candidate("tpe-g20+asha", "TPE whose good density is the top 20 % + ASHA (grace 1, rf 3)",
           {"name": "tpe", "options": {"gamma": 0.2}}, None)
for _share in (25, 50):
    _candidate(f"tpe-near{_share}+asha", f"TPE, {_share} % of trials near the best so far + ASHA (grace 1, rf 3)",
               {"name": "tpe", "options": {"near_best": _share / 100}}, None)
_candidate("tpe-indep+asha", "univariate TPE (Optuna's default) + ASHA (grace 1, rf 3)",
           {"name": "tpe", "options": {"multivariate": False}}, None)


def register_hyperband_scheduler() -> None:
    """Adds Ray's asynchronous HyperBand (ASHA with several brackets) to the product's scheduler
    registry, for this process only, as ``hyperband-bench``. Ray assigns a trial to a bracket with
    numpy's global generator (bracket s gets weight e^(rungs of s)): the candidate seeds it per seed."""
    from tuner.search.options import Option
    from tuner.search.schedulers import SCHEDULERS, SchedulerEntry

    if "hyperband-bench" in SCHEDULERS:
        return

    def build(b):
        from ray.tune.schedulers import AsyncHyperBandScheduler

        return AsyncHyperBandScheduler(
            time_attr="training_iteration", metric=b.metric, mode=b.mode, max_t=b.epochs,
            grace_period=min(b.options["grace_period"], b.epochs),
            reduction_factor=b.options["reduction_factor"], brackets=b.options["brackets"])

    SCHEDULERS.register("hyperband-bench")(SchedulerEntry(
        build=build, summary="Ray's AsyncHyperBandScheduler (benchmark)", stops_early=True,
        options={"grace_period": Option(int, 1, minimum=1), "reduction_factor": Option(float, 3, minimum=2),
                 "brackets": Option(int, 3, minimum=1)}))


def _hyperband_candidate(brackets: int) -> None:
    name = f"tpe+hb-b{brackets}"

    def run(bench, seed):
        import numpy as np

        register_hyperband_scheduler()
        np.random.seed(seed)  # Ray's bracket draw
        return real_driver(bench, seed, bench_spec(bench, seed, name, scheduler={
            "name": "hyperband-bench", "grace_period": 1, "reduction_factor": 3, "brackets": brackets}))

    method(name, f"TPE + asynchronous HyperBand, {brackets} brackets (grace 1, rf 3)")(run)


for _brackets in (2, 3):
    _hyperband_candidate(_brackets)


def _rung_tpe_candidate(name: str, sampler: str) -> None:
    def run(bench, seed):
        from bench.curves.rung_tpe import register_rung_tpe_sampler  # optuna's internals: only here

        register_rung_tpe_sampler()
        return real_driver(bench, seed, bench_spec(bench, seed, name, sampler={"name": sampler}))

    method(name, f"BOHB-style TPE ({sampler}: fitted on the highest rung with enough finished trials) "
                 "+ ASHA (grace 1, rf 3)")(run)


_rung_tpe_candidate("tpe-rung+asha", "tpe-rung")
_rung_tpe_candidate("tpe-rung-keep+asha", "tpe-rung-keep")


@method("tpe-best+asha", "TPE fitted on every finished trial ranked by its best val_acc at any epoch "
                         "(tpe-best) + ASHA (grace 1, rf 3)")
def _best_value_tpe(bench, seed):
    from bench.curves.rung_tpe import register_rung_tpe_sampler  # optuna's internals: only here

    register_rung_tpe_sampler()
    return real_driver(bench, seed, bench_spec(bench, seed, "tpe-best+asha", sampler={"name": "tpe-best"}))


def _mf_forest_candidate(name: str, random_fraction: float) -> None:
    def run(bench, seed):
        from bench.curves.mf_forest import register_mf_forest_sampler  # sklearn: only here

        register_mf_forest_sampler()
        return real_driver(bench, seed, bench_spec(bench, seed, name, sampler={
            "name": "mf-forest", "options": {"random_fraction": random_fraction}}))

    method(name, f"a random forest over (configuration, epoch) fitted on every reported epoch, "
                 f"{random_fraction:.0%} random trials (mf_forest.py) + ASHA (grace 1, rf 3)")(run)


_mf_forest_candidate("mfrf+asha", 0.2)
