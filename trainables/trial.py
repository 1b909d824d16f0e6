"""The Ray Tune function trainable: a thin adapter around ``run_trial`` (the only ray import here).

Ray is imported inside the function, so ``import trainables.trial`` works on a machine without Ray
(a GPU box that runs the engine directly).

The warnings a trial logs (``log.warning``, Python ``warnings``) stay in its worker's log: the driver
does not forward workers' output (``log_to_driver=False``). The adapter collects them and reports
each epoch's new ones under ``WARNINGS_KEY``, one line each, for the search's console to show.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

from trainables.config import TrialConfig
from trainables.runner import run_trial

WARNINGS_KEY = "warnings"  # a tuple of one-line messages: Ray's TensorBoard logger skips tuples
MAX_WARNINGS = 10  # distinct ones per trial: one per unreadable image must not flood the console
TOO_MANY = f"more than {MAX_WARNINGS} distinct warnings in one trial: the rest are in its Ray worker log"


class _WarningLog(logging.Handler):
    """The distinct WARNING-and-above records logged in this process, new since the last ``drain``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().strip().splitlines()  # a Python warning's 2nd line is its source
        message = f"{record.name}: {lines[0] if lines else record.levelname}"
        if message in self.seen or len(self.seen) > MAX_WARNINGS:
            return
        self.seen.add(message)
        self.messages.append(message if len(self.seen) <= MAX_WARNINGS else TOO_MANY)

    def drain(self) -> tuple[str, ...]:
        messages, self.messages = tuple(self.messages), []
        return messages


@contextlib.contextmanager
def _collecting(handler: _WarningLog) -> Iterator[None]:
    """Log records and Python warnings (through ``logging.captureWarnings``) while the trial runs."""
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(handler)


def tune_trainable(config: dict) -> None:
    """Entry point that Ray Tune runs once per trial, with the sampled and fixed values in ``config``."""
    from ray import tune  # the adapter alone needs Ray; importing this module must not (GPU checks)

    trial_config = TrialConfig.from_dict(config)
    first_report = True
    warned = _WarningLog()

    def report(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        nonlocal first_report
        if first_report:
            # The device(s) Ray gave this trial process for its GPU share (None: no GPU assigned);
            # recorded once per process, so a trial resumed on another node records its new one.
            metrics = {**metrics, "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
            first_report = False
        messages = warned.drain()
        if messages:
            metrics = {**metrics, WARNINGS_KEY: messages}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    with _collecting(warned):
        if checkpoint is None:
            run_trial(trial_config, report=report)
            return
        with checkpoint.as_directory() as directory:
            run_trial(trial_config, report=report, resume_from=Path(directory))
