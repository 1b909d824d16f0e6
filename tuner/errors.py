"""The one error type the CLI turns into a single clear line and exit status 2 (no traceback)."""


class UserError(Exception):
    """Bad input from the user: a file, key or value that breaks a rule. The message says which."""
