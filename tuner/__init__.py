"""tuner: distributed hyperparameter search for image classifiers (the driver side)."""
