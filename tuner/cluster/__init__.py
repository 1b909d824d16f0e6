"""Connecting to Ray (connect.py) and the checks a cluster gets before any trial (preflight.py)."""
