"""Search specs: YAML -> validated, frozen dataclasses; every error names the file, key and rule.

``load_spec``/``parse_spec`` (load.py) build a ``SearchSpec`` (model.py) from the sections parsed in
space.py (parameters and conditions), checking samplers and schedulers against the search registries.
``trial_file.py`` reads the CONFIG of ``tuner train``/``diagnose`` (a spec or a trial config);
``batch_probe.py`` the probe file that ``batch_size: {choice: auto}`` reads.
"""

from tuner.spec.context import SpecError
from tuner.spec.load import load_spec, parse_spec
from tuner.spec.model import (TOP_KEYS, BudgetSpec, DataSpec, ResourceSpec, SamplerSpec,
                              SchedulerSpec, SearchSpec)
from tuner.spec.space import Param

__all__ = ["SpecError", "load_spec", "parse_spec", "TOP_KEYS", "BudgetSpec", "DataSpec",
           "ResourceSpec", "SamplerSpec", "SchedulerSpec", "SearchSpec", "Param"]
