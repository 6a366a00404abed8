"""Dictionary-encoded string columns (engine/strings.py, engine/_strings.c).

The C routines are checked against the Python versions in engine/strings.py, the codec
against the batches it was given: a channel's frames, decoded in order by another codec,
give back the same columns, with one shared str object per distinct string. The tests
that need the C extension skip, saying why, where it is not built.
"""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobs import Order, Orders

import engine.batch as batch
import engine.strings as strings
from engine import Dag, run
from engine.batch import MsgpackCodec
from engine.columns import Columns
from engine.errors import RecordError
from engine.records import Tick
from engine.testing import run_inline
from operators import Collect

native = pytest.importorskip(
    "engine._strings", reason="engine._strings is not built (no C compiler)"
)

PROPERTY = settings(max_examples=200, deadline=None)
SYMBOLS = st.sampled_from(["AAPL", "MSFT", "IBM", "GOOG", "", "é", "AAPL "])


class Quote(msgspec.Struct, array_like=True, frozen=True):
    venue: str
    symbol: str
    bid: float


def ticks(symbols: list[str]) -> Columns:
    n = len(symbols)
    return Columns(Tick, (list(symbols), list(range(n)), [1.0] * n, [2.0] * n))


@PROPERTY
@given(
    column=st.lists(st.one_of(SYMBOLS, SYMBOLS, SYMBOLS, st.integers(0, 3)), max_size=40),
    known=st.lists(SYMBOLS, unique=True),
    limit=st.integers(0, 10),
    as_tuple=st.booleans(),
)
def test_encode_in_c_is_the_python_encode(
    column: list[Any], known: list[str], limit: int, as_tuple: bool
) -> None:
    column_in: Any = tuple(column) if as_tuple else column
    known = known[:limit]
    ids_c = {s: i for i, s in enumerate(known)}
    ids_py = dict(ids_c)
    got = native.encode(column_in, ids_c, limit)
    assert got == strings.encode(column_in, ids_py, limit)
    assert ids_c == ids_py  # updated alike, or left alike when declined
    if got is not None:
        new, indices = got
        table = [*known, *new]
        assert native.take(table, indices) == list(column)


@PROPERTY
@given(table=st.lists(SYMBOLS, max_size=8), raw=st.binary(max_size=20))
def test_take_in_c_is_the_python_take(table: list[str], raw: bytes) -> None:
    try:
        expected: Any = strings.take(table, raw)
    except ValueError:
        with pytest.raises(ValueError):
            native.take(table, raw)
    else:
        assert native.take(table, raw) == expected


def test_encode_declines_what_it_cannot_encode_and_refuses_bad_arguments() -> None:
    ids = {"A": 0}
    assert native.encode(iter(["A"]), ids, 10) is None  # not a list or tuple
    assert native.encode(["B", "C", 1], ids, 10) is None and ids == {"A": 0}
    assert native.encode(["B", "C"], ids, 2) is None and ids == {"A": 0}  # table full
    with pytest.raises(ValueError, match="outside"):
        native.encode(["A"], ids, 70_000)
    with pytest.raises(ValueError, match="outside"):
        native.encode(["A"], {"A": 5}, 3)
    with pytest.raises(ValueError, match="outside"):
        strings.encode(["A"], {"A": 5}, 3)
    with pytest.raises(TypeError, match="ids must be a dict"):
        native.encode(["A"], [], 10)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        native.take(["A"], b"\x00")


@PROPERTY
@given(batches=st.lists(st.lists(SYMBOLS, max_size=30), max_size=12))
def test_a_channels_frames_decode_in_order_to_the_same_columns(batches: list[list[str]]) -> None:
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    seen: dict[str, str] = {}
    for symbols in batches:
        sent = ticks(symbols)
        got = receiver.decode(sender.encode(sent))
        assert isinstance(got, Columns) and got == sent and got.data[0] == sent.data[0]
        for s in got.data[0]:  # one str object per distinct string, frame after frame
            assert seen.setdefault(s, s) is s


def test_string_columns_travel_as_table_entries_and_indices() -> None:
    sender = MsgpackCodec(Quote, dictionary=True)
    quotes = Columns(Quote, (["X", "X", "Y"], ["A", "B", "A"], [1.0, 2.0, 3.0]))
    venue, symbol, _ = msgspec.msgpack.decode(sender.encode(quotes))["c"]
    assert (venue["base"], venue["new"], venue["idx"]) == (0, ["X", "Y"], b"\0\0\0\0\1\0")
    assert (symbol["base"], symbol["new"], symbol["idx"]) == (0, ["A", "B"], b"\0\0\1\0\0\0")
    assert venue["table"] != symbol["table"]
    again = msgspec.msgpack.decode(sender.encode(quotes))["c"][0]
    assert (again["table"], again["base"], again["new"]) == (venue["table"], 2, [])
    # Without a dictionary, string columns go as msgpack arrays of str.
    plain = msgspec.msgpack.decode(MsgpackCodec(Quote).encode(quotes))["c"]
    assert plain[:2] == [["X", "X", "Y"], ["A", "B", "A"]]


