"""The window's column helpers (``operators/_columns.c``): a time column's bounds
(``operators.tumbling.int_bounds``), held against ``min`` and ``max``, and records' fields
as columns (``operators.tumbling.fields_of``), held against ``attrgetter``."""

from __future__ import annotations

from array import array
from operator import attrgetter
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.operator import Context
from engine.records import Tick
from operators import OHLCV, Tumbling, WindowAggregate, tumbling
from operators.tumbling import int_bounds

native = pytest.mark.skipif(not tumbling.NATIVE, reason="operators._columns is not built")

_INT64 = st.integers(-(2**63), 2**63 - 1)


@given(st.lists(st.one_of(_INT64, st.integers()), min_size=1))
def test_bounds_are_min_and_max_for_any_ints(times: list[int]) -> None:
    assert int_bounds(times) == (min(times), max(times))


@native
@given(st.lists(_INT64, min_size=1))
def test_the_c_routine_reads_64_bit_ints_in_one_pass(times: list[int]) -> None:
    from operators._columns import int_bounds as c_bounds

    assert c_bounds(times) == (min(times), max(times))


@native
@given(st.lists(_INT64, min_size=1), st.sampled_from("ql"))
def test_the_c_routine_reads_arrays_of_64_bit_ints(times: list[int], code: str) -> None:
    # A packed time column, as a channel decodes it (engine/numbers.py).
    from operators._columns import int_bounds as c_bounds

    assert c_bounds(array(code, times)) == (min(times), max(times))
    assert int_bounds(array(code, times)) == (min(times), max(times))


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
        array("q"),
        array("i", [1, 2]),  # not 8 bytes an item
        array("d", [1.0]),
    ],
)
def test_the_c_routine_leaves_what_it_cannot_read_to_min_and_max(column: Any) -> None:
    from operators._columns import int_bounds as c_bounds

    assert c_bounds(column) is None


def test_bounds_of_values_the_c_routine_leaves_alone_are_still_right() -> None:
    assert int_bounds([5, True, 2**70, -3]) == (-3, 2**70)
    assert int_bounds((4, 1, 9)) == (1, 9)


def test_without_the_extension_bounds_come_from_min_and_max(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tumbling, "_int_bounds", None)
    assert int_bounds([7, -2, 3]) == (-2, 7)


# --- fields_of: records' fields as columns -----------------------------------------------

_NAMES = ("ts", "symbol", "price", "size")


@given(
    st.lists(
        st.builds(Tick, st.text(max_size=3), _INT64, st.floats(), st.floats()),
        min_size=1,
        max_size=30,
    )
)
def test_fields_of_struct_records_are_what_attrgetter_reads(ticks: list[Tick]) -> None:
    found = tumbling.fields_of(ticks, _NAMES)
    if not tumbling.NATIVE:
        assert found is None
        return
    assert found is not None
    expected = [list(map(attrgetter(name), ticks)) for name in _NAMES]
    assert [[id(v) for v in c] for c in found] == [[id(v) for v in c] for c in expected]


class _Slotted:
    __slots__ = ("price", "size", "symbol", "ts")


class _Plain:
    def __init__(self) -> None:
        self.ts, self.symbol, self.price, self.size = 1, "A", 1.0, 1.0


class _WithProperty(Tick):
    @property
    def price(self) -> float:  # type: ignore[override]
        return 2.0


@native
def test_fields_of_reads_slots_and_leaves_anything_else_to_attrgetter() -> None:
    tick = Tick("A", 1, 1.0, 2.0)
    slotted = _Slotted()
    slotted.ts, slotted.symbol, slotted.price, slotted.size = 1, "A", 1.0, 2.0
    assert tumbling.fields_of([slotted, slotted], _NAMES) == (
        [1, 1],
        ["A", "A"],
        [1.0, 1.0],
        [2.0, 2.0],
    )
    unset = _Slotted()
    unset.ts = 1
    assert tumbling.fields_of([slotted, unset], _NAMES) is None  # unset slots: attrgetter raises
    assert tumbling.fields_of([tick, slotted], _NAMES) is None  # two types
    assert tumbling.fields_of([_Plain()], _NAMES) is None  # no slots
    assert tumbling.fields_of([_WithProperty("A", 1, 1.0, 2.0)], _NAMES) is None  # a property
    assert tumbling.fields_of([tick], ("ts", "venue")) is None  # no such field
    assert tumbling.fields_of([], _NAMES) is None


class _Audited(msgspec.Struct):
    symbol: str
    ts: int
    price: float
    size: float

    def __getattribute__(self, name: str) -> Any:  # attribute access of its own
        value = object.__getattribute__(self, name)
        return value * 2 if name == "price" else value


@native
def test_fields_of_leaves_records_with_their_own_attribute_access_to_attrgetter() -> None:
    records = [_Audited("A", 1, 1.5, 1.0), _Audited("B", 2, 2.5, 1.0)]
    assert tumbling.fields_of(records, _NAMES) is None
    logic = WindowAggregate(Tumbling(1_000), OHLCV()).build(Context("w"))
    assert logic._kernel is not None
    assert logic.process(records * 10) == []  # 20 records: read as columns
    assert [b.high for b in logic.on_eof()] == [3.0, 5.0]  # the doubled prices


@native
def test_fields_of_sees_a_slot_replaced_on_the_class_since_the_last_call() -> None:
    class Slotted:
        __slots__ = ("price", "ts")

    record = Slotted()
    record.ts, record.price = 1, 1.0
    assert tumbling.fields_of([record], ("ts", "price")) == ([1], [1.0])
    Slotted.price = property(lambda self: 99.0)  # type: ignore[assignment]
    assert tumbling.fields_of([record], ("ts", "price")) is None
    assert attrgetter("price")(record) == 99.0


@native
def test_the_c_routine_refuses_what_is_not_a_list_of_records_and_a_tuple_of_names() -> None:
    from operators._columns import fields

    tick = Tick("A", 1, 1.0, 2.0)
    assert fields((tick,), ("ts",)) is None
    assert fields([tick], ["ts"]) is None  # type: ignore[arg-type]
    assert fields([tick], ()) is None
    assert fields([tick], (1,)) is None  # type: ignore[arg-type]
    assert fields([], ("ts",)) is None
    assert fields([tick], ("ts", "price")) == ([1], [1.0])
