"""SearchSpec: a search-space YAML file -> validated, frozen dataclasses.

Every error names the file, the key path and the rule, e.g.
``demo.yaml: space.lr.loguniform: low must be > 0, got -1``. Nothing else in the driver reads YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from tuner.places import NAME_RULE, is_search_name
from tuner.redact import literal_credential
from tuner.search.options import check_options
from tuner.search.samplers import SAMPLERS
from tuner.search.schedulers import SCHEDULERS
from tuner.spec.context import SpecContext, SpecError, parse_yaml
from tuner.spec.model import (DATA_KEYS, MODES, TOP_KEYS, BudgetSpec, DataSpec, ResourceSpec,
                              SamplerSpec, SchedulerSpec, SearchSpec)
from tuner.spec.space import Param, check_trial_keys, parse_space
from trainables.config import ConfigError, TrialConfig


def load_spec(path: str | Path, overrides: Optional[dict] = None) -> SearchSpec:
    """Reads and validates a search spec; ``overrides`` are ``fixed`` keys set from the CLI."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: search spec file does not exist")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{path.name}: malformed YAML{where}: {problem}") from None
    return parse_spec(raw, source=path.name, base_dir=path.parent, overrides=overrides)


def parse_spec(
    raw: Any, *, source: str, base_dir: Path = Path("."), overrides: Optional[dict] = None,
    working_dir: Optional[Path] = None,
) -> SearchSpec:
    """``base_dir``: the spec file's folder (its batch-size probe lies there); ``working_dir``: what
    relative data paths are relative to (default: the current directory, as the user typed them)."""
    ctx = SpecContext(source)
    if not isinstance(raw, dict):
        ctx.fail("", f"the file must hold a mapping of keys, got {type(raw).__name__}")
    ctx.reject_unknown("", raw, TOP_KEYS)
    name = raw.get("name")
    if not is_search_name(name):
        ctx.fail("name", f"must be {NAME_RULE}, got {name!r}")
    data = _parse_data(ctx, raw.get("data"), working_dir or Path.cwd())
    fixed = dict(ctx.mapping("fixed", raw.get("fixed", {})))
    fixed.update(overrides or {})
    check_trial_keys(ctx, "fixed", fixed)
    raw_space, raw_points = _pin_overridden(raw, overrides or {})
    space = parse_space(ctx, raw_space, base_dir)
    overlap = sorted(set(fixed) & {p.name for p in space})
    if overlap:
        ctx.fail(f"space.{overlap[0]}", "is also set in fixed; a key is either fixed or searched")
    metric = raw.get("metric", "val_acc")
    if not isinstance(metric, str) or not metric:
        ctx.fail("metric", f"must be a metric name such as val_acc, got {metric!r}")
    mode = raw.get("mode", "max")
    if mode not in MODES:
        ctx.fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    sampler = _parse_sampler(ctx, raw.get("sampler", {}), space)
    spec = SearchSpec(
        name=name,
        source=source,
        data=data,
        fixed=fixed,
        space=space,
        metric=metric,
        mode=mode,
        sampler=sampler,
        scheduler=_parse_scheduler(ctx, raw.get("scheduler", {})),
        budget=_parse_budget(ctx, raw.get("budget", {})),
        resources=_parse_resources(ctx, raw.get("resources", {})),
        points_to_evaluate=_parse_points(ctx, raw_points, space),
        storage=_storage_url(ctx, raw.get("storage")),
        tracking=_tracking_uri(ctx, raw.get("tracking")),
    )
    _check_example_trial(ctx, spec)
    return spec


