"""How a trial ended: the one vocabulary of ``tuner.status``, shared by the trainable and the driver.

The trainable reports ``running`` while it trains and marks its last report ``completed`` (all its
epochs), ``converged`` (dev-decay took the lr below ``min_lr``) or ``diverged`` (NaN/inf loss). The
driver adds what only it can see: ``early_stopped`` (the scheduler stopped it) and ``failed`` (the
trial raised, or its process died for good).
"""

RUNNING = "running"
COMPLETED = "completed"
CONVERGED = "converged"
DIVERGED = "diverged"
EARLY_STOPPED = "early_stopped"
FAILED = "failed"

# The statuses a trial ends itself with (its last report says so).
SELF_ENDED = (COMPLETED, CONVERGED, DIVERGED)
TRIAL_STATUSES = (RUNNING, COMPLETED, EARLY_STOPPED, CONVERGED, DIVERGED, FAILED)
