"""The Ray Tune function trainable: a thin adapter around ``run_trial`` (the only ray import here).

Ray is imported inside the function, so ``import trainables.trial`` works on a machine without Ray
(a GPU box that runs the engine directly).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from trainables.config import TrialConfig
from trainables.runner import run_trial


def tune_trainable(config: dict) -> None:
    """Entry point that Ray Tune runs once per trial, with the sampled and fixed values in ``config``."""
    from ray import tune  # the adapter alone needs Ray; importing this module must not (GPU checks)

    trial_config = TrialConfig.from_dict(config)
    first_report = True

    def report(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        nonlocal first_report
        if first_report:
            # The device(s) Ray gave this trial process for its GPU share (None: no GPU assigned);
            # recorded once per process, so a trial resumed on another node records its new one.
            metrics = {**metrics, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
            first_report = False
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(trial_config, report=report)
        return
    with checkpoint.as_directory() as directory:
        run_trial(trial_config, report=report, resume_from=Path(directory))
