"""OHLCV's compiled window loop (``operators/_ohlcv.c``) against the window's Python loop.

The kernel must leave every accumulator exactly as the generated Python loop would (the
same values to the bit, -0.0 included; NaN where it gives NaN), and stop before any row it
cannot do that way, so that the Python loop carries on from there. Each test runs the same
batches (columns, or records the window reads as columns) through two replicas of one
window, one with the kernel and one without, and compares what they fire.
"""

from __future__ import annotations

import itertools
import math
import struct
from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.batch import MsgpackCodec
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


def _packed(batch: Columns) -> Columns:
    """The batch with its time, price and size columns as arrays, as a channel decodes them
    (engine/numbers.py)."""
    symbols, times, prices, sizes = batch.data
    return Columns(Tick, (symbols, array("q", times), array("d", prices), array("d", sizes)))


@native
@settings(max_examples=300)
@given(st.lists(st.tuples(_rows, st.booleans()), min_size=1, max_size=4))
def test_the_kernel_leaves_every_accumulator_as_the_python_loop_does(
    batches: list[tuple[list[tuple[str, int, float, float]], bool]],
) -> None:
    with_kernel, without = _replicas()
    columns = [_columns(rows) for rows, _ in batches]
    given_to_kernel = [
        _packed(c) if packed else c for c, (_, packed) in zip(columns, batches, strict=True)
    ]
    assert _same(_run(with_kernel, given_to_kernel), _run(without, columns))


@native
@settings(max_examples=100)
@given(st.lists(_rows, min_size=1, max_size=4))
def test_batches_through_a_channels_codec_give_the_python_loops_bars(
    batches: list[list[tuple[str, int, float, float]]],
) -> None:
    with_kernel, without = _replicas()
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    columns = [_columns(rows) for rows in batches]
    decoded = [receiver.decode(sender.encode(c)) for c in columns]
    assert _same(_run(with_kernel, decoded), _run(without, columns))


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
    initial = OHLCV().initial
    assert kernel(bucket, initial, iter([1]), ["A"], [1.0], [1.0]) == 0  # not a list or tuple
    assert kernel(bucket, initial, [1], ["A"], [1.0], [1.0, 2.0]) == 0  # lengths differ
    assert kernel(dict[str, Any](), initial, [1], ["A"], [1.0], [1.0]) == 1
    assert bucket == {}
    assert kernel(bucket, initial, (1, 2), ("A", "B"), (1.0, 2.0), (1.0, 1.0)) == 2  # tuples
    assert sorted(bucket) == ["A", "B"]
    # Arrays: 8-byte ints for times, doubles for prices and sizes, of the keys' length.
    for odd in (
        (array("i", [1]), ["A"], [1.0], [1.0]),
        ([1], ["A"], array("f", [1.0]), [1.0]),
        ([1], array("u", "A"), [1.0], [1.0]),
        (array("d", [1.0]), ["A"], [1.0], [1.0]),
        ([1], ["A"], array("d", [1.0, 2.0]), [1.0]),
        (memoryview(array("q", [1])), ["A"], [1.0], [1.0]),
    ):
        assert kernel(bucket, initial, *odd) == 0
    assert kernel(bucket, initial, array("l", [3]), ["C"], array("d", [1.0]), [1.0]) == 1
    with pytest.raises(TypeError):
        kernel(bucket, initial, [1], ["A"], [1.0])  # type: ignore[call-arg]


class _Collider:
    """A key that shares "A"'s hash: a lookup of "A" runs its ``__eq__`` (Python code)."""

    calls = 0

    def __hash__(self) -> int:
        return hash("A")

    def __eq__(self, other: object) -> bool:
        _Collider.calls += 1
        return False


