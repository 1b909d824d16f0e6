"""resources.gpu against the probe's memory: the advice `tuner diagnose batch-size` prints and the
refusal of an oversize share before a search starts.

This machine has no CUDA card, so the probes here are real CPU probes of the demo spec's models
(saved-tensors bytes) that are then declared to come from a card of a chosen size: the packing
rule sees exactly the fields a CUDA probe writes (``measure``, ``device_total_bytes``,
``context_bytes``), with byte counts that real models produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuner.cli import main
from tuner.diagnose.batch_size import diagnose_batch_size
from tuner.diagnose.memory import ProbeSettings, measure_saved_tensors
from tuner.errors import UserError
from tuner.spec.gpu_share import (MAX_TRIALS_PER_GPU, advise_share, check_share, largest_batch,
                                  trial_memory)
from tuner.spec.load import load_spec
from trainables.models import build_model
from trainables.optim import build_optimizer

MiB = 2**20


@pytest.fixture(scope="module")
def cpu_probe(tmp_path_factory, demo_data):
    """A real probe of the demo spec's two widths, capped at batch 64 (the spec draws up to 128)."""
    folder = tmp_path_factory.mktemp("probe")
    spec = folder / "demo.yaml"
    text = (Path(__file__).parents[3] / "search_spaces" / "demo.yaml").read_text()
    spec.write_text(text.replace("data/demo/", f"{demo_data}/"))
    return spec, diagnose_batch_size(spec, memory_budget="64MiB", max_batch=64).document


def as_card(probe: dict, card_bytes: int, context_bytes: int = 100 * MiB) -> dict:
    return {**probe, "measure": "cuda-peak", "device_name": "a test card",
            "device_total_bytes": card_bytes, "context_bytes": context_bytes}


def with_share(spec_path, share: float):
    path = spec_path.with_name(f"share{share:g}.yaml")
    path.write_text(spec_path.read_text().replace("gpu: 0}", f"gpu: {share}}}"))
    return path


def test_the_largest_trial_is_the_widest_model_at_the_largest_batch_by_the_probes_line(cpu_probe):
    spec_path, probe = cpu_probe
    spec = load_spec(spec_path)
    assert largest_batch(spec) == 128
    widths = {r["width"]: trial_memory(r, 128) for r in probe["results"]}
    assert widths[0.25].bytes > widths[0.125].bytes
    # Extrapolated past the probe's cap of 64 by its linear fit; a real step at 128 agrees.
    settings = ProbeSettings(device=torch.device("cpu"), measure="saved-tensors", limit_bytes=2**30,
                             margin=0.1, image_size=32, num_classes=probe["num_classes"],
                             optimizer=probe["optimizer"], max_batch=128)
    model = build_model("resnet18", num_classes=probe["num_classes"], image_size=32, width=0.25)
    measured = measure_saved_tensors(model, build_optimizer(model.parameters(), name="adam", lr=1e-3),
                                     settings, 128)
    assert widths[0.25].bytes == pytest.approx(measured, rel=0.02)
    # A batch the probe measured is read back as measured, not refitted.
    result = probe["results"][0]
    batch, bytes_, _ = result["probes"][-1]
    assert trial_memory(result, batch).bytes == bytes_


def test_advice_packs_as_many_trials_as_the_card_holds(cpu_probe):
    spec_path, probe = cpu_probe
    spec = load_spec(spec_path)
    worst = max(trial_memory(r, 128).bytes for r in probe["results"])
    card = int((3.5 * (worst + 100 * MiB)) / 0.9)  # 3.5 trials' worth of usable memory
    advice = advise_share(as_card(probe, card), spec)
    assert advice.trials_per_gpu == 3 and advice.share == 0.333
    assert 3 * advice.share <= 1.0
    assert "3 per GPU, resources.gpu: 0.333" in advice.describe()
    huge = advise_share(as_card(probe, 1000 * card), spec)
    assert huge.trials_per_gpu == MAX_TRIALS_PER_GPU and huge.share == 0.125
    tiny = advise_share(as_card(probe, worst // 2), spec)
    assert tiny.trials_per_gpu == 0 and tiny.share is None
    assert "does not fit on one card" in tiny.describe()


def test_an_oversize_share_is_refused_and_a_fitting_one_passes(cpu_probe):
    spec_path, probe = cpu_probe
    worst = max(trial_memory(r, 128).bytes for r in probe["results"])
    card = as_card(probe, int((2.5 * (worst + 100 * MiB)) / 0.9))  # two trials fit, not three
    with pytest.raises(UserError) as refused:
        check_share(card, load_spec(with_share(spec_path, 0.25)), "demo.batch_size.json")
    message = str(refused.value)
    assert "resources.gpu 0.25 packs 4 trials" in message
    assert "resnet18 w0.25 at batch 128" in message and "demo.batch_size.json (a test card)" in message
    assert "use resources.gpu: 0.5 (2 per GPU)" in message
    assert check_share(card, load_spec(with_share(spec_path, 0.5)), "p").trials_per_gpu == 2
    # A whole GPU per trial, and CPU probes (a model of memory, not a card), are not judged.
    assert check_share(card, load_spec(with_share(spec_path, 1)), "p") is None
    assert check_share(probe, load_spec(with_share(spec_path, 0.25)), "p") is None


def test_a_probe_of_another_image_size_is_refused(cpu_probe):
    spec_path, probe = cpu_probe
    stale = {**as_card(probe, 2**40), "image_size": 224}
    with pytest.raises(UserError, match=r"measured 224 px images, the spec trains at 32 px; probe again"):
        check_share(stale, load_spec(with_share(spec_path, 0.5)), "p")


def test_search_refuses_the_share_before_anything_runs(cpu_probe, tmp_path, capsys):
    spec_path, probe = cpu_probe
    shared = with_share(spec_path, 0.25)
    worst = max(trial_memory(r, 128).bytes for r in probe["results"])
    beside = shared.with_name(shared.stem + ".batch_size.json")
    beside.write_text(json.dumps(as_card(probe, int(2.5 * (worst + 100 * MiB) / 0.9))))
    storage = tmp_path / "runs"
    assert main(["search", str(shared), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "resources.gpu 0.25 packs 4 trials" in err and "Traceback" not in err
    assert not storage.exists() or not any(storage.iterdir())  # nothing written, nothing run
