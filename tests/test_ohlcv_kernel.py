"""OHLCV's compiled window loop (``operators/_ohlcv.c``) against the window's Python loop.

The kernel must leave every accumulator exactly as the generated Python loop would (the
same values to the bit, -0.0 included; NaN where it gives NaN), and stop before any row it
cannot do that way, so that the Python loop carries on from there. Each test runs the same
batches (columns, or records the window reads as columns) through two replicas of one
window, one with the kernel and one without, and compares what they fire.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.columns import Columns
from engine.operator import Context
from engine.records import Bar, Tick
from operators import OHLCV, Tumbling, WindowAggregate, aggregations

native = pytest.mark.skipif(not aggregations.NATIVE, reason="operators._ohlcv is not built")

SIZE = 1_000
T0 = 1_700_000_000_000_000_000


def _bits(value: Any) -> Any:
    """Floats by their bits (-0.0 differs from 0.0), every NaN alike (which NaN a sum of two
    NaNs gives is the compiler's choice of operand order, in CPython as here), anything
    else as is."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else struct.pack("<d", value)
    return (type(value), value)


def _same(a: list[Bar], b: list[Bar]) -> bool:
    rows = [[_bits(getattr(x, f)) for f in Bar.__struct_fields__] for x in a]
    return rows == [[_bits(getattr(x, f)) for f in Bar.__struct_fields__] for x in b]


def _replicas() -> tuple[Any, Any]:
    config = WindowAggregate(Tumbling(SIZE), OHLCV())
    with_kernel, without = config.build(Context("w")), config.build(Context("w"))
    assert with_kernel._kernel is aggregations._ohlcv_window
    without._kernel = None
    return with_kernel, without


def _run(logic: Any, batches: list[Any]) -> list[Bar]:
    for batch in batches:
        assert logic.process(batch) == []
    bars: list[Bar] = logic.on_eof()
    return bars


_prices = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 100.25, 1e308, 5e-324]),
)
_rows = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C", "é"]),
        st.integers(0, SIZE - 1),  # one window: the kernel's path
        _prices,
        _prices,
    ),
    min_size=1,
    max_size=40,
)


def _columns(rows: list[tuple[str, int, Any, Any]]) -> Columns:
    return Columns(
        Tick,
        [
            [r[0] for r in rows],
            [T0 + r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        ],
    )


@native
@settings(max_examples=300)
@given(st.lists(_rows, min_size=1, max_size=4))
def test_the_kernel_leaves_every_accumulator_as_the_python_loop_does(
    batches: list[list[tuple[str, int, float, float]]],
) -> None:
    with_kernel, without = _replicas()
    columns = [_columns(rows) for rows in batches]
    assert _same(_run(with_kernel, columns), _run(without, columns))


@native
@settings(max_examples=200)
@given(
    _rows,
    st.integers(0, 39),
    st.sampled_from(["int price", "int size", "bool time", "big time", "tuple key"]),
)
def test_a_row_the_kernel_cannot_do_goes_to_the_python_loop_from_there(
    rows: list[tuple[Any, int, Any, Any]], at: int, odd: str
) -> None:
    at = min(at, len(rows) - 1)
    columns = _columns(rows)
    data = [list(c) for c in columns.data]
    symbol, ts, price, size = data
    if odd == "int price":
        price[at] = 7
    elif odd == "int size":
        size[at] = 3
    elif odd == "bool time":
        ts[at] = True
    elif odd == "big time":
        ts[at] = 2**64 + 5
    else:
        symbol[at] = ("A", 1)
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    assert kernel({}, OHLCV().initial, ts, symbol, price, size) == at
    # Through the window (whose bounds check a bool or huge time would not pass, so those
    # rows go in a batch the window reads row by row): the same bars either way.
    batch = Columns(Tick, data)
    with_kernel, without = _replicas()
    assert _same(_run(with_kernel, [batch]), _run(without, [batch]))


@native
def test_an_accumulator_built_from_int_prices_is_left_to_the_python_loop() -> None:
    with_kernel, without = _replicas()
    rows_first = [Tick("A", T0 + 1, 7, 2), Tick("A", T0 + 2, 8, 1)]  # ints in float fields
    then = _columns([("A", 3, 9.5, 1.0), ("B", 4, 1.0, 2.0)])
    bars = _run(with_kernel, [rows_first, then])
    assert _same(bars, _run(without, [rows_first, then]))
    assert bars[0].high == 9.5 and bars[0].count == 3 and bars[1].count == 1


@native
def test_the_kernel_refuses_columns_of_other_kinds_at_once() -> None:
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    bucket: dict[str, Any] = {}
    assert kernel(bucket, OHLCV().initial, (1,), ["A"], [1.0], [1.0]) == 0
    assert kernel({"A": None}.__class__(), OHLCV().initial, [1], ["A"], [1.0], [1.0, 2.0]) == 0
    assert bucket == {}
    with pytest.raises(TypeError):
        kernel(bucket, OHLCV().initial, [1], ["A"], [1.0])  # type: ignore[call-arg]


def test_without_the_extension_the_window_uses_its_python_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregations, "_ohlcv_window", None)
    logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(Context("w"))
    assert logic._kernel is None
    bars = _run(logic, [_columns([("A", 1, 2.0, 3.0), ("A", 2, 1.0, 1.0)])])
    assert [(b.open, b.close, b.low, b.volume, b.count) for b in bars] == [(2.0, 1.0, 1.0, 4.0, 2)]
    assert math.isclose(bars[0].vwap, 7.0 / 4.0)


_times = st.integers(0, 3 * SIZE - 1)  # three windows: late records and window changes too


@native
@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), _times, _prices, _prices),
        min_size=0,
        max_size=60,
    ),
    st.integers(-1, 2 * SIZE),
)
def test_records_go_through_the_kernel_as_columns_with_the_rows_loops_results(
    rows: list[tuple[str, int, float, float]], watermark: int
) -> None:
    ticks = [Tick(symbol, T0 + t, price, size) for symbol, t, price, size in rows]
    config = WindowAggregate(Tumbling(SIZE), OHLCV())
    out = []
    for kernel in (True, False):
        ctx = Context("w")
        logic = config.build(ctx)
        if not kernel:
            logic._kernel = None
        logic.on_watermark(T0 + watermark)
        assert logic.process(ticks) == []
        out.append((logic.on_eof(), ctx.side.get("late", [])))
    (bars, late), (bars_rows, late_rows) = out
    assert _same(bars, bars_rows)
    assert late == late_rows and all(any(t is x for x in ticks) for t in late)


@native
def test_records_the_columns_cannot_take_go_through_the_rows_loop() -> None:
    class Quote:  # no size: the rows loop's error names it
        symbol, ts, price = "A", T0, 1.0

    logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(Context("w"))
    with pytest.raises(AttributeError, match="size"):
        logic.process([Tick("A", T0 + i, 1.0, 1.0) for i in range(20)] + [Quote()])
    float_times = [Tick("A", 10_000 + i, 1.0, 1.0) for i in range(20)]
    float_times.append(Tick("A", 10_021.0, 2.0, 1.0))  # type: ignore[arg-type]
    logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(Context("w"))
    assert logic.process(float_times) == []
    assert [(b.count, b.close) for b in logic.on_eof()] == [(21, 2.0)]
