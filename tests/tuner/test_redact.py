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
    # A password with "/" (or ":"), a token as http(s) user name, a secret under a longer query key.
    ("postgresql://u:pa/ss@db/optuna", "postgresql://u:***@db/optuna"),
    ("https://ghp_abc123@mlflow.example.com", "https://***@mlflow.example.com"),
    ("https://h/api?client_secret=abc&x=1", "https://h/api?client_secret=***&x=1"),
    ("https://h/api?apikey=abc", "https://h/api?apikey=***"),
    ("postgresql://u@db/x?sslmode=require&sslkey=/etc/k.pem", "postgresql://u@db/x?sslmode=require&sslkey=/etc/k.pem"),
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
    with pytest.raises(SpecError, match="storage: holds a literal credential") as err:
        parse_spec(raw, source="s.yaml")
    assert "hunter2" not in str(err.value)
    raw["storage"] = "postgresql://tuner:${PGPASS}@db/optuna"
    assert parse_spec(raw, source="s.yaml").storage == raw["storage"]


def test_a_tracking_uri_with_a_literal_password_is_refused():
    from tuner.places import resolve_tracking_uri

    with pytest.raises(UserError, match="holds a literal credential") as err:
        resolve_tracking_uri("http://alice:hunter2@mlflow:5000")
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("uri, reason", [
    ("postgresql://u:pa/ss@db/optuna", "user:password"),
    ("postgresql://u:pa ss@db/optuna", "user:password"),  # a space: redact() cannot see it, the parser can
    ("https://ghp_abc123@mlflow.example.com", "token as the user name"),
    ("https://mlflow.example.com/?access_token=abc", "?access_token="),
    ("https://h/x?X-Amz-Security-Token=abc", "?X-Amz-Security-Token="),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/runs", "user:password"),
    ("postgresql://tuner:${PGPASS}@db/optuna", None),
    ("https://${MLFLOW_TOKEN}@mlflow.example.com", None),
    ("postgresql://tuner@db/optuna?sslkey=/etc/client.key", None),
    ("s3://bucket/runs@v1/key", None),
    ("/home/me/runs", None),
])
def test_literal_credential_is_parsed_not_pattern_matched(uri, reason):
    from tuner.redact import literal_credential

    found = literal_credential(uri)
    assert (found is None) if reason is None else (reason in found), found


def test_storage_and_tracking_uri_with_a_credential_are_refused_without_showing_it(monkeypatch, tmp_path):
    from tuner.places import resolve_tracking_uri, search_places

    with pytest.raises(UserError, match="storage .* holds a literal credential") as err:
        search_places("s", tracking_uri="sqlite:///x.db", storage="s3://AKIAEXAMPLE:wJalr/XUtn@bucket/runs")
    assert "wJalr" not in str(err.value)
    monkeypatch.setenv("TUNER_TRACKING_URI", "http://alice:pa ss@mlflow.internal:5000")
    with pytest.raises(UserError, match="holds a literal credential"):
        resolve_tracking_uri(None)


def test_every_logger_and_traceback_is_redacted_once_installed(capsys):
    """mlflow, optuna and ray log through handlers of their own, made before or after tuner starts."""
    import io

    from tuner.redact import install_log_redaction

    before = logging.getLogRecordFactory()
    out = io.StringIO()
    logger = logging.getLogger("optuna.storages.test")  # a library logger with its own handler
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent: one wrapper, not two
        logger.warning("cannot reach %s", "postgresql://u:hunter2@db/x")
        try:
            raise RuntimeError("engine for postgresql://u:hunter2@db/x failed")
        except RuntimeError:
            logger.exception("storage error")
    finally:
        logging.setLogRecordFactory(before)
        logger.removeHandler(handler)
        logger.propagate = True
    text = out.getvalue()
    assert "hunter2" not in text and "cannot reach postgresql://u:***@db/x" in text
    assert "Traceback" in text and "RuntimeError: engine for postgresql://u:***@db/x failed" in text


def test_an_unexpected_error_is_a_redacted_traceback_and_status_1(monkeypatch, capsys):
    from tuner import cli
    from tuner.cli import results

    def broken(args):
        raise RuntimeError("could not open postgresql://u:hunter2@db/x")

    monkeypatch.setattr(results, "cmd_score", broken)
    before = logging.getLogRecordFactory()
    try:
        status = cli.main(["score", "a.csv", "--key", "b.csv"])
    finally:
        logging.setLogRecordFactory(before)
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" in err and "RuntimeError" in err
    assert "hunter2" not in err and "postgresql://u:***@db/x" in err
