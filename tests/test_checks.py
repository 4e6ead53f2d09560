"""The shared number predicates behind every argument check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scamort._checks import is_real_number, is_whole_number


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [
        (3, None, True),
        (np.int64(3), None, True),
        (np.uint8(0), 0, True),
        (-2, None, True),
        (0, 1, False),
        (True, None, False),
        (np.bool_(True), None, False),
        (3.0, None, False),
        ("3", None, False),
        (None, None, False),
    ],
)
def test_whole_numbers(value, minimum, expected) -> None:
    assert is_whole_number(value, minimum) is expected


@pytest.mark.parametrize(
    ("value", "finite", "expected"),
    [
        (0.5, False, True),
        (2, False, True),
        (np.float32(0.5), False, True),
        (np.int32(-1), True, True),
        (math.inf, False, True),
        (math.inf, True, False),
        (-math.inf, True, False),
        (math.nan, False, False),
        (np.float64("nan"), False, False),
        (True, False, False),
        ("0.5", False, False),
        (1 + 2j, False, False),
        (None, False, False),
    ],
)
def test_real_numbers(value, finite, expected) -> None:
    assert is_real_number(value, finite=finite) is expected
