"""Running searches: the spec's space compiled for Optuna (space.py), the sampler and scheduler
registries, our truthful OptunaSearch (searcher.py), the Ray Tune driver, the saved definition that
``tuner resume`` reads, and the ``search``/``resume`` commands as library calls (command.py)."""
