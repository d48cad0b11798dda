"""Whole numbers as they arrive in text (paths, headers, references) and as stores hold them."""

from __future__ import annotations

__all__ = ["STORED_INT_MAX", "whole_number"]

STORED_INT_MAX = 2**63 - 1
"""The largest integer SQLite, PostgreSQL's ``bigint`` and Delta's versions hold: the bound
on every number a request gives that meets storage (past it SQLite raises ``OverflowError``)."""


def whole_number(text: str) -> int | None:
    """``text`` as a whole number when it is ASCII digits and nothing else, else ``None``.

    ``str.isdigit`` also takes '¹' (which ``int`` refuses) and '\u0661' (which ``int`` reads as 1),
    so a number is checked here, once. One past :data:`STORED_INT_MAX` stands for any larger
    number: no ``int`` of thousands of digits is ever built (``int`` refuses those too).
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(STORED_INT_MAX)) else STORED_INT_MAX + 1
