"""Packed numeric columns (engine/numbers.py, engine/_numbers.c).

The C ``pack`` is checked against the Python version in engine/numbers.py; the codec
against the batches it was given: what a channel packs decodes to the same values, bit for
bit, as arrays whose items are exactly the field's type, and what it does not pack goes
as msgpack, checked and converted as it always was. The tests that need the C extension
skip, saying why, where it is not built.
"""

from __future__ import annotations

import math
import pickle
import struct
from array import array
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.numbers as numbers
from engine import Dag, run
from engine.batch import MsgpackCodec, PickleCodec
from engine.columns import Columns
from engine.errors import RecordError
from engine.records import Tick
from engine.testing import run_inline
from operators import Collect, Generator

native = pytest.importorskip(
    "engine._numbers", reason="engine._numbers is not built (no C compiler)"
)

PROPERTY = settings(max_examples=200, deadline=None)


class Big(int):
    pass


class Fraction(float):
    pass


_VALUES = st.one_of(
    st.floats(),
    st.floats(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),
    st.booleans(),
    st.builds(Big, st.integers(-5, 5)),
    st.builds(Fraction, st.floats(allow_nan=False)),
    st.none(),
)


def _bits(values: Any) -> list[Any]:
    """Floats by their bits (-0.0 and NaN payloads count), anything else with its type."""
    return [struct.pack("<d", v) if type(v) is float else (type(v), v) for v in values]


def _values(records: list[Any]) -> list[Any]:
    return [v for r in records for v in msgspec.structs.astuple(r)]


@PROPERTY
@given(column=st.lists(_VALUES, max_size=30), as_tuple=st.booleans(), code=st.sampled_from("qd"))
def test_pack_in_c_is_the_python_pack(column: list[Any], as_tuple: bool, code: str) -> None:
    column_in: Any = tuple(column) if as_tuple else column
    assert native.pack(column_in, code) == numbers.pack(column_in, code)


@PROPERTY
@given(st.lists(st.floats(), max_size=30))
def test_floats_pack_to_their_bits(column: list[float]) -> None:
    packed = native.pack(column, "d")
    assert packed == b"".join(struct.pack("<d", v) for v in column)
    assert _bits(numbers.unpack(packed, "d")) == _bits(column)


