"""The base of every "bad input" error raised on the trial side (imports nothing heavy).

The CLI catches ``TrialInputError`` to print one line and exit 2 without importing torch first.
``ConfigError`` lives here, not in ``config.py``, so that the registries (``models.py`` & co.) can
raise it without importing the config module that validates against them.
"""


class TrialInputError(ValueError):
    """A trial's configuration, data or checkpoint breaks a rule; the message says which."""


class ConfigError(TrialInputError):
    """A trial configuration value breaks a rule; the message names the key, the value and the rule."""
