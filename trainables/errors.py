"""The base of every "bad input" error raised on the trial side (imports nothing heavy).

The CLI catches ``TrialInputError`` to print one line and exit 2 without importing torch first.
"""


class TrialInputError(ValueError):
    """A trial's configuration, data or checkpoint breaks a rule; the message says which."""