def test_pack_declines_what_the_typed_decoder_must_see() -> None:
    assert native.pack([1, True], "q") is None  # a bool is refused in an int field
    assert native.pack([1, 2**63], "q") is None  # beyond int64: msgpack carries it
    assert native.pack([1.0, 2], "d") is None  # an int in a float field: converted there
    assert native.pack([Big(1)], "q") is None and native.pack([Fraction(1)], "d") is None
    assert native.pack(iter([1.0]), "d") is None and native.pack(array("d", [1.0]), "d") is None
    assert native.pack([], "q") == b"" and native.pack((), "d") == b""
    with pytest.raises(ValueError, match="code must be"):
        native.pack([1], "i")
    with pytest.raises(ValueError, match="code must be"):
        numbers.pack([1], "i")
    with pytest.raises(TypeError):
        native.pack([1])  # type: ignore[call-arg]


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(),
            st.floats(),
        ),
        max_size=30,
    )
)
def test_a_packed_batch_decodes_to_the_same_values_as_arrays(
    rows: list[tuple[str, int, float, float]],
) -> None:
    codec = MsgpackCodec(Tick)
    batch = Columns(Tick, [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 4)
    got = codec.decode(codec.encode(batch))
    assert isinstance(got, Columns)
    _, times, prices, sizes = got.data
    assert type(times) is array and times.typecode == "q"
    assert type(prices) is array and prices.typecode == "d" and type(sizes) is array
    for mine, theirs in zip(got.data, batch.data, strict=True):
        assert _bits(mine) == _bits(theirs)
    # What any reader sees: the same records, of the same types.
    assert _bits(_values(got.rows())) == _bits(_values(batch.rows()))


def test_the_frame_carries_8_bytes_a_value() -> None:
    batch = Columns(Tick, (["A", "B"], [1, -2], [1.5, -0.0], [2.0, math.inf]))
    wire = msgspec.msgpack.decode(MsgpackCodec(Tick).encode(batch))["c"]
    assert wire[0] == ["A", "B"]
    assert wire[1] == struct.pack("<qq", 1, -2)
    assert wire[2] == struct.pack("<dd", 1.5, -0.0)
    assert wire[3] == struct.pack("<dd", 2.0, math.inf)


def test_values_that_do_not_pack_go_as_msgpack_and_are_checked_as_before() -> None:
    codec = MsgpackCodec(Tick)
    # An int in a float column is converted; an int column past int64 still decodes.
    got = codec.decode(codec.encode(Columns(Tick, (["A"], [2**63 + 1], [3], [4.0]))))
    assert isinstance(got, Columns)
    assert list(got.data[1]) == [2**63 + 1] and type(got.data[1]) is list
    assert got.data[2] == [3.0] and type(got.data[2][0]) is float
    assert type(got.data[3]) is array
    flagged = codec.encode(Columns(Tick, (["A"], [True], [1.0], [1.0])))
    with pytest.raises(RecordError, match=r"Expected `int`, got `bool`"):
        codec.decode(flagged)


@pytest.mark.parametrize("data", [b"\7", bytearray(1), memoryview(array("d", [1.5]))])
def test_bytes_in_a_numeric_column_are_refused_not_read_as_packed_values(data: Any) -> None:
    codec = MsgpackCodec(Tick)
    for columns in ((["A"], data, [1.0], [1.0]), (["A"], [1], data, [1.0])):
        with pytest.raises(RecordError, match=r"cannot encode .*got (bytes|bytearray|memoryview)"):
            codec.encode(Columns(Tick, columns))


def test_a_malformed_packed_column_is_a_record_error() -> None:
    codec = MsgpackCodec(Tick)
    odd = msgspec.msgpack.encode({"c": [["A"], b"\0" * 7, [1.0], [1.0]]})
    with pytest.raises(RecordError, match=r"column 1: a packed column of 7 bytes"):
        codec.decode(odd)
    short = msgspec.msgpack.encode(
        {"c": [["A", "B"], struct.pack("<q", 1), [1.0, 2.0], [1.0, 2.0]]}
    )
    with pytest.raises(RecordError, match=r"column 'ts' has 1 values, column 'symbol' has 2"):
        codec.decode(short)
    typed = msgspec.msgpack.encode({"c": [["A"], "text", [1.0], [1.0]]})
    with pytest.raises(RecordError, match=r"cannot decode a batch"):
        codec.decode(typed)


def test_decoded_arrays_go_on_through_every_codec() -> None:
    codec = MsgpackCodec(Tick)
    batch = Columns(Tick, (["A", "B"], [1, 2], [1.5, 2.5], [3.0, 4.0]))
    decoded = codec.decode(codec.encode(batch))
    assert isinstance(decoded, Columns)
    # Re-encoded as they are (packed already), through msgpack and pickle alike.
    assert codec.encode(decoded) == codec.encode(batch)
    assert codec.decode(codec.encode(decoded)) == batch
    assert PickleCodec().decode(PickleCodec().encode(decoded)) == batch
    # An array of another type code goes as its values.
    other = Columns(Tick, (["A"], array("i", [7]), array("f", [0.5]), [1.0]))
    assert codec.decode(codec.encode(other)) == Columns(Tick, (["A"], [7], [0.5], [1.0]))
    # Sliced and taken, as windows and routers do.
    assert decoded[1:].rows() == batch[1:].rows()
    assert decoded.take([1, 0]).rows() == batch.take([1, 0]).rows()
    assert pickle.loads(pickle.dumps(decoded)) == batch


def test_without_the_extension_numbers_go_as_msgpack_and_packed_ones_still_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = Columns(Tick, (["A"], [1], [1.5], [2.0]))
    packed = MsgpackCodec(Tick).encode(batch)
    monkeypatch.setattr(numbers, "NATIVE", False)
    plain = MsgpackCodec(Tick).encode(batch)
    assert msgspec.msgpack.decode(plain)["c"] == [["A"], [1], [1.5], [2.0]]
    for payload in (plain, packed):
        assert MsgpackCodec(Tick).decode(payload) == batch


def test_packed_columns_cross_processes_to_the_records_made() -> None:
    """Generator ticks (Columns batches) through a worker process and a channel, against
    the same DAG run in this process without any codec."""

    def dag() -> Dag:
        dag = Dag("ticks")
        dag.source("src", Generator(symbols=5, count=3_000, seed=3)).sink("out", Collect())
        return dag

    got = run(dag(), timeout=60).collected("out")
    assert len(got) == 3_000
    assert _bits(_values(got)) == _bits(_values(run_inline(dag()).collected("out")))
