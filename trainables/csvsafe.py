"""CSV cells a spreadsheet will not run: every CSV that holds untrusted text is written by ``writer()``.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (``=HYPERLINK(...)`` leaks data, ``-2+3+cmd|' /C calc'!A0`` runs a
program through DDE). File, class, run and param names are chosen by whoever made the data, so such
a text cell gets a leading ``'`` (OWASP's "CSV Injection" advice): shown as text, evaluated never.

Only text is escaped. A number (``-0.5`` as a float) stays a number, and so does text that is only
a plain decimal number (an MLflow param ``-0.5``, an id ``-5``): no formula can hide in it.

It lives in ``trainables`` (which imports nothing of ``tuner``) so that the trial's own tables and
the ``tuner`` commands share it.
"""

from __future__ import annotations

import csv
import re
from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
# ASCII digits only (re.ASCII): "²" or "٣" make no number a spreadsheet would read.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _is_formula(text: str) -> bool:
    return text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text)


def _needs_quote(text: str) -> bool:
    # Text that already starts with quotes before a formula gets one more, so that unescape() can
    # tell "'=x" (escaped "=x") from "''=x" (escaped "'=x"): the mapping stays one-to-one.
    return _is_formula(text.lstrip(QUOTE))


def cell(value: Any) -> Any:
    """``value`` as it may go into a CSV cell: formula text with a leading ``'``, all else as is."""
    if isinstance(value, str) and _needs_quote(value):
        return QUOTE + value
    return value


def unescape(text: str) -> str:
    """The text ``cell()`` was given, read back from a file it wrote (``tuner score``)."""
    if text.startswith(QUOTE) and _needs_quote(text[len(QUOTE):]):
        return text[len(QUOTE):]
    return text


class _Writer:
    """``csv.writer`` whose every cell, header included, went through ``cell()``."""

    def __init__(self, handle, **fmt: Any) -> None:
        self._writer = csv.writer(handle, **fmt)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([cell(value) for value in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(handle, **fmt: Any) -> _Writer:
    """Drop-in for ``csv.writer(handle)`` wherever a cell may hold a name someone else chose."""
    return _Writer(handle, **fmt)
