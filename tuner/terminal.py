"""Untrusted names on the terminal: control characters shown escaped, never obeyed.

A file, class or run name is anyone's text. ``ESC [2J`` in it would clear the screen, ``ESC ] 0;``
retitle the window, a C1 ``CSI`` (U+009B) do the same on terminals that honour it, ``\\r`` or a bidi
override (U+202E) hide what precedes or follows, and an undecodable byte (a lone surrogate from
``os.fsdecode``) would crash ``print``. ``printable()`` shows each such character as Python writes it
in a literal (``\\x1b``, ``\\x9b``, ``\\u202e``, ``\\udcff``); everything printable, ``é`` and ``²``
included, stays as it is. Backslashes are left alone so that ordinary names read the same.
"""

from __future__ import annotations

import logging
from typing import Any

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: Any) -> str:
    """``str(value)`` with every non-printable character (C0, DEL, C1, format, separators other
    than the space, surrogates) escaped: one line that cannot drive the terminal."""
    text = str(value)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def printable_lines(text: Any) -> str:
    """The same for a multi-line message: its ``\\n`` line breaks are kept, all else escaped."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def echo(text: Any = "", **print_kwargs: Any) -> None:
    """``print()`` of a message that may hold untrusted names: what every CLI command prints."""
    print(printable_lines(text), **print_kwargs)


class EscapingFormatter(logging.Formatter):
    """Log lines, tracebacks included, with the same escaping: log messages name files too."""

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(super().format(record))
