"""The seed-by-seed comparison that decides whether a candidate replaces the default."""

from __future__ import annotations

import json
import math

import pytest

from bench.curves.paired import compare, sign_test_p
from bench.paired_seeds import main


def result(target: float, **methods: dict[int, list]) -> dict:
    return {"target": target, "methods": {
        name: {"per_seed": [{"seed": seed, "curve": curve} for seed, curve in rows.items()]}
        for name, rows in methods.items()}}


def test_sign_test_matches_the_binomial_tails():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(10, 0) == pytest.approx(2 / 2 ** 10)
    # 15 of 20: 2 x P(X <= 5), X ~ Binomial(20, 1/2) = 0.0414 (below 0.05), 14 of 20 is not
    assert sign_test_p(15, 5) == pytest.approx(2 * sum(math.comb(20, k) for k in range(6)) / 2 ** 20)
    assert sign_test_p(15, 5) < 0.05 < sign_test_p(14, 6)
    assert sign_test_p(3, 12) == sign_test_p(12, 3)


def test_pairs_by_seed_with_each_files_own_target_and_never_reached_as_last():
    first = result(0.5,
                   default={0: [0.1, 0.5, 0.6], 1: [0.4, 0.4, 0.4], 2: [0.2, 0.3, 0.5]},
                   fast={0: [0.5, 0.5, 0.5], 1: [0.45, 0.45, 0.45], 2: [0.2, 0.3, 0.5]})
    second = result(0.3, default={5: [None, 0.2, 0.3]}, fast={5: [None, 0.3, 0.3]})
    row = compare([first, second], "fast")
    # seed 0: 1 < 2 epochs; seed 1: neither reaches 0.5 (tie); seed 2: both at 3; seed 5: 2 < 3 (target 0.3)
    assert (row["sooner"], row["later"], row["ties"]) == (2, 0, 2)
    assert row["per_seed"][0] == {"seed": 0, "candidate": 1, "reference": 2}
    assert row["per_seed"][1] == {"seed": 1, "candidate": None, "reference": None}
    # one target for all: 0.45 is reached by "fast" on seed 1 only (sooner), seed 5 by neither
    fixed = compare([first, second], "fast", target=0.45)
    assert (fixed["sooner"], fixed["later"], fixed["ties"]) == (2, 0, 2)
    assert compare([first], "missing")["per_seed"] == []


def test_cli_saves_the_comparison_and_its_command(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result(0.5, default={0: [0.1, 0.6]}, slow={0: [0.1, 0.2]})))
    out = tmp_path / "paired.json"
    assert main([str(path), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python bench/paired_seeds.py ")
    assert [(m["candidate"], m["sooner"], m["later"]) for m in saved["methods"]] == [("slow", 0, 1)]
    assert "slow" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "absent.json")])
