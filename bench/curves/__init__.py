"""The recorded-curve benchmark of the search (issue 15).

- ``recording``: which configurations are recorded, the frozen space's hash, the Parquet table.
- ``record.py``: the resumable recorder (real trainable, shipped sample, CPU).
- ``surrogate``: configuration + epoch -> val_acc (kNN over recorded curves, realistic noise);
  ``validation``: its rank correlation on held-out recorded curves.
- ``replay``: a trainable that replays the surrogate's curve in scaled time (the REAL driver runs it).
- ``methods``: the registry of search methods that ``bench/search_quality.py`` compares.
- ``metrics``: anytime curves, epochs to a target, medians over seeds.

README.md in this folder says how to record, resume and rerun.
"""
