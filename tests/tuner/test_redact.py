"""Credentials never show: redacted in text, substituted from the environment only where used."""

from __future__ import annotations

import logging

import pytest

from tuner.errors import UserError
from tuner.redact import RedactingFilter, expand_env, redact


@pytest.mark.parametrize("raw, shown", [
    ("postgresql://tuner:s3cr3t@db:5432/optuna", "postgresql://tuner:***@db:5432/optuna"),
    ("http://alice:pa:ss@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("could not connect to postgresql+psycopg://u:pw@10.0.0.5/x: timeout",
     "could not connect to postgresql+psycopg://u:***@10.0.0.5/x: timeout"),
    ("s3://bucket/key?X-Amz-Signature=abcdef&X-Amz-Expires=60", "s3://bucket/key?X-Amz-Signature=***&X-Amz-Expires=60"),
    ("https://h/api?token=abc123", "https://h/api?token=***"),
    ("postgresql://tuner:${PGPASS}@db/optuna", "postgresql://tuner:${PGPASS}@db/optuna"),
    ("postgresql://tuner@db/optuna", "postgresql://tuner@db/optuna"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_redact_hides_passwords_and_tokens(raw, shown):
    assert redact(raw) == shown


def test_expand_env_substitutes_and_names_missing_variables(monkeypatch):
    monkeypatch.setenv("PGPASS", "s3cr3t")
    assert expand_env("postgresql://tuner:${PGPASS}@db/x") == "postgresql://tuner:s3cr3t@db/x"
    monkeypatch.delenv("PGPASS")
    with pytest.raises(UserError, match="environment variable PGPASS is not set") as err:
        expand_env("postgresql://tuner:${PGPASS}@db/x")
    assert "s3cr3t" not in str(err.value)


def test_log_records_are_redacted(caplog):
    logger = logging.getLogger("tuner.test")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.WARNING):
        logger.warning("lost connection to %s", "postgresql://u:hunter2@db/x")
    assert "hunter2" not in caplog.text and "postgresql://u:***@db/x" in caplog.text


def test_a_spec_with_a_literal_password_is_refused(tmp_path):
    from tuner.spec import SpecError, parse_spec

    raw = {"name": "s", "data": {"train": str(tmp_path), "val": str(tmp_path)},
           "storage": "postgresql://tuner:hunter2@db/optuna"}
    with pytest.raises(SpecError, match="storage: holds a literal password") as err:
        parse_spec(raw, source="s.yaml")
    assert "hunter2" not in str(err.value)
    raw["storage"] = "postgresql://tuner:${PGPASS}@db/optuna"
    assert parse_spec(raw, source="s.yaml").storage == raw["storage"]


def test_a_tracking_uri_with_a_literal_password_is_refused():
    from tuner.places import resolve_tracking_uri

    with pytest.raises(UserError, match="holds a literal credential") as err:
        resolve_tracking_uri("http://alice:hunter2@mlflow:5000")
    assert "hunter2" not in str(err.value)
