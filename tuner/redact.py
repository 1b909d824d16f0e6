"""Keep credentials out of everything a team reads: logs, MLflow params and tags, saved specs, errors.

Credentials come from the environment (``PGPASSWORD``, ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, ``AWS_*``) or the libraries' usual files (``~/.pgpass``,
``~/.aws/credentials``). A URI may also name a variable, ``postgresql://tuner:${PGPASS}@db/optuna``:
the text with the ``${…}`` is what gets saved, the value is substituted only where the URI is used.
Anything that still carries a secret is shown redacted: ``postgresql://tuner:***@db/optuna``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Optional
from urllib.parse import parse_qsl

from tuner.errors import UserError

# Query keys that carry secrets: token, password, secret, api_key, sig, X-Amz-Signature, …, alone or
# as the last word of a longer key (client_secret, X-Amz-Security-Token; not sslkey, a file path).
_SECRET_WORDS = (r"token|access_token|password|passwd|pwd|sslpassword|secret|api_?key|apikey|key|sig|"
                 r"signature|credential|security-token|auth|authorization")
_SECRET_KEY = re.compile(rf"(?:[A-Za-z0-9._-]*[_-])?(?:{_SECRET_WORDS})", re.IGNORECASE)
# scheme://user:password@host -> scheme://user:***@host (a password may hold "/" or ":")
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s@]+)(?P<at>@)")
# https://TOKEN@host -> https://***@host (a bare user name in http(s) is a token: MLflow and Git hosts)
_HTTP_TOKEN = re.compile(r"(?P<head>\bhttps?://)(?P<secret>[^\s:/@]+)(?P<at>@)", re.IGNORECASE)
_QUERY = re.compile(rf"(?P<head>[?&]{_SECRET_KEY.pattern}=)(?P<secret>[^&\s#]+)", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


def redact(text: Any) -> Any:
    """The same text with every credential inside a URI replaced by ``***`` (non-strings unchanged)."""
    if not isinstance(text, str):
        return text
    for pattern in (_USERINFO, _HTTP_TOKEN):
        text = pattern.sub(lambda m: m["head"] + (m["secret"] if _is_env_reference(m["secret"]) else MASK)
                           + m["at"], text)
    return _QUERY.sub(lambda m: m["head"] + (m["secret"] if _is_env_reference(m["secret"]) else MASK), text)


def literal_credential(uri: str) -> Optional[str]:
    """What in the one URI ``uri`` is a literal credential, parsed rather than pattern-matched (a
    password may hold "/", ":" or a space), or None. ``${VAR}`` references are not literal."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "a secret" if redact(uri) != uri else None
    before_query, _, query = rest.partition("#")[0].partition("?")
    userinfo, at, _host = before_query.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and "/" not in user:  # an "@" after a "/" is in the path (s3://bucket/key@v1), not userinfo
        if colon and password and not _is_env_reference(password):
            return "a password in the user:password part"
        if not colon and user and scheme.lower() in ("http", "https") and not _is_env_reference(user):
            return "a token as the user name"
    for key, value in parse_qsl(query, keep_blank_values=False):
        if _SECRET_KEY.fullmatch(key) and not _is_env_reference(value):
            return f"a secret in ?{key}="
    return "a secret" if redact(uri) != uri else None  # whatever else redact() would mask


def _is_env_reference(secret: str) -> bool:
    return bool(_ENV_REFERENCE.fullmatch(secret))


def expand_env(uri: str, *, what: str = "URI") -> str:
    """Substitutes ``${VAR}`` from the environment; an unset variable is a clear error (named, not shown)."""

    def value(match: re.Match) -> str:
        name = match["name"]
        if name not in os.environ:
            raise UserError(f"{what}: environment variable {name} is not set (it is named in {redact(uri)})")
        return os.environ[name]

    return _ENV_REFERENCE.sub(value, uri)


def redact_mapping(values: dict) -> dict:
    return {key: redact_mapping(v) if isinstance(v, dict) else redact(v) for key, v in values.items()}


def _redact_record(record: logging.LogRecord) -> None:
    message = record.getMessage()
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:  # the handler would format it later, unredacted
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


class RedactingFilter(logging.Filter):
    """The same redaction as a handler filter, for a handler of your own (say, in a Ray worker)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def install_log_redaction() -> None:
    """Every log record made in this process from now on, whichever logger and handler (mlflow,
    optuna, ray and sqlalchemy bring their own), has its message and traceback redacted."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacting", False):
        return

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _redact_record(record)
        return record

    redacting_record.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_record)