@native
def test_a_key_of_another_type_in_the_bucket_gives_the_python_loops_bars() -> None:
    ts, symbols, prices, sizes = [T0 + 1, T0 + 2], ["A", "A"], [21.0, 2.5], [2.0, 4.0]
    batch = Columns(Tick, [symbols, ts, prices, sizes])
    with_kernel, without = _replicas()
    key = _Collider()
    for logic in (with_kernel, without):
        logic._windows[T0 // SIZE * SIZE] = {key: OHLCV().initial()}
    calls = _Collider.calls
    bars = _run(with_kernel, [batch, _packed(batch)])
    assert _Collider.calls > calls  # the kernel's lookups ran it
    assert _same(bars, _run(without, [batch, batch]))
    assert [(b.symbol, b.count) for b in bars if b.symbol == "A"] == [("A", 4)]


class _Vandal:
    """A key that shares "A"'s hash, whose ``__eq__`` empties the batch's lists, frees
    memory and calls the kernel again, all while the kernel holds accumulators in C."""

    def __init__(self, columns: list[list[Any]]) -> None:
        self.columns = columns
        self.nested: list[int] = []

    def __hash__(self) -> int:
        return hash("A")

    def __eq__(self, other: object) -> bool:
        for column in self.columns:
            column.clear()
        [float(i) + 0.5 for i in range(1000)]
        kernel = aggregations._ohlcv_window
        assert kernel is not None
        self.nested.append(kernel({}, OHLCV().initial, [T0], ["B"], [1.0], [1.0]))
        return False


@native
def test_python_code_run_by_a_lookup_cannot_pull_the_rows_from_under_the_kernel() -> None:
    columns: list[list[Any]] = [[T0 + 1, T0 + 2], ["B", "A"], [21.0, 2.5], [2.0, 4.0]]
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    vandal = _Vandal(columns)
    bucket: dict[Any, Any] = {"B": OHLCV().initial(), vandal: OHLCV().initial()}
    # Row 0 (B) is done; the lookup of "A" empties the lists; the kernel stops there,
    # having read nothing it no longer holds (the batch changed under it: the rest, none
    # now, is the Python loop's), and the nested call did nothing. (CPython may compare
    # the key twice: a collection during __eq__ can make the dict restart its lookup.)
    assert kernel(bucket, OHLCV().initial, *columns) == 1
    assert vandal.nested and set(vandal.nested) == {0}
    assert bucket["B"][5] == 21.0 and bucket["B"][8] == 1 and "A" not in bucket


class _LoudOHLCV(OHLCV):
    """OHLCV whose ``initial`` (Python code the kernel calls) rewrites the batch it is in."""

    columns: Any = None

    def initial(self) -> list[Any]:
        if _LoudOHLCV.columns is not None:
            for column in _LoudOHLCV.columns:
                column[:] = column[:1]  # shorter: the kernel must stop after this row
        return super().initial()


def test_an_aggregation_with_its_own_initial_gets_no_kernel_from_ohlcv() -> None:
    assert _LoudOHLCV().window_kernel() is None


@native
def test_python_code_in_initial_cannot_pull_the_rows_from_under_the_kernel() -> None:
    agg = _LoudOHLCV()
    columns = [[T0 + 1, T0 + 2, T0 + 3], ["A", "B", "C"], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]
    _LoudOHLCV.columns = columns
    try:
        kernel = aggregations._ohlcv_window
        assert kernel is not None
        bucket: dict[Any, Any] = {}
        # A's accumulator is made and stored, as the Python loop would at its first row;
        # its row is done, and the columns end there.
        assert kernel(bucket, agg.initial, *columns) == 1
    finally:
        _LoudOHLCV.columns = None
    assert list(bucket) == ["A"] and bucket["A"][5] == 1.0 and bucket["A"][8] == 1


@native
def test_no_accumulator_is_made_for_a_key_after_a_row_the_kernel_cannot_do() -> None:
    # The Python loop raises at the bad row: a key after it must not be in the bucket.
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    bucket: dict[Any, Any] = {}
    columns = [[T0, T0 + 1, T0 + 2], ["A", "B", "C"], [1.0, "x", 3.0], [1.0, 1.0, 1.0]]
    assert kernel(bucket, OHLCV().initial, *columns) == 1
    assert list(bucket) == ["A"] and bucket["A"][8] == 1


@native
def test_equal_keys_that_are_distinct_objects_share_their_accumulator() -> None:
    a, also_a = "AA", "".join(["A", "A"])
    assert a is not also_a
    batch = Columns(Tick, [[a, also_a, a], [T0 + 1, T0 + 3, T0 + 2], [1.0, 3.0, 2.0], [1.0] * 3])
    with_kernel, without = _replicas()
    bars = _run(with_kernel, [batch])
    assert _same(bars, _run(without, [batch]))
    assert [(b.open, b.close, b.high, b.count) for b in bars] == [(1.0, 3.0, 3.0, 3)]


@native
def test_a_batch_of_more_keys_than_the_kernel_keeps_room_for() -> None:
    # 70,000 keys: the kernel's tables grow past what it keeps between calls, and are let go.
    n = 70_000
    keys = [f"K{i}" for i in range(n)]
    batch = Columns(
        Tick, [keys * 2, [T0 + i % SIZE for i in range(2 * n)], [1.5] * 2 * n, [2.0] * 2 * n]
    )
    with_kernel, without = _replicas()
    bars = _run(with_kernel, [batch, _packed(batch)])
    assert _same(bars, _run(without, [batch, batch]))
    assert len(bars) == n and {b.count for b in bars} == {4}


@native
@pytest.mark.parametrize("odd", ["float subclass price", "str subclass key", "count at max"])
def test_the_kernel_stops_at_values_it_does_not_read_exactly(odd: str) -> None:
    class Price(float):
        pass

    class Symbol(str):
        pass

    kernel = aggregations._ohlcv_window
    assert kernel is not None
    ts, symbols, prices, sizes = [T0, T0 + 1], ["A", "A"], [1.0, 2.0], [1.0, 1.0]
    bucket: dict[Any, Any] = {}
    if odd == "float subclass price":
        prices[1] = Price(2.0)
    elif odd == "str subclass key":
        symbols[1] = Symbol("A")
    else:
        kernel(bucket, OHLCV().initial, ts[:1], symbols[:1], prices[:1], sizes[:1])
        bucket["A"][8] = 2**63 - 1
        assert kernel(bucket, OHLCV().initial, ts[1:], symbols[1:], prices[1:], sizes[1:]) == 0
        return
    assert kernel(bucket, OHLCV().initial, ts, symbols, prices, sizes) == 1


@native
def test_times_at_the_ends_of_int64_order_against_the_sentinels() -> None:
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    for t in (2**63 - 1, -(2**63)):
        bucket: dict[Any, Any] = {}
        assert kernel(bucket, OHLCV().initial, [t], ["A"], [5.0], [1.0]) == 1
        assert bucket["A"][0] == t and bucket["A"][4] == t


def test_an_aggregation_with_its_own_body_gets_no_kernel_from_ohlcv() -> None:
    class Other(OHLCV):
        def inline(self) -> tuple[tuple[str, ...], str]:
            return (self.time, self.price, self.size), "acc[8] += 1\n"

    assert Other().window_kernel() is None
    logic = WindowAggregate(Tumbling(SIZE), Other()).build(Context("w"))
    assert logic._kernel is None


@native
@settings(max_examples=100)
@given(_rows, st.integers(1, 999))
def test_a_window_with_an_offset_gives_the_same_bars_with_the_kernel(
    rows: list[tuple[str, int, float, float]], offset: int
) -> None:
    config = WindowAggregate(Tumbling(SIZE, offset_ns=offset), OHLCV())
    with_kernel, without = config.build(Context("w")), config.build(Context("w"))
    without._kernel = None
    batch = _columns(rows)
    assert _same(_run(with_kernel, [batch]), _run(without, [batch]))


@native
def test_a_columns_batch_with_late_records_still_goes_through_the_kernel() -> None:
    ctx = Context("w")
    logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(ctx)
    calls: list[int] = []
    kernel = logic._kernel

    def spy(*args: Any) -> int:
        calls.append(kernel(*args))
        return calls[-1]

    logic._kernel = spy
    logic.on_watermark(T0 + SIZE)  # the first window has ended
    batch = _columns([("A", 5, 1.0, 1.0), ("A", SIZE + 1, 2.0, 1.0), ("B", SIZE + 2, 3.0, 2.0)])
    assert logic.process(batch) == []
    assert calls == [2] and [t.ts for t in ctx.side["late"]] == [T0 + 5]


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


def _rows_over_windows(min_size: int) -> st.SearchStrategy[list[tuple[str, int, float, float]]]:
    return st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), _times, _prices, _prices),
        min_size=min_size,
        max_size=60,
    )


