"""bench/search_efficiency.py runs the recorded space with the recording's settings on real training:
each method's spec is what it claims (no priors for anyone, the product defaults for "default")."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.curves.recording import DEFAULT_SPEC, DEFAULT_TABLE, read_metadata, read_raw_spec
from bench.search_efficiency import bench_raw_spec
from tuner.spec import parse_spec


@pytest.mark.parametrize("method,sampler,scheduler", [("default", None, None), ("random+fifo", "random", "fifo")])
def test_each_method_searches_the_recorded_space_with_the_recorded_settings(tmp_path, method, sampler, scheduler):
    raw_spec, settings = read_raw_spec(DEFAULT_SPEC), read_metadata(DEFAULT_TABLE)["settings"]
    spec = parse_spec(bench_raw_spec(raw_spec, settings, method, 101, tmp_path, 2, 40), source="test")
    product_default = parse_spec({"name": "d", "data": {"train": ".", "val": "."}}, source="defaults")
    assert spec.points_to_evaluate == ()
    assert [p.name for p in spec.space] == list(raw_spec["space"])
    assert spec.sampler.name == (sampler or product_default.sampler.name) and spec.sampler.seed == 101
    assert spec.scheduler.name == (scheduler or product_default.scheduler.name)
    if scheduler is None:
        assert spec.scheduler.options == product_default.scheduler.options
    assert spec.fixed["train_subset"] == settings["train_subset"] == 1000 and spec.epochs == settings["epochs"]
    assert spec.fixed["seed"] == 101 and spec.budget.max_concurrent == 2 and spec.budget.num_samples == 40
    assert Path(spec.base_config()["train_dir"]) == tmp_path / "train"