def test_a_column_that_outgrows_its_table_goes_as_it_is(monkeypatch) -> None:
    monkeypatch.setattr(strings, "MAX_ENTRIES", 4)
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    for symbols in (["a", "b", "a"], ["c", "d", "e"], ["a"], ["a", "f"]):
        payload = sender.encode(ticks(symbols))
        column = msgspec.msgpack.decode(payload)["c"][0]
        got = receiver.decode(payload)
        assert isinstance(got, Columns) and got.data[0] == symbols
    assert column == ["a", "f"]  # plain since the table would have passed 4 strings


def test_a_frame_out_of_order_or_decoded_twice_is_an_error_not_wrong_rows() -> None:
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    first, second = sender.encode(ticks(["a", "b"])), sender.encode(ticks(["c", "a"]))
    with pytest.raises(
        RecordError, match=r"table of 2 strings this decoder does not have \(it has 0"
    ):
        receiver.decode(second)
    receiver.decode(first)
    receiver.decode(second)
    with pytest.raises(RecordError, match="out of order, decoded twice"):
        receiver.decode(second)
    assert receiver.decode(first).data[0] == ["a", "b"]  # base 0: a new table, from scratch


def test_frames_of_two_channels_through_one_decoder_are_an_error_not_wrong_rows() -> None:
    a, b, receiver = (
        MsgpackCodec(Tick, dictionary=True),
        MsgpackCodec(Tick, dictionary=True),
        MsgpackCodec(Tick),
    )
    receiver.decode(a.encode(ticks(["AAPL", "MSFT"])))
    receiver.decode(b.encode(ticks(["IBM", "GOOG"])))  # a new table: b's
    with pytest.raises(RecordError, match="from two channels"):
        receiver.decode(a.encode(ticks(["AAPL"])))


def test_a_batch_that_fails_to_encode_leaves_the_channel_usable() -> None:
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    receiver.decode(sender.encode(ticks(["a"])))
    bad_price = Columns(Tick, (["b"], [1], [object()], [1.0]))
    with pytest.raises(RecordError, match="cannot encode a batch of"):
        sender.encode(bad_price)  # no frame; "b" went into the table all the same
    with pytest.raises(RecordError, match="cannot encode a batch of"):
        sender.encode(ticks(["c", "\ud800"]))  # a lone surrogate: not UTF-8
    assert receiver.decode(sender.encode(ticks(["b", "a"]))).data[0] == ["b", "a"]


def test_a_bad_value_in_a_string_column_still_fails_with_a_record_error() -> None:
    sender, receiver = MsgpackCodec(Tick, dictionary=True), MsgpackCodec(Tick)
    receiver.decode(sender.encode(ticks(["a"])))
    bad = Columns(Tick, (["a", 7], [1, 2], [1.0, 1.0], [1.0, 1.0]))
    with pytest.raises(RecordError, match="cannot decode a batch of"):
        receiver.decode(sender.encode(bad))  # sent as it is: msgspec's typed decoder refuses
    assert receiver.decode(sender.encode(ticks(["a", "b"]))).data[0] == ["a", "b"]


def test_a_pickled_codec_keeps_its_mode_and_starts_with_empty_tables() -> None:
    sender = MsgpackCodec(Tick, dictionary=True)
    sender.encode(ticks(["a"]))
    copy = pickle.loads(pickle.dumps(sender))
    assert copy.dictionary
    wire = msgspec.msgpack.decode(copy.encode(ticks(["a"])))["c"][0]
    assert wire["base"] == 0


def test_without_the_extension_strings_go_as_they_are_and_tables_still_decode(
    monkeypatch,
) -> None:
    payload = MsgpackCodec(Tick, dictionary=True).encode(ticks(["a", "b", "a"]))
    monkeypatch.setattr(strings, "NATIVE", False)
    monkeypatch.setattr(batch, "_take", strings.take)
    plain = MsgpackCodec(Tick, dictionary=True).encode(ticks(["a"]))
    assert msgspec.msgpack.decode(plain)["c"][0] == ["a"]
    got = MsgpackCodec(Tick).decode(payload)
    assert isinstance(got, Columns) and got.data[0] == ["a", "b", "a"]


def test_string_columns_cross_processes_intact_whether_they_repeat_or_not() -> None:
    """Through worker processes, a keyed edge to two replicas: venues repeat (they go by
    table); ids never do. One channel carries 16,000 of them (its table holds them all),
    the other 64,000 (its table fills, and they go as they are from then on)."""

    def dag() -> Dag:
        dag = Dag("orders")
        dag.source("src", Orders(80_000)).key_by("venue").sink("out", Collect(), parallelism=2)
        return dag

    result = run(dag(), timeout=60)
    got = sorted(result.collected("out"), key=lambda o: o.qty)
    assert got == [Order(f"V{i % 5}", f"order-{i}", i) for i in range(80_000)]
    assert sorted(run_inline(dag()).collected("out"), key=lambda o: o.qty) == got
