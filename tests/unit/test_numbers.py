"""Numbers in text: ASCII digits only, bounded by what storage holds."""

from __future__ import annotations

import pytest

from aimesh.protocol import STORED_INT_MAX, whole_number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("7", 7),
        ("007", 7),
        (str(STORED_INT_MAX), STORED_INT_MAX),
        (str(STORED_INT_MAX + 1), STORED_INT_MAX + 1),
        ("9" * 5000, STORED_INT_MAX + 1),  # past int()'s 4,300 digits: still a (too big) number
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1.0", None),
        ("\u00b9", None),  # superscript one: isdigit() says yes, int() raises
        ("\u0661", None),  # Arabic-Indic one: int() would read it as 1
        ("\uff11", None),  # fullwidth one
    ],
)
def test_only_ascii_digits_are_a_number(text: str, number: int | None) -> None:
    assert whole_number(text) == number
