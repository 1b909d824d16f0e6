"""The journal's rituals before a search, as commands whose results are saved and can set the search.

- ``batch_size``: the largest batch per architecture that trains one step within the device's memory;
- ``lr_range``: the learning-rate range test and the journal's halving search, on a small subset;
- ``overfit``: can the model memorise a few hundred images, and if not, which likely cause is found;
- ``preview``: a grid of augmented draws, to judge whether a preset still keeps the class.

Each writes its results (JSON, PNG) to disk and, with ``--tracking-uri``, is an MLflow run of its own
in the experiment ``diagnostics`` (``tracking``). The CLI lives in ``tuner.cli_diagnose``.
"""