def _optional_str(ctx: SpecContext, key: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        ctx.fail(key, f"must be a string, got {value!r}")
    return value


def _storage_url(ctx: SpecContext, value: Any) -> Optional[str]:
    return _uri_without_credential(ctx, "storage", value, "name a variable instead "
                                   "(postgresql://user:${PGPASS}@host/db) or use PGPASSWORD / ~/.pgpass")


def _tracking_uri(ctx: SpecContext, value: Any) -> Optional[str]:
    return _uri_without_credential(ctx, "tracking", value, "use MLFLOW_TRACKING_USERNAME / "
                                   "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or a ${VAR} reference")


def _uri_without_credential(ctx: SpecContext, key: str, value: Any, advice: str) -> Optional[str]:
    """A spec is saved with the search and shown in MLflow: a URI in it must not hold a secret."""
    value = _optional_str(ctx, key, value)
    if value is not None:
        reason = literal_credential(value)
        if reason:
            ctx.fail(key, f"holds a literal credential ({reason}); {advice}")
    return value


def _parse_data(ctx: SpecContext, raw: Any, working_dir: Path) -> DataSpec:
    raw = ctx.mapping("data", raw)
    ctx.reject_unknown("data", raw, DATA_KEYS)
    for key in ("train", "val"):
        if not isinstance(raw.get(key), str):
            ctx.fail(f"data.{key}", "is required: the path of an ImageFolder tree (<dir>/<class>/<image>)")

    def resolve(value: Optional[str]) -> Optional[str]:
        # Absolute: Ray runs each trial in its own working directory, and workers on other nodes.
        if value is None:
            return None
        if "://" in value:
            return value
        p = Path(value).expanduser()
        return str((p if p.is_absolute() else working_dir / p).resolve())

    image_size = ctx.number("data.image_size", raw.get("image_size", 32), integer=True, minimum=8)
    test = raw.get("test")
    if test is not None and not isinstance(test, str):
        ctx.fail("data.test", f"must be a path, got {test!r}")
    return DataSpec(resolve(raw["train"]), resolve(raw["val"]), resolve(test), image_size)


def _parse_sampler(ctx: SpecContext, raw: Any, space: tuple[Param, ...]) -> SamplerSpec:
    raw = ctx.mapping("sampler", raw)
    ctx.reject_unknown("sampler", raw, {"name", "seed", "options"})
    name = raw.get("name", "tpe")
    if name not in SAMPLERS:
        ctx.fail("sampler.name", f"must be one of {', '.join(SAMPLERS.names())}, got {name!r}")
    entry = SAMPLERS.get(name)
    seed = raw.get("seed", 0)
    if seed is not None:
        seed = ctx.number("sampler.seed", seed, integer=True, minimum=0)
    for param in space:
        if param.kind not in entry.kinds:
            handled = ", ".join(sorted(entry.kinds))
            ctx.fail(f"space.{param.name}.{param.kind}",
                     f"the {name} sampler cannot search a {param.kind} parameter (it handles {handled})")
    options = check_options(ctx.mapping("sampler.options", raw.get("options", {})), entry.options,
                            where="sampler.options", fail=ctx.fail)
    return SamplerSpec(name, seed, options)


def _parse_scheduler(ctx: SpecContext, raw: Any) -> SchedulerSpec:
    raw = dict(ctx.mapping("scheduler", raw))
    name = raw.pop("name", "asha")
    if name not in SCHEDULERS:
        ctx.fail("scheduler.name", f"must be one of {', '.join(SCHEDULERS.names())}, got {name!r}")
    options = check_options(raw, SCHEDULERS.get(name).options, where="scheduler", fail=ctx.fail)
    return SchedulerSpec(name, options)


def _parse_budget(ctx: SpecContext, raw: Any) -> BudgetSpec:
    raw = ctx.mapping("budget", raw)
    ctx.reject_unknown("budget", raw, {"num_samples", "max_concurrent", "time_budget_s", "max_failures"})
    samples = ctx.number("budget.num_samples", raw.get("num_samples", 8), integer=True, minimum=1)
    concurrent = ctx.number("budget.max_concurrent", raw.get("max_concurrent", 2), integer=True, minimum=1)
    time_budget = raw.get("time_budget_s")
    if time_budget is not None:
        time_budget = ctx.number("budget.time_budget_s", time_budget, above=0)
    failures = ctx.number("budget.max_failures", raw.get("max_failures", 3), integer=True, minimum=0)
    return BudgetSpec(samples, concurrent, time_budget, failures)


def _parse_resources(ctx: SpecContext, raw: Any) -> ResourceSpec:
    raw = ctx.mapping("resources", raw)
    ctx.reject_unknown("resources", raw, {"cpu", "gpu"})
    cpu = ctx.number("resources.cpu", raw.get("cpu", 1), minimum=0)
    gpu = ctx.number("resources.gpu", raw.get("gpu", 0), minimum=0)
    if gpu > 1 and int(gpu) != gpu:
        ctx.fail("resources.gpu", f"a share above 1 GPU must be a whole number, got {gpu}")
    return ResourceSpec(cpu, gpu)


def _pin_overridden(raw: dict, overrides: dict) -> tuple[Any, Any]:
    """``--set key=value`` on a searched key fixes it for this search (``--set width=1`` on
    recipe.yaml, which searches width for CPUs): the key leaves the space and the points to
    evaluate; a parameter conditional on it stays, unconditional, where the value meets its
    condition, and goes where it does not (it would never apply)."""
    space, points = raw.get("space", {}), raw.get("points_to_evaluate", [])
    if not isinstance(space, dict) or not set(overrides) & set(space):
        return space, points
    pinned = {key: value for key, value in overrides.items() if key in space}
    kept = {}
    for key, param in space.items():
        when = param.get("when") if isinstance(param, dict) else None
        if key in pinned:
            continue
        if isinstance(when, dict) and set(when) & set(pinned):
            allowed = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
            if any(pinned[k] not in allowed[k] for k in allowed if k in pinned):
                pinned[key] = None  # never applies with the pinned value
                continue
            rest = {k: v for k, v in when.items() if k not in pinned}
            param = {k: v for k, v in param.items() if k != "when"} | ({"when": rest} if rest else {})
        kept[key] = param
    if isinstance(points, list):
        points = [{k: v for k, v in point.items() if k not in pinned} if isinstance(point, dict) else point
                  for point in points]
    return kept, points


def _parse_points(ctx: SpecContext, raw: Any, space: tuple[Param, ...]) -> tuple[dict, ...]:
    if not isinstance(raw, list):
        ctx.fail("points_to_evaluate", "must be a list of {param: value} mappings")
    names = {p.name for p in space}
    for i, point in enumerate(raw):
        if not isinstance(point, dict) or not point:
            ctx.fail(f"points_to_evaluate[{i}]", f"must be a non-empty {{param: value}} mapping, got {point!r}")
        unknown = sorted(set(map(str, point)) - names)
        if unknown:
            ctx.fail(f"points_to_evaluate[{i}].{unknown[0]}", "is not a searched parameter")
    return tuple(dict(p) for p in raw)


def _check_example_trial(ctx: SpecContext, spec: SearchSpec) -> None:
    """Builds TrialConfigs from the fixed values and each option of each choice, so that a bad fixed
    value or an unknown architecture name fails now, not in the first trial an hour from now."""
    base = spec.base_config()
    _try_config(ctx, "fixed", base)
    for param in spec.space:
        if param.kind in ("choice", "grid"):
            # A conditional option is tried where its condition holds (width with a resnet).
            context = {parent: allowed[0] for parent, allowed in param.when}
            for option in param.choices:
                _try_config(ctx, f"space.{param.name}", {**base, **context, param.name: option})


def _try_config(ctx: SpecContext, key: str, values: dict) -> None:
    try:
        TrialConfig.from_dict(values)
    except (ConfigError, ValueError) as err:
        ctx.fail(key, str(err))
