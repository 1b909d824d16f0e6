"""MLflow as the leaderboard: the one writer (callback.py, through the write-ahead buffer.py), the
tags that are its interface (tags.py), lineage, and the readers (store.py, leaderboard.py, ui.py)."""