@native
@settings(max_examples=200)
@given(
    _rows_over_windows(0),
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


class _Flaky:
    """A record whose price cannot be read: a property that raises."""

    symbol, ts, size = "A", T0 + 30, 1.0

    @property
    def price(self) -> float:
        raise ValueError("no price")


@native
def test_a_record_whose_field_raises_fails_as_in_the_rows_loop_after_those_before_it() -> None:
    batches = [Tick("A", T0 + i, float(i), 1.0) for i in range(20)] + [_Flaky()]
    out = []
    for kernel in (True, False):
        logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(Context("w"))
        if not kernel:
            logic._kernel = None
        with pytest.raises(ValueError, match="no price"):
            logic.process(batches)
        out.append(logic.on_eof())
    assert _same(out[0], out[1]) and out[0][0].count == 20


@native
def test_records_with_keys_that_are_not_str_give_the_same_bars() -> None:
    ticks = [Tick(i % 3, T0 + i, float(i), 1.0) for i in range(40)]  # type: ignore[arg-type]
    with_kernel, without = _replicas()
    assert _same(_run(with_kernel, [ticks]), _run(without, [ticks]))


@native
@settings(max_examples=150)
@given(
    _rows_over_windows(1),
    st.integers(-1, 2 * SIZE),
)
def test_decoded_columns_with_late_records_and_several_windows_give_the_lists_results(
    rows: list[tuple[str, int, float, float]], watermark: int
) -> None:
    # Packed on the wire, the columns arrive as arrays; late records are taken out of them
    # and the rest may span windows.
    batch = _columns(rows)
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    decoded = receiver.decode(sender.encode(batch))
    assert isinstance(decoded, Columns) and type(decoded.data[1]) is array
    out = []
    for given_batch, kernel in ((decoded, True), (batch, False)):
        ctx = Context("w")
        logic = WindowAggregate(Tumbling(SIZE), OHLCV()).build(ctx)
        if not kernel:
            logic._kernel = None
        logic.on_watermark(T0 + watermark)
        assert logic.process(given_batch) == []
        out.append((logic.on_eof(), ctx.side.get("late", [])))
    (bars, late), (bars_lists, late_lists) = out
    assert _same(bars, bars_lists)
    assert _bits_of(late) == _bits_of(late_lists)


def _bits_of(records: list[Tick]) -> list[Any]:
    return [[_bits(getattr(r, f)) for f in Tick.__struct_fields__] for r in records]


@native
def test_the_kernel_takes_the_rows_from_first_within_a_windows_bounds() -> None:
    kernel = aggregations._ohlcv_window
    assert kernel is not None
    initial = OHLCV().initial
    ts = [5, 15, 12, 25, 8]
    columns = [ts, ["A"] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5]
    bucket: dict[Any, Any] = {}
    # From row 1, in [10, 20): rows 1 and 2, then row 3 (25) is outside.
    assert kernel(bucket, initial, *columns, 1, 10, 20) == 3
    assert bucket["A"][8] == 2 and bucket["A"][1] == 3.0 and bucket["A"][5] == 2.0
    assert kernel({}, initial, *columns, 0, 10, 20) == 0  # row 0 (5) is before lo
    # Bounds beyond int64: unbounded on their side, or no time at all.
    assert kernel({}, initial, *columns, 0, -(2**70), 2**70) == 5
    assert kernel({}, initial, *columns, 2, 2**70, 2**71) == 2
    assert kernel({}, initial, *columns, 2, -(2**71), -(2**70)) == 2
    assert kernel({}, initial, *columns, 5, 0, 100) == 5  # nothing from the end
    with pytest.raises(TypeError, match="6 or 9 arguments"):
        kernel({}, initial, *columns, 0)
    with pytest.raises(TypeError, match="must be ints"):
        kernel({}, initial, *columns, 0, 1.5, 2)  # type: ignore[arg-type]


@native
@settings(max_examples=200)
@given(
    _rows_over_windows(1),
    st.booleans(),
)
def test_a_batch_over_several_windows_goes_through_the_kernel_window_by_window(
    rows: list[tuple[str, int, float, float]], packed: bool
) -> None:
    batch = _columns(rows)
    with_kernel, without = _replicas()
    calls: list[tuple[int, int]] = []
    kernel = with_kernel._kernel

    def spy(*args: Any) -> int:
        done: int = kernel(*args)
        calls.append((args[6] if len(args) == 9 else 0, done))
        return done

    with_kernel._kernel = spy
    bars = _run(with_kernel, [_packed(batch) if packed else batch])
    assert _same(bars, _run(without, [batch]))
    # Every row went through the kernel, in runs that each ended where the next began.
    starts = sorted({T0 + t - (T0 + t) % SIZE for _, t, _, _ in rows})
    assert calls and calls[-1][1] == len(rows)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(calls))
    assert len(calls) >= len(starts)
