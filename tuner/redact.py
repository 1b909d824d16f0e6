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
from typing import Any

from tuner.errors import UserError

# scheme://user:password@host -> scheme://user:***@host
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?P<at>@)")
# ?token=… &password=… &key=… &secret=… &sig=… (query-string credentials, presigned URLs)
_QUERY = re.compile(
    r"(?P<head>[?&](?:token|access_token|password|passwd|secret|key|api_key|sig|signature|"
    r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=)(?P<secret>[^&\s#]+)",
    re.IGNORECASE,
)
_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


def redact(text: Any) -> Any:
    """The same text with every credential inside a URI replaced by ``***`` (non-strings unchanged)."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: m["head"] + (m["secret"] if _is_env_reference(m["secret"]) else MASK) + m["at"], text)
    return _QUERY.sub(lambda m: m["head"] + MASK, text)


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


class RedactingFilter(logging.Filter):
    """Rewrites every log record's message (after %-formatting) through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
