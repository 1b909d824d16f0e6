"""Names that are an interface between the tracking callback, the leaderboard, promote and the UI.

Kept apart from ``tuner.tracking.callback`` so that readers of MLflow (``tuner leaderboard``,
``promote``, ``ui``) do not import Ray. Trial statuses are the trainable's vocabulary
(``trainables.status``), re-exported here for readers of the ``tuner.status`` tag.
"""

from trainables.status import TRIAL_STATUSES  # noqa: F401  (re-exported: the tag's values)

METRIC_NAMES = (
    "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch",
    "epoch_time_s", "images_per_s", "skipped_images",
)

KIND_TAG = "tuner.kind"  # "search" (the parent run) or "trial"
SEARCH_TAG = "tuner.search"
TRIAL_TAG = "tuner.trial_id"  # Ray's trial id
UID_TAG = "tuner.search_uid"  # tells apart two searches that share a name and tracking store
STATUS_TAG = "tuner.status"  # one of TRIAL_STATUSES
CHECKPOINT_TAG = "tuner.best_checkpoint"  # local path or s3://… of the trial's best checkpoint
SEARCHED_TAG = "tuner.searched_params"  # the sampled parameters, comma-separated (the rest is fixed)
BEST_TRIAL_TAG = "tuner.best_trial"  # on the parent, at the end
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3 opens "custom_model_development" on runs
