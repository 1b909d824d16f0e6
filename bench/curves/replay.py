"""A trainable that replays the surrogate's curve for the configuration it is given, in simulated time.

``make_replay_trainable`` returns a Ray Tune function trainable for ``run_search(..., trainable=)``:
the REAL search path (spec -> space -> our OptunaSearch -> ConcurrencyLimiter -> the real scheduler)
runs it as it runs the real trainable. Each epoch waits for its turn on a simulated clock
(``virtual_clock``: the epoch that ends first in recorded seconds goes first, a run is repeatable),
or, without a clock, sleeps the recorded seconds x ``time_factor``; then it reports what
``trainables.runner`` reports (val_acc, val_loss, epoch, epoch_time_s, status, final), so ASHA stops
and Optuna hears what it would in a real search, asynchronously, 2-8 trials at once.

Every replayed epoch is also appended to ``events_dir`` (one JSON-lines file per trial: when it
ended, val_acc, epoch): the anytime curves are built from these, in the order the epochs ended.
An ``epoch_budget`` ends the search's work once that many epochs were replayed (trials then return
without training), so that a search with spare ``num_samples`` costs no more than the budget.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

from bench.curves.surrogate import Surrogate

RUNNING, COMPLETED, DIVERGED = "running", "completed", "diverged"  # trainables.status's words


def replay_epochs(surrogate: Surrogate, params: dict, *, seed: int, epochs: int,
                  noise_scale: float = 1.0) -> Iterator[dict]:
    """The reports one trial of ``params`` makes, epoch by epoch (no sleeping)."""
    curve = surrogate.sample(params, seed, noise_scale)
    last = min(epochs, len(curve.val_acc))
    if curve.diverged_at is not None:
        last = min(last, curve.diverged_at)
    for epoch in range(1, last + 1):
        final = epoch == last
        diverged = curve.diverged_at == epoch
        yield {
            "epoch": epoch,
            "val_acc": float(curve.val_acc[epoch - 1]),
            "val_loss": float("nan") if diverged else float(curve.val_loss[epoch - 1]),
            "epoch_time_s": float(curve.seconds[epoch - 1]),
            "status": DIVERGED if diverged else (COMPLETED if final else RUNNING),
            "final": final,
        }


def searched_params(surrogate: Surrogate, config: dict) -> dict:
    """The surrogate's parameters out of a trial's config (fixed ones included: the journal's
    grid fixes what the recipe searches)."""
    return {name: config[name] for name in surrogate.param_names if name in config}


class EpochBudget:
    """A counter shared by the trial processes of one search (one byte appended per epoch)."""

    def __init__(self, path: Path, limit: Optional[int]) -> None:
        self.path, self.limit = Path(path), limit

    def take(self) -> bool:
        """Claims one epoch; False once the budget is spent."""
        if self.limit is None:
            return True
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
            return os.fstat(fd).st_size <= self.limit
        finally:
            os.close(fd)

    def spent(self) -> bool:
        return self.limit is not None and self.path.exists() and self.path.stat().st_size >= self.limit


def budget_stopper(events_dir: Path, epoch_budget: Optional[int]):
    """A Tune stopper that ends the whole search once its epoch budget is spent, so that the
    surplus trials of ``num_samples`` are never started (each would cost a trial launch)."""
    from ray import tune

    budget = EpochBudget(Path(events_dir) / "budget", epoch_budget)

    class BudgetStopper(tune.Stopper):
        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return budget.spent()

    return BudgetStopper()


def append_event(events_dir: Path, trial: str, event: dict) -> None:
    with open(Path(events_dir) / f"{trial}.jsonl", "a") as handle:
        handle.write(json.dumps(event) + "\n")


def read_events(events_dir: Path) -> list[dict]:
    """Every replayed epoch of a search, in the order they ended (the simulated clock's release
    order when there was one, else wall time)."""
    events = []
    for path in Path(events_dir).glob("*.jsonl"):
        events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(events, key=lambda e: (e.get("seq", 0), e["t"]))


def prepare_driver() -> None:
    """Before ``ray.init`` in the driver: Ray's workers get this module and the surrogate's by value
    (they need not import this repository's bench/), and a trial that starts once the epoch budget
    is spent may end without a report (Tune's strict metric check would call that an error)."""
    import sys

    import ray

    from bench.curves import virtual_clock

    for module in (sys.modules[__name__], sys.modules[Surrogate.__module__], virtual_clock):
        ray.cloudpickle.register_pickle_by_value(module)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def make_replay_trainable(surrogate: Surrogate, *, seed: int, time_factor: float, events_dir: Path,
                          epoch_budget: Optional[int] = None, noise_scale: float = 1.0,
                          clock=None) -> Callable[[dict], None]:
    """A Ray Tune function trainable replaying ``surrogate`` (benchmark seed ``seed``).

    ``clock``: a ``virtual_clock.VirtualClock`` actor; each epoch waits for its turn in simulated
    time instead of sleeping (the events' ``t`` is then simulated seconds, ``seq`` their order).
    Without one, each epoch sleeps its recorded seconds x ``time_factor`` (wall-clock replay)."""
    events_dir = Path(events_dir)
    events_dir.mkdir(parents=True, exist_ok=True)
    budget = EpochBudget(events_dir / "budget", epoch_budget)

    def replay_trial(config: dict) -> None:
        import ray  # only Ray's workers run this
        from ray import tune

        params = searched_params(surrogate, config)
        trial = uuid.uuid4().hex[:12]
        tiebreak = json.dumps(params, sort_keys=True, default=str)
        epochs = int(config.get("epochs", surrogate.epochs))
        for metrics in replay_epochs(surrogate, params, seed=seed, epochs=epochs, noise_scale=noise_scale):
            when = {}
            if clock is not None:
                when = ray.get(clock.turn.remote(trial, metrics["epoch_time_s"], tiebreak, metrics["final"]))
                if when is None:
                    return  # the search's epoch budget is spent
            if not budget.take():
                return  # the search's epoch budget is spent: nothing more is counted
            if clock is None:
                time.sleep(metrics["epoch_time_s"] * time_factor)
                when = {"t": time.time()}
            append_event(events_dir, trial, {**when, "trial": trial, "epoch": metrics["epoch"],
                                             "val_acc": metrics["val_acc"], "params": params})
            tune.report(metrics)

    return replay_trial
