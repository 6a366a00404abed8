"""Columns batches: the batch itself, the codecs, the batch builder, key-hash routing, the
tumbling window's columns loop, the task's conversion to rows and the generator.

The common thread is equivalence: a ``Columns`` batch must behave exactly as the list of
records it stands for, wherever it goes. Everything runs in this process; the
multi-process path is covered by the engine tests.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.numbers as numbers
from engine.batch import (
    WATERMARK_SIZE,
    BatchBuilder,
    MsgpackCodec,
    PickleCodec,
    decode_watermark,
)
from engine.channel import Channel, Reader, Writer
from engine.columns import Columns, column_index, field_names
from engine.dag import OPERATOR, SINK, Dag
from engine.errors import DagError, RecordError
from engine.operator import Context, OperatorLogic, Source, SourceLogic, Watermark
from engine.records import Bar, Tick
from engine.ring import Kind
from engine.task import Emitter, Task
from engine.testing import run_inline
from operators import OHLCV, Collect, Count, Generator, Tumbling, Vwap, WindowAggregate, generate
from partitioning import KeyHash

T0 = 1_700_000_000_000_000_000  # ns
NO_LINGER = 3600.0  # with a manual clock that never gets there, only size flushes
# No deadline: a loaded 2-core machine must not turn a slow example into a failure.
PROPERTY = settings(max_examples=100, deadline=None)
THOROUGH = settings(max_examples=200, deadline=None)


def _tick_columns(ticks: list[Tick]) -> Columns:
    return Columns.from_rows(Tick, ticks)


def _bits(value: Any) -> bytes:
    """msgpack of ``value``: equal bytes mean equal values, floats to the bit (-0.0
    included, which ``==`` cannot tell). Every NaN counts as one: CPython does not keep a
    NaN's sign through arithmetic the same way in its generic and its specialised float
    ``+`` (3.11's adaptive interpreter switches a loop between them as it warms up), so
    the same sum may come out as either NaN from run to run, rows or columns alike."""
    return _ENCODER.encode(_denan(value))


def _denan(value: Any) -> Any:
    if isinstance(value, float):
        return math.nan if value != value else value
    if isinstance(value, list | tuple):
        return [_denan(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return [_denan(v) for v in msgspec.structs.astuple(value)]
    return value


_ENCODER = msgspec.msgpack.Encoder()


class KwOnly(msgspec.Struct, kw_only=True):
    a: int


class Trade(msgspec.Struct, frozen=True):
    """Tick's fields in another order, plus one more: the columns loop must find its
    fields by name, not by position."""

    ts: int
    size: float
    venue: str
    symbol: str
    price: float


class NoSize(msgspec.Struct, frozen=True):
    symbol: str
    ts: int
    price: float


class Quote(msgspec.Struct, frozen=True):
    symbol: str


class Wrapped(msgspec.Struct, frozen=True):
    quote: Quote
    ts: int


class Keyed(msgspec.Struct):
    key: Any
    n: int


class Empty(msgspec.Struct):
    pass


def symbol_of(record: Any) -> str:
    return record.symbol


# ---------------------------------------------------------------------------------------
# Columns


TICKS = [
    Tick("AAPL", T0, 187.25, 100.0),
    Tick("MSFT", T0 + 1, 402.5, 10.0),
    Tick("AAPL", T0 + 2, 187.5, 5.0),
]


def test_columns_hold_one_sequence_per_field() -> None:
    c = Columns(Tick, (["AAPL", "MSFT"], [1, 2], [1.5, 2.5], [10.0, 20.0]))
    assert len(c) == 2 and c
    assert c.type is Tick
    assert isinstance(c.data, tuple)
    assert c.column("ts") == [1, 2]
    assert c.column("symbol") == ["AAPL", "MSFT"]
    assert c.rows() == [Tick("AAPL", 1, 1.5, 10.0), Tick("MSFT", 2, 2.5, 20.0)]
    assert list(c) == c.rows()
    assert repr(c) == "Columns(Tick, 2 records)"


def test_empty_columns() -> None:
    empty = Columns.from_rows(Tick, [])
    assert len(empty) == 0 and not empty
    assert empty.rows() == [] and list(empty) == []
    assert empty == Columns(Tick, ((), (), (), ()))
    assert empty[1:] == empty
    assert empty.take([]) == empty


def test_from_rows_and_back() -> None:
    c = _tick_columns(TICKS)
    assert c.data == (
        ["AAPL", "MSFT", "AAPL"],
        [T0, T0 + 1, T0 + 2],
        [187.25, 402.5, 187.5],
        [100.0, 10.0, 5.0],
    )
    assert c.rows() == TICKS


def test_slices_and_take() -> None:
    c = _tick_columns(TICKS)
    assert c[1:].rows() == TICKS[1:]
    assert c[::-1].rows() == TICKS[::-1]
    assert c[5:].rows() == []
    assert isinstance(c[:1], Columns)
    assert c.take([2, 0]).rows() == [TICKS[2], TICKS[0]]
    assert c.take([1]).rows() == [TICKS[1]]
    assert c.take((1, 1, 1)).rows() == [TICKS[1]] * 3
    assert c.take([]).rows() == []
    assert c.take([-1]).rows() == [TICKS[-1]]


def test_int_index_is_refused() -> None:
    c = _tick_columns(TICKS)
    with pytest.raises(TypeError, match="Columns supports slices only; use rows"):
        c[0]


def test_columns_never_mutate_their_input() -> None:
    data = (["A", "B"], [1, 2], [1.0, 2.0], [3.0, 4.0])
    c = Columns(Tick, data)
    c[:1]
    c.take([1, 0])
    c.rows()
    assert data == (["A", "B"], [1, 2], [1.0, 2.0], [3.0, 4.0])


def test_equality() -> None:
    c = _tick_columns(TICKS)
    assert c == Columns(Tick, tuple(tuple(column) for column in c.data))  # lists or tuples
    assert c != c[:2]
    assert c != c.take([0, 2, 1])
    assert c != Columns.from_rows(Tick, [*TICKS[:2], Tick("AAPL", T0 + 2, 187.5, 6.0)])
    assert c != TICKS  # a Columns batch is not its list of records
    assert Columns.from_rows(Quote, [Quote("A")]) != Columns(Tick, (["A"], [1], [1.0], [1.0]))
    with pytest.raises(TypeError, match="unhashable"):
        hash(c)


def test_pickle_roundtrip() -> None:
    c = _tick_columns(TICKS)
    back = pickle.loads(pickle.dumps(c))
    assert type(back) is Columns and back == c and back.type is Tick
    assert back.rows() == TICKS


def test_wrong_number_of_columns() -> None:
    with pytest.raises(
        RecordError,
        match=r"a Columns batch of Tick needs 4 columns \(symbol, ts, price, size\), got 3",
    ):
        Columns(Tick, (["A"], [1], [1.0]))
    with pytest.raises(RecordError, match="needs 4 columns"):
        Columns(Tick, ())


def test_unequal_column_lengths() -> None:
    with pytest.raises(
        RecordError,
        match=r"column 'ts' has 2 values, column 'symbol' has 1; every column needs one value",
    ):
        Columns(Tick, (["A"], [1, 2], [1.0], [1.0]))
    with pytest.raises(RecordError, match=r"column 'size' has 0 values, column 'symbol' has 1"):
        Columns(Tick, (["A"], [1], [1.0], []))


@pytest.mark.parametrize("record_type", [int, dict, 42, list[int], Watermark])
def test_non_struct_types_are_refused(record_type: Any) -> None:
    with pytest.raises(DagError, match=r"columns need a msgspec\.Struct record type, got"):
        Columns(record_type, ())
    with pytest.raises(DagError, match=r"columns need a msgspec\.Struct"):
        field_names(record_type)


def test_keyword_only_fields_are_refused() -> None:
    with pytest.raises(DagError, match="KwOnly has keyword-only fields, so emit lists"):
        Columns(KwOnly, ([1],))
    with pytest.raises(DagError, match="keyword-only"):
        Columns.from_rows(KwOnly, [KwOnly(a=1)])


def test_field_names_and_column_index() -> None:
    assert field_names(Tick) == ("symbol", "ts", "price", "size")
    assert field_names(Trade) == ("ts", "size", "venue", "symbol", "price")
    assert column_index(Tick, "price") == 2
    assert column_index(Trade, "symbol") == 3
    with pytest.raises(
        DagError, match=r"Tick has no field 'venue'; its fields are 'symbol', 'ts', 'price', 'size'"
    ):
        column_index(Tick, "venue")
    with pytest.raises(DagError, match="Tick has no field 'bid'"):
        _tick_columns(TICKS).column("bid")


def test_a_fieldless_struct_is_refused() -> None:
    with pytest.raises(DagError, match="Empty has none"):
        Columns.from_rows(Empty, [Empty(), Empty()])


_finite = st.floats(allow_nan=False)
_tick = st.builds(
    Tick,
    symbol=st.text(max_size=8),
    ts=st.integers(-(2**63), 2**63 - 1),
    price=_finite,
    size=_finite,
)


@PROPERTY
@given(ticks=st.lists(_tick, max_size=30), data=st.data())
def test_columns_behave_as_their_rows(ticks: list[Tick], data: Any) -> None:
    c = _tick_columns(ticks)
    assert len(c) == len(ticks) and bool(c) == bool(ticks)
    assert c.rows() == ticks and list(c) == ticks
    assert c.column("ts") == [t.ts for t in ticks]
    n = len(ticks)
    start = data.draw(st.integers(-n - 2, n + 2) | st.none())
    stop = data.draw(st.integers(-n - 2, n + 2) | st.none())
    step = data.draw(st.sampled_from([None, 1, 2, -1, -3]))
    assert c[start:stop:step].rows() == ticks[start:stop:step]
    indices = data.draw(st.lists(st.integers(0, n - 1), max_size=10)) if n else []
    assert c.take(indices).rows() == [ticks[i] for i in indices]
    assert pickle.loads(pickle.dumps(c)) == c


# ---------------------------------------------------------------------------------------
# Codecs


@PROPERTY
@given(ticks=st.lists(_tick, max_size=40))
def test_msgpack_codec_roundtrips_rows_and_columns(ticks: list[Tick]) -> None:
    codec = MsgpackCodec(Tick)
    as_rows = codec.decode(codec.encode(ticks))
    assert type(as_rows) is list and as_rows == ticks
    columns = _tick_columns(ticks)
    payload = codec.encode(columns)
    for decoded in (codec.decode(payload), codec.decode(memoryview(payload))):
        assert type(decoded) is Columns and decoded.type is Tick
        assert decoded == columns and decoded.rows() == ticks
    # Tuple columns encode as lists do; a codec that crossed processes decodes the same.
    assert codec.encode(Columns(Tick, tuple(map(tuple, columns.data)))) == payload
    assert pickle.loads(pickle.dumps(codec)).decode(payload) == columns


@PROPERTY
@given(ticks=st.lists(_tick, max_size=40))
def test_pickle_codec_roundtrips_rows_and_columns(ticks: list[Tick]) -> None:
    codec = PickleCodec()
    assert codec.decode(codec.encode(ticks)) == ticks
    columns = _tick_columns(ticks)
    decoded = codec.decode(codec.encode(columns))
    assert type(decoded) is Columns and decoded == columns


def test_msgpack_columns_frame_is_one_array_per_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbers, "NATIVE", False)  # packed numbers: tests/test_numbers.py
    payload = MsgpackCodec(Tick).encode(_tick_columns(TICKS[:2]))
    assert msgspec.msgpack.decode(payload) == {
        "c": [["AAPL", "MSFT"], [T0, T0 + 1], [187.25, 402.5], [100.0, 10.0]]
    }


def test_columns_of_another_struct_roundtrip() -> None:
    trades = [Trade(T0, 1.0, "X", "AAPL", 1.5), Trade(T0 + 1, 2.0, "Y", "MSFT", -0.0)]
    codec = MsgpackCodec(Trade)
    decoded = codec.decode(codec.encode(Columns.from_rows(Trade, trades)))
    assert type(decoded) is Columns and decoded.rows() == trades
    assert _bits(decoded.rows()) == _bits(trades)


def test_columns_are_decoded_with_their_field_types() -> None:
    codec = MsgpackCodec(Tick)
    # An int where a float is declared becomes a float, as it does for records.
    decoded = codec.decode(codec.encode(Columns(Tick, (["A"], [1], [3], [4]))))
    assert isinstance(decoded, Columns)
    assert [list(c) for c in decoded.data] == [["A"], [1], [3.0], [4.0]]
    assert type(decoded.column("price")[0]) is float
    mistyped = codec.encode(Columns(Tick, (["A", "B"], [1, "noon"], [1.0, 2.0], [1.0, 1.0])))
    with pytest.raises(
        RecordError,
        match=r"cannot decode a batch of .*Tick.*Expected `int`, got `str` - at `\$\.c\[1\]\[1\]`",
    ):
        codec.decode(mistyped)
    flagged = codec.encode(Columns(Tick, (["A"], [True], [1.0], [1.0])))
    with pytest.raises(RecordError, match=r"Expected `int`, got `bool`"):
        codec.decode(flagged)


def test_malformed_columns_frames_are_record_errors() -> None:
    codec = MsgpackCodec(Tick)
    unequal = msgspec.msgpack.encode({"c": [["A", "B"], [1], [1.0, 2.0], [1.0, 2.0]]})
    with pytest.raises(RecordError, match=r"column 'ts' has 1 values, column 'symbol' has 2"):
        codec.decode(unequal)
    short = msgspec.msgpack.encode({"c": [["A"], [1], [1.0]]})
    with pytest.raises(RecordError, match=r"cannot decode a batch of .*Tick.*length 4, got 3"):
        codec.decode(short)
    wrong_key = msgspec.msgpack.encode({"d": [["A"], [1], [1.0], [1.0]]})
    with pytest.raises(RecordError, match="cannot decode a batch of"):
        codec.decode(wrong_key)


def test_columns_of_another_type_cannot_be_encoded() -> None:
    bars = Columns.from_rows(Bar, [Bar("A", 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)])
    with pytest.raises(
        RecordError, match=r"cannot encode a batch of .*Tick.*: got a Columns batch of Bar"
    ):
        MsgpackCodec(Tick).encode(bars)
    with pytest.raises(RecordError, match="got a Columns batch of Tick"):
        MsgpackCodec(Any).encode(_tick_columns(TICKS))
    with pytest.raises(RecordError, match="got a Columns batch of Tick"):
        MsgpackCodec(KwOnly).encode(_tick_columns(TICKS))
    # A record type that cannot have columns still carries lists of records.
    assert MsgpackCodec(KwOnly).decode(MsgpackCodec(KwOnly).encode([KwOnly(a=1)])) == [KwOnly(a=1)]


def test_unencodable_column_value_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="cannot encode a batch of"):
        MsgpackCodec(Tick).encode(Columns(Tick, (["A"], [object()], [1.0], [1.0])))


# ---------------------------------------------------------------------------------------
# BatchBuilder


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeWriter:
    """Records every frame; ``capacity`` is what the builder sizes its batches by."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.frames: list[tuple[int, bytes]] = []

    def send(
        self, kind: int, payload: bytes | bytearray | memoryview = b"", *, trailer: bytes = b""
    ) -> None:
        self.frames.append((kind, bytes(payload) + trailer))


def _unpacked(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The frames with each DATA_WATERMARK as the DATA and WATERMARK frames it stands for."""
    out = []
    for kind, payload in frames:
        if kind == Kind.DATA_WATERMARK:
            out += [(Kind.DATA, payload[:-WATERMARK_SIZE])]
            out += [(Kind.WATERMARK, payload[-WATERMARK_SIZE:])]
        else:
            out.append((kind, payload))
    return out


def _frame_records(codec: Any, payload: bytes) -> tuple[str, list[Any]]:
    batch = codec.decode(payload)
    if type(batch) is Columns:
        assert batch.type is Tick
        return "columns", batch.rows()
    assert type(batch) is list
    return "rows", batch


_ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["rows", "columns"]), st.integers(0, 40)),
        st.just(("watermark", 0)),
        st.just(("flush", 0)),
    ),
    max_size=25,
)


@THOROUGH
@given(
    ops=_ops,
    capacity=st.sampled_from([30, 120, 500, 4096]),
    codec=st.sampled_from([MsgpackCodec(Tick), PickleCodec()]),
    linger=st.sampled_from([0.0, 0.0025, NO_LINGER]),
    symbols=st.sampled_from([["A"], ["AAPL", "MSFT", "TSLA"], ["S" * 200, "B"]]),
)
def test_batch_builder_keeps_order_kind_and_watermarks(
    ops: list[tuple[str, int]], capacity: int, codec: Any, linger: float, symbols: list[str]
) -> None:
    writer = FakeWriter(capacity)
    clock = ManualClock()
    builder = BatchBuilder(writer, codec, linger=linger, clock=clock)  # type: ignore[arg-type]
    sent: list[tuple[str, Tick]] = []  # every record extended, with the kind it came as
    watermarks: list[tuple[int, int]] = []  # (ts, records extended before it)
    seq = itertools.count()
    for step, (op, n) in enumerate(ops):
        clock.now += 0.001
        if op == "watermark":
            builder.send_watermark(T0 + step)
            watermarks.append((T0 + step, len(sent)))
        elif op == "flush":
            builder.flush()
            assert builder.pending == 0
        else:
            ticks = [
                Tick(symbols[i % len(symbols)], next(seq), 0.5 + i, float(i)) for i in range(n)
            ]
            builder.extend(ticks if op == "rows" else _tick_columns(ticks))
            sent += [(op, t) for t in ticks]
        frames = _unpacked(writer.frames)
        out = sum(len(_frame_records(codec, p)[1]) for k, p in frames if k == Kind.DATA)
        assert builder.pending == len(sent) - out
    builder.send_eof()

    frames = _unpacked(writer.frames)
    assert frames[-1] == (Kind.EOF, b"")
    received: list[tuple[str, Tick]] = []
    seen_watermarks: list[tuple[int, int]] = []
    for kind, payload in frames[:-1]:
        assert kind in (Kind.DATA, Kind.WATERMARK)
        if kind == Kind.WATERMARK:
            seen_watermarks.append((decode_watermark(payload), len(received)))
            continue
        frame_kind, records = _frame_records(codec, payload)
        assert records, "no empty DATA frame"
        # Homogeneous: a frame holds records that all came in as its kind.
        assert [k for k, _ in sent[len(received) : len(received) + len(records)]] == [
            frame_kind
        ] * len(records)
        received += [(frame_kind, r) for r in records]
    assert received == sent
    # Each watermark follows exactly the records extended before it.
    assert seen_watermarks == watermarks
    assert builder.pending == 0
    assert builder.records_out == len(sent)
    assert builder.frames_out == sum(kind == Kind.DATA for kind, _ in frames)


def test_switching_kind_flushes_first() -> None:
    codec = MsgpackCodec(Tick)
    writer = FakeWriter(4096)
    builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())  # type: ignore[arg-type]
    builder.extend(TICKS[:2])
    assert writer.frames == []
    builder.extend(_tick_columns(TICKS[2:]))
    assert [codec.decode(p) for _, p in writer.frames] == [TICKS[:2]]
    assert builder.pending == 1
    builder.extend(_tick_columns(TICKS[:1]))  # same kind: joins the pending batch
    assert len(writer.frames) == 1 and builder.pending == 2
    builder.extend(TICKS[1:2])
    assert [codec.decode(p) for _, p in writer.frames[1:]] == [
        Columns.from_rows(Tick, [TICKS[2], TICKS[0]])
    ]
    builder.extend(_tick_columns([]))  # empty: nothing changes, nothing is flushed
    assert builder.pending == 1 and len(writer.frames) == 2
    builder.send_watermark(5)
    assert [k for k, _ in writer.frames] == [Kind.DATA, Kind.DATA, Kind.DATA_WATERMARK]
    assert codec.decode(writer.frames[2][1][:-WATERMARK_SIZE]) == [TICKS[1]]


def test_switching_columns_type_flushes_first() -> None:
    codec = PickleCodec()
    writer = FakeWriter(4096)
    builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())  # type: ignore[arg-type]
    quotes = Columns.from_rows(Quote, [Quote("A"), Quote("B")])
    builder.extend(_tick_columns(TICKS))
    builder.extend(quotes)
    builder.flush()
    assert [codec.decode(p) for _, p in writer.frames] == [_tick_columns(TICKS), quotes]


def test_columns_split_over_frames_by_target() -> None:
    codec = MsgpackCodec(Tick)
    writer = FakeWriter(4096)
    builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())  # type: ignore[arg-type]
    ticks = [Tick("AAPL", T0 + i, 187.25, 100.0) for i in range(1000)]
    builder.extend(_tick_columns(ticks))
    first = codec.decode(writer.frames[0][1])
    assert isinstance(first, Columns) and len(first) == 256  # the initial target
    assert all(len(codec.decode(p)) == builder.target for _, p in writer.frames[1:])
    builder.flush()
    rows = [t for _, p in writer.frames for t in codec.decode(p)]
    assert rows == ticks
    assert builder.records_out == 1000 and builder.frames_out == len(writer.frames)


def _never_block() -> None:
    raise AssertionError("the writer waited for credit, but nobody reads in this test")


@contextlib.contextmanager
def _channel() -> Iterator[tuple[Writer, Reader]]:
    with (
        Channel.create(slots=64, slot_size=4096) as ch,
        ch.tx.open(on_wait=_never_block) as writer,
        ch.rx.open() as reader,
    ):
        yield writer, reader


def test_columns_frames_over_a_real_channel() -> None:
    codec = MsgpackCodec(Tick)
    ticks = [Tick(f"S{i % 7}", T0 + i, 100.0 + i / 8, float(i % 5)) for i in range(700)]
    with _channel() as (writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        builder.extend(_tick_columns(ticks[:400]))
        builder.extend(ticks[400:500])
        builder.extend(_tick_columns(ticks[500:]))
        builder.send_eof()
        reader.pull()
        frames = []
        while (frame := reader.take()) is not None:
            frames.append((frame[0], bytes(frame[1])))
        reader.release()
    assert frames[-1][0] == Kind.EOF
    batches = [codec.decode(p) for _, p in frames[:-1]]
    assert [t for b in batches for t in b] == ticks
    assert [type(b).__name__ for b in batches[:2]] == ["Columns", "Columns"]
    assert any(type(b) is list for b in batches)


# ---------------------------------------------------------------------------------------
# KeyHash


def _named_ticks(names: list[str]) -> list[Tick]:
    """One tick per name; ``ts`` is the position, so it identifies a record."""
    return [Tick(name, i, float(i), 1.0) for i, name in enumerate(names)]


def _as_rows(groups: list[tuple[int, Any]]) -> list[tuple[int, list[Any]]]:
    out = []
    for replica, group in groups:
        assert type(group) is Columns, type(group)
        out.append((replica, group.rows()))
    return out


@PROPERTY
@given(
    names=st.lists(st.sampled_from(["AAPL", "MSFT", "TSLA", "", "é"]) | st.text(max_size=6)),
    parallelism=st.integers(1, 5),
    max_parallelism=st.sampled_from([5, 128, 32768]),
    warm=st.integers(0, 30),
)
def test_keyhash_routes_columns_as_their_rows(
    names: list[str], parallelism: int, max_parallelism: int, warm: int
) -> None:
    ticks = _named_ticks(names)
    config = KeyHash("symbol", max_parallelism)
    want = config.build(parallelism, 0).split(ticks)
    assert _as_rows(config.build(parallelism, 0).split(_tick_columns(ticks))) == want
    # A splitter whose cache already knows some of the keys routes them alike.
    splitter = config.build(parallelism, 1)
    splitter.split(_tick_columns(ticks[:warm]))
    assert _as_rows(splitter.split(_tick_columns(ticks))) == want
    assert _as_rows(splitter.split(_tick_columns(ticks))) == want  # every key cached now


@PROPERTY
@given(times=st.lists(st.integers(-(2**70), 2**70)), parallelism=st.integers(1, 5))
def test_keyhash_routes_columns_by_an_int_column(times: list[int], parallelism: int) -> None:
    ticks = [Tick("A", t, 1.0, float(i)) for i, t in enumerate(times)]
    want = KeyHash("ts").build(parallelism, 0).split(ticks)
    got = KeyHash("ts").build(parallelism, 0).split(_tick_columns(ticks))
    assert _as_rows(got) == want


def test_keyhash_columns_keep_other_struct_types() -> None:
    trades = [Trade(i, 1.0, "X", name, 2.0) for i, name in enumerate("ABCDEFGHIJ")]
    want = KeyHash("symbol").build(3, 0).split(trades)
    got = KeyHash("symbol").build(3, 0).split(Columns.from_rows(Trade, trades))
    assert all(type(group) is Columns and group.type is Trade for _, group in got)
    assert _as_rows(got) == want


@pytest.mark.parametrize("key", [attrgetter("symbol"), symbol_of])
def test_keyhash_key_function_falls_back_to_rows(key: Any) -> None:
    ticks = _named_ticks(list("ABCDEFGHIJKL"))
    want = KeyHash(key).build(4, 0).split(ticks)
    got = KeyHash(key).build(4, 0).split(_tick_columns(ticks))
    assert all(type(group) is list for _, group in got)
    assert got == want


def test_keyhash_dotted_key_falls_back_to_rows() -> None:
    records = [Wrapped(Quote(name), i) for i, name in enumerate("ABCDEFGH")]
    want = KeyHash("quote.symbol").build(3, 0).split(records)
    got = KeyHash("quote.symbol").build(3, 0).split(Columns.from_rows(Wrapped, records))
    assert all(type(group) is list for _, group in got)
    assert got == want


def test_keyhash_empty_columns_route_nowhere() -> None:
    assert KeyHash("symbol").build(3, 0).split(_tick_columns([])) == []


def test_keyhash_columns_without_the_key_field() -> None:
    with pytest.raises(RecordError, match="has no key attribute"):
        KeyHash("venue").build(2, 0).split(_tick_columns(TICKS))


def test_keyhash_columns_with_an_unsupported_key_type() -> None:
    batch = Columns.from_rows(Keyed, [Keyed("a", 0), Keyed(1.5, 1)])
    with pytest.raises(RecordError, match=r"cannot hash a key of type float \(1\.5\)"):
        KeyHash("key").build(2, 0).split(batch)


def test_keyhash_columns_with_an_unhashable_key_is_a_record_error() -> None:
    rows = [Keyed([1], 0), Keyed("a", 1)]
    with pytest.raises(RecordError, match="cannot be hashed"):
        KeyHash("key").build(2, 0).split(rows)
    with pytest.raises(RecordError, match="cannot be hashed"):
        KeyHash("key").build(2, 0).split(Columns.from_rows(Keyed, rows))


def test_keyhash_columns_with_an_unhashable_key_after_a_new_key() -> None:
    # A cache miss comes first here, so the fallback to records explains the bad key.
    rows = [Keyed("a", 0), Keyed([1], 1)]
    with pytest.raises(RecordError, match=r"the key \[1\] cannot be hashed"):
        KeyHash("key").build(2, 0).split(Columns.from_rows(Keyed, rows))


# ---------------------------------------------------------------------------------------
# Tumbling windows over columns


@st.composite
def window_runs(draw: Any) -> tuple[list[Any], type]:
    """Batches of records (lists) and watermarks (ints), as a source would send them:
    disorder within and beyond the watermark's lateness, watermarks that sometimes stand
    still or go back, and awkward floats."""
    record_type = draw(st.sampled_from([Tick, Trade]))
    symbols = ["AAPL", "MSFT", "TSLA"][: draw(st.integers(1, 3))]
    base = draw(st.sampled_from([0, T0, -7_000]))
    lateness = draw(st.integers(0, 10))
    disorder = draw(st.sampled_from([0, lateness, lateness * 3 + 10, 50]))
    awkward = st.sampled_from([1.0, 1.25, 100.1, -0.0, 0.0, 1e308, -math.inf, math.nan])
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from(symbols),
                st.sampled_from([0, 0, 1, 2, 3, 7, 25]),
                st.integers(0, disorder),
                awkward | st.floats(),
                awkward | st.floats(),
            ),
            min_size=1,
            max_size=60,
        )
    )
    records, nominal = [], base
    for symbol, step, jitter, price, size in raw:
        nominal += step
        t = nominal - jitter
        if record_type is Tick:
            records.append(Tick(symbol, t, price, size))
        else:
            records.append(Trade(t, size, "XNAS", symbol, price))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(records) - 1, 1)), max_size=20)))
    steps: list[Any] = []
    high = None
    for lo, hi in itertools.pairwise([0, *cuts, len(records)]):
        batch = records[lo:hi]
        if not batch:
            continue
        steps.append(batch)
        top = max(r.ts for r in batch)
        high = top if high is None else max(high, top)
        mark = draw(st.sampled_from(["source", "source", "none", "back"]))
        if mark == "source":
            steps.append(high - lateness)
        elif mark == "back":
            steps.append(high - lateness - draw(st.integers(0, 60)))
    return steps, record_type


def _has_nan(record: Any) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in msgspec.structs.astuple(record))


def _drive(config: WindowAggregate, steps: list[Any]) -> tuple[list[Any], list[Any], int]:
    """Results of each watermark and of EOF, the late records and the late count."""
    ctx = Context(node="bars")
    logic = config.build(ctx)
    fired = []
    for step in steps:
        if isinstance(step, int):
            fired.append(logic.on_watermark(step))
        else:
            assert logic.process(step) == []
    fired.append(logic.on_eof())
    assert logic.on_eof() == []
    return fired, ctx.side.get("late", []), ctx.counters.get("late", 0)


def _as_columns(steps: list[Any], record_type: type, data: Any) -> list[Any]:
    """The same steps with each batch cut again (no watermark between the pieces) and
    each piece sent as Columns, or now and then as records."""
    out: list[Any] = []
    for step in steps:
        if isinstance(step, int):
            out.append(step)
            continue
        inner = sorted(data.draw(st.sets(st.integers(1, max(len(step) - 1, 1)), max_size=3)))
        for lo, hi in itertools.pairwise([0, *inner, len(step)]):
            piece = step[lo:hi]
            if not piece:
                continue
            as_rows = data.draw(st.integers(0, 4)) == 0
            out.append(piece if as_rows else Columns.from_rows(record_type, piece))
    return out


@THOROUGH
@given(run=window_runs(), size=st.integers(1, 30), offset=st.integers(-50, 50), data=st.data())
def test_tumbling_ohlcv_over_columns_equals_over_rows(
    run: tuple[list[Any], type], size: int, offset: int, data: Any
) -> None:
    steps, record_type = run
    config = WindowAggregate(Tumbling(size, offset_ns=offset), OHLCV())
    logic = config.build(Context(node="bars"))
    assert getattr(logic, "accepts_columns", False) is True
    want_fired, want_late, want_count = _drive(config, steps)
    got_fired, got_late, got_count = _drive(config, _as_columns(steps, record_type, data))
    assert _bits(got_fired) == _bits(want_fired)  # to the bit, NaN and -0.0 included
    assert _bits(got_late) == _bits(want_late)
    assert [type(r) for r in got_late] == [record_type] * len(want_late)
    assert got_count == want_count == len(want_late)
    if not any(_has_nan(bar) for bars in want_fired for bar in bars):
        assert got_fired == want_fired


def test_tumbling_columns_late_records_go_to_the_side_output() -> None:
    config = WindowAggregate(Tumbling(10), OHLCV())
    ctx = Context(node="bars")
    logic = config.build(ctx)
    logic.process(_tick_columns([Tick("A", 12, 2.0, 1.0)]))
    assert logic.on_watermark(20) == [Bar("A", 10, 20, 2.0, 2.0, 2.0, 2.0, 1.0, 2.0, 1)]
    batch = [
        Tick("A", 19, 1.0, 1.0),  # window [10, 20) has fired: late
        Tick("B", 25, 3.0, 2.0),
        Tick("A", 5, 1.5, 1.0),  # late
        Tick("A", 20, 4.0, 1.0),
    ]
    logic.process(_tick_columns(batch))
    assert ctx.take_side() == {"late": [batch[0], batch[2]]}
    assert ctx.counters["late"] == 2
    logic.process(_tick_columns([Tick("C", 3, 1.0, 1.0)]))  # every record late
    assert ctx.take_side() == {"late": [Tick("C", 3, 1.0, 1.0)]}
    assert ctx.counters["late"] == 3
    assert logic.on_eof() == [
        Bar("A", 20, 30, 4.0, 4.0, 4.0, 4.0, 1.0, 4.0, 1),
        Bar("B", 20, 30, 3.0, 3.0, 3.0, 3.0, 2.0, 3.0, 1),
    ]


def test_tumbling_columns_without_a_needed_field_fail_as_rows_do() -> None:
    config = WindowAggregate(Tumbling(10), OHLCV())
    records = [NoSize("A", 1, 1.0)]
    with pytest.raises(AttributeError, match="size"):
        config.build(Context("bars")).process(records)
    with pytest.raises(AttributeError, match="size"):
        config.build(Context("bars")).process(Columns.from_rows(NoSize, records))


@pytest.mark.parametrize(
    "config",
    [
        WindowAggregate(Tumbling(10), Count()),
        WindowAggregate(Tumbling(10), Vwap()),
        WindowAggregate(Tumbling(10), OHLCV(), key=("symbol",)),
    ],
    ids=["count", "vwap", "tuple-key"],
)
def test_tumbling_without_a_columns_loop_does_not_accept_columns(config: Any) -> None:
    logic = config.build(Context("bars"))
    assert not getattr(logic, "accepts_columns", False)
    # called directly with columns anyway, it reads their rows
    ticks = [Tick("A", 1, 1.0, 2.0), Tick("A", 12, 3.0, 1.0), Tick("B", 5, 2.0, 2.0)]
    rows_logic = config.build(Context("bars"))
    assert logic.process(Columns.from_rows(Tick, ticks)) == rows_logic.process(ticks)
    assert logic.on_eof() == rows_logic.on_eof()


# ---------------------------------------------------------------------------------------
# Task: columns for the logics that read them, rows for every other


class Recording(OperatorLogic):
    def __init__(self, accepts_columns: bool | None) -> None:
        if accepts_columns is not None:
            self.accepts_columns = accepts_columns
        self.batches: list[Any] = []

    def process(self, batch: Any) -> list[Any]:
        self.batches.append(batch)
        return []


@pytest.mark.parametrize("accepts_columns", [None, False, True])
def test_task_converts_columns_for_logics_that_do_not_accept_them(
    accepts_columns: bool | None,
) -> None:
    ctx = Context(node="op")
    logic = Recording(accepts_columns)
    task = Task(OPERATOR, logic, ctx, 1, Emitter(ctx, {}))
    columns = _tick_columns(TICKS)
    task.on_batch(columns)
    task.on_batch(TICKS[:1])
    assert task.records_in == 4
    if accepts_columns:
        assert logic.batches[0] is columns
    else:
        assert type(logic.batches[0]) is list and logic.batches[0] == TICKS
    assert logic.batches[1] == TICKS[:1]


def test_sink_task_gets_rows() -> None:
    ctx = Context(node="out")
    logic = Collect().build(ctx)
    task = Task(SINK, logic, ctx, 1, Emitter(ctx, {}))
    task.on_batch(_tick_columns(TICKS))
    task.on_eof(0)
    assert task.result == TICKS


# ---------------------------------------------------------------------------------------
# Inline DAGs: a Columns source against the same batches as records


@dataclass(frozen=True)
class AsRows(Source):
    """The batches of ``source`` with every Columns batch turned into its records."""

    source: Generator

    output_type = Tick

    def build(self, ctx: Context) -> SourceLogic:
        return AsRowsLogic(self.source.build(ctx))


class AsRowsLogic(SourceLogic):
    def __init__(self, inner: SourceLogic) -> None:
        self.inner = inner

    def batches(self) -> Iterator[Any]:
        for item in self.inner.batches():  # type: ignore[union-attr]
            yield item.rows() if type(item) is Columns else item


GEN = Generator(
    symbols=7,
    count=3000,
    seed=3,
    batch=50,
    disorder_ns=40_000,
    late_fraction=0.05,
    late_by_ns=5_000_000,
    step_ns=10_000,
)


def _bars_dag(source: Source, config: WindowAggregate) -> Dag:
    dag = Dag("columns")
    ticks = dag.source("src", source, 2)
    bars = ticks.key_by("symbol").apply("bars", config, 2)
    bars.sink("out", Collect())
    bars.side("late").sink("late", Collect())
    return dag


@pytest.mark.parametrize("aggregation", [OHLCV(), Count(), Vwap()], ids=["ohlcv", "count", "vwap"])
@pytest.mark.parametrize("offset", [0, 250_000, -3])
def test_inline_dag_over_columns_equals_over_rows(aggregation: Any, offset: int) -> None:
    config = WindowAggregate(Tumbling(1_000_000, offset_ns=offset), aggregation)
    got = run_inline(_bars_dag(GEN, config))
    want = run_inline(_bars_dag(AsRows(GEN), config))
    out = got.collected("out")
    assert out and _bits(out) == _bits(want.collected("out"))
    late = got.collected("late")
    assert late and late == want.collected("late")
    assert all(type(t) is Tick for t in late)
    assert got.nodes["bars"].counters["late"] == want.nodes["bars"].counters["late"] == len(late)
    # Nothing is lost: every generated tick is in a window or late.
    if isinstance(aggregation, OHLCV):
        assert sum(bar.count for bar in out) + len(late) == GEN.count
    elif isinstance(aggregation, Count):
        assert sum(v.value for v in out) + len(late) == GEN.count


# ---------------------------------------------------------------------------------------
# The generator emits columns


@pytest.mark.parametrize("parallelism", [1, 3])
def test_generator_emits_tick_columns_and_watermarks(parallelism: int) -> None:
    config = Generator(symbols=5, count=203, batch=16, disorder_ns=30_000, seed=9)
    for replica in range(parallelism):
        logic = config.build(Context("gen", replica, parallelism))
        items = list(logic.batches())
        batches = items[0::2]
        assert all(type(b) is Columns and b.type is Tick for b in batches)
        assert all(type(w) is Watermark for w in items[1::2])
        assert all(0 < len(b) <= 16 for b in batches)
        rows = [t for b in batches for t in b.rows()]
        assert rows == generate(config, replica=replica, parallelism=parallelism)
        high = None
        for batch, mark in zip(batches, items[1::2], strict=True):
            top = max(batch.column("ts"))
            high = top if high is None else max(high, top)
            assert mark == Watermark(high - config.lateness)


def test_generate_returns_ticks() -> None:
    ticks = generate(symbols=3, count=10, seed=1)
    assert type(ticks) is list and len(ticks) == 10
    assert all(type(t) is Tick for t in ticks)


# ---------------------------------------------------------------------------------------
# Regressions from review


def test_keyhash_columns_survive_the_cache_clearing_mid_batch(monkeypatch) -> None:
    import partitioning.keyhash as keyhash_module

    monkeypatch.setattr(keyhash_module, "CACHE_LIMIT", 4)
    rows = [Tick(f"S{i}", i, 1.0, 1.0) for i in range(10)] * 2
    for warm in (False, True):
        by_rows = KeyHash("symbol").build(2, 0)
        by_columns = KeyHash("symbol").build(2, 0)
        if warm:
            by_columns.split(_tick_columns(rows[:3]))
        expected = by_rows.split(rows)
        got = by_columns.split(_tick_columns(rows))
        assert [(r, g.rows()) for r, g in got] == expected
        assert len(by_columns._cache) <= 4


def test_keyhash_splits_any_sequence_of_records_not_only_lists() -> None:
    ticks = (Tick("a", 1, 1.0, 1.0), Tick("b", 2, 1.0, 1.0))
    groups = KeyHash("symbol").build(1, 0).split(ticks)  # type: ignore[arg-type]
    assert [t for _, group in groups for t in group] == list(ticks)


class _RecordsOnly:
    """A user's splitter that knows nothing of Columns."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def split(self, batch: list[Any]) -> list[tuple[int, list[Any]]]:
        self.seen.append(batch)
        return [(0, batch[:])]


def test_a_splitter_without_accepts_columns_gets_records() -> None:
    from engine.task import Output

    class Sender:
        def __init__(self) -> None:
            self.got: list[Any] = []

        def extend(self, records: Any) -> None:
            self.got.append(records)

    splitter, sender = _RecordsOnly(), Sender()
    Output(splitter, {0: sender}).emit(_tick_columns(TICKS))
    assert splitter.seen == [TICKS]
    assert sender.got == [TICKS]


class Checked(msgspec.Struct):
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


def test_columns_refuse_a_type_with_post_init() -> None:
    with pytest.raises(DagError, match=r"would skip Checked.__post_init__"):
        Columns(Checked, ([1],))
    codec = MsgpackCodec(Checked)  # lists of records still work, validated on decode
    with pytest.raises(RecordError, match="negative"):
        codec.decode(msgspec.msgpack.encode([{"value": -1}]))


class FloatTimed(msgspec.Struct):
    symbol: str
    ts: float
    price: float
    size: float


def test_tumbling_columns_with_a_nan_time_match_the_rows() -> None:
    records = [
        FloatTimed("a", 5.0, 1.0, 1.0),
        FloatTimed("a", math.nan, 2.0, 1.0),
        FloatTimed("a", 25.0, 3.0, 1.0),
    ]
    config = WindowAggregate(Tumbling(10), OHLCV(), input_type=FloatTimed)
    results = []
    for batch in (records, Columns.from_rows(FloatTimed, records)):
        ctx = Context("bars")
        logic = config.build(ctx)
        logic.on_watermark(15)
        logic.process(batch)
        results.append((repr(logic.on_eof()), ctx.counters, repr(ctx.take_side())))
    assert results[0] == results[1]
