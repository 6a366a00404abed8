"""A time column's bounds: ``operators.tumbling.int_bounds`` and its C routine
(``operators/_bounds.c``), held against ``min`` and ``max``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators import tumbling
from operators.tumbling import int_bounds

native = pytest.mark.skipif(not tumbling.NATIVE, reason="operators._bounds is not built")

_INT64 = st.integers(-(2**63), 2**63 - 1)


@given(st.lists(st.one_of(_INT64, st.integers()), min_size=1))
def test_bounds_are_min_and_max_for_any_ints(times: list[int]) -> None:
    assert int_bounds(times) == (min(times), max(times))


@native
@given(st.lists(_INT64, min_size=1))
def test_the_c_routine_reads_64_bit_ints_in_one_pass(times: list[int]) -> None:
    from operators._bounds import int_bounds as c_bounds

    assert c_bounds(times) == (min(times), max(times))


@native
@pytest.mark.parametrize(
    "column",
    [
        [],  # empty: min() would raise, and the caller never asks
        (1, 2),  # not a list
        [1, True],  # bool is not an exact int
        [1, 2.5],
        [1, 2**63],  # beyond 64 bits
        [-(2**63) - 1, 0],
        [1, "2"],
    ],
)
def test_the_c_routine_leaves_what_it_cannot_read_to_min_and_max(column: Any) -> None:
    from operators._bounds import int_bounds as c_bounds

    assert c_bounds(column) is None


def test_bounds_of_values_the_c_routine_leaves_alone_are_still_right() -> None:
    assert int_bounds([5, True, 2**70, -3]) == (-3, 2**70)
    assert int_bounds((4, 1, 9)) == (1, 9)


def test_without_the_extension_bounds_come_from_min_and_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tumbling, "_int_bounds", None)
    assert int_bounds([7, -2, 3]) == (-2, 7)
