"""Arguments that several commands share, and how their values are read."""

from __future__ import annotations

import argparse

import yaml

from tuner.errors import UserError


def parse_assignments(pairs: list[str]) -> dict:
    """``--set lr=0.1 --set aug.rotation=5`` -> {"lr": 0.1, "aug.rotation": 5} (values parsed as YAML)."""
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set: expected key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(raw) if raw else None
    return values


def add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $TUNER_TRACKING_URI "
                        "or sqlite:///./mlflow.db)")


def add_insecure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure", action="store_true",
                        help="accept RAY_AUTH_MODE=disabled (Ray without token authentication: anyone "
                        "who reaches its ports can run code as you); refused without this flag")
