"""A recording with a known answer: learning curves whose ceiling is set by lr (best near 0.05,
log scale), a little by the optimizer and the augmentation; mixup_alpha does not matter at all."""

from __future__ import annotations

import math

import numpy as np

from bench.curves.recording import RecordedCurve, config_id, sha256_of

SPACE = {
    "optimizer": {"choice": ["sgd", "adamw"]},
    "lr": {"loguniform": [0.001, 0.4]},
    "augmentation": {"choice": ["light", "rrc"]},
    "aug.min_scale": {"choice": [0.25, 0.5], "when": {"augmentation": ["rrc"]}},
    "mixup_alpha": {"choice": [0.0, 0.2]},
}
EPOCHS = 8


def quality(params: dict) -> float:
    distance = abs(math.log10(params["lr"]) - math.log10(0.05))
    return 0.75 - 0.25 * distance + 0.04 * (params["optimizer"] == "sgd") + 0.03 * (params["augmentation"] == "rrc")


def draw(rng: np.random.Generator) -> dict:
    params = {"optimizer": str(rng.choice(["sgd", "adamw"])),
              "lr": float(math.exp(rng.uniform(math.log(0.001), math.log(0.4)))),
              "augmentation": str(rng.choice(["light", "rrc"]))}
    if params["augmentation"] == "rrc":
        params["aug.min_scale"] = float(rng.choice([0.25, 0.5]))
    params["mixup_alpha"] = float(rng.choice([0.0, 0.2]))
    return params


def curve(params: dict, seed: int, origin: str = "random", noise: float = 0.01) -> RecordedCurve:
    epochs = np.arange(1, EPOCHS + 1)
    rng = np.random.default_rng([seed, int(params["lr"] * 1e6)])
    acc = quality(params) * (1 - np.exp(-epochs / 3)) + rng.normal(0, noise, EPOCHS)
    return RecordedCurve(config_id(params, seed), origin, seed, params, "completed", {
        "val_acc": acc, "val_loss": 2.3 * (1 - acc), "train_loss": 2.3 * (1 - acc), "train_acc": acc,
        "epoch_time_s": np.full(EPOCHS, 2.0), "cpu_s": np.full(EPOCHS, 1.5 + (params["mixup_alpha"] > 0)),
    })


def recording(configs: int = 60, repeats: int = 6, seed: int = 0) -> tuple[dict, list[RecordedCurve]]:
    rng = np.random.default_rng(seed)
    drawn = [draw(rng) for _ in range(configs)]
    curves = [curve(p, 0) for p in drawn] + [curve(p, 1, "repeat") for p in drawn[:repeats]]
    metadata = {"space": SPACE, "space_sha256": sha256_of(SPACE), "epochs": EPOCHS,
                "settings": {"epochs": EPOCHS}, "settings_sha256": sha256_of({"epochs": EPOCHS})}
    return metadata, curves
