"""The CSV source's C path (operators/_csvticks.c): tick rows straight into columns.

Its contract: for a block of whole lines it returns the columns of exactly the rows the
reference loop (``parse_lines``) reads, with the same values to the bit, or None; and the
CSV source gives the same ticks, watermarks and bad-row reports with it as without it.
"""

from __future__ import annotations

import csv
import gc
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators.csvio
import operators.csvsource
from engine.records import Tick
from operators.csvparse import NATIVE, parse_columns, parse_lines
from operators.sources import CsvTicks
from tests.test_sources import HEADER, LINE, drain, row, ticks_of, write

pytestmark = pytest.mark.skipif(not NATIVE, reason="operators._csvticks is not built")


def exact(ticks):
    """Ticks as comparable tuples that tell -0.0 from 0.0 (float.hex)."""
    return [(t.symbol, t.ts, t.price.hex(), t.size.hex()) for t in ticks]


def as_ticks(columns):
    return [Tick(*values) for values in zip(*columns, strict=True)]


def reference(lines):
    good: list[Tick] = []
    bad: list[str] = []
    parse_lines(lines, good, bad)
    return good, bad


@settings(max_examples=500, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=8), st.booleans(), st.booleans())
def test_reads_only_what_the_reference_reads_with_the_same_values(lines, crlf, final_newline):
    lines = [line.replace("\n", "") for line in lines]
    block = ("\r\n" if crlf else "\n").join(lines) + ("\n" if final_newline else "")
    columns = parse_columns(block.encode())
    if columns is not None:  # (None: the block goes to the msgspec path, then the reference)
        good, bad = reference(block.removesuffix("\n").split("\n") if block else [])
        assert bad == []
        assert exact(as_ticks(columns)) == exact(good)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ABC", "X", "é", "a b", "q'", "\\"]),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.floats(min_value=5e-324, allow_infinity=False),
        ),
        max_size=30,
    )
)
def test_reads_every_row_the_generator_or_repr_writes(rows):
    """What a well-formed file holds (repr floats, 18-digit times) takes the C path, exactly."""
    text = "".join(f"{s},{t},{p!r},{z!r}\n" for s, t, p, z in rows)
    columns = parse_columns(text.encode())
    assert columns is not None
    assert exact(as_ticks(columns)) == exact([Tick(*r) for r in rows])


@pytest.mark.parametrize(
    "line",
    [
        "A,+1,1,1",  # valid for int(), outside the strict grammar: the fallback reads it
        "A, 1,1,1",
        "A,1_0,1,1",
        "A,1,+1,1",
        "A,1,1 ,1",
        "A,1,inf,1",
        "A,1,nan,1",
        "A,1,1e400,1",  # reads as inf: the reference reports it
        "A,1,1,0",
        "A,1,1,-1",
        "A,1,1,1e-400",  # reads as 0.0
        "A,9223372036854775808,1,1",  # past int64: the reference reports it
        "A,-9223372036854775809,1,1",
        '"A",1,1,1',  # quoted: the format has none, the reference reports it
        'A"B,1,1,1',
        "A,00000000000000000001,1,1",  # 20 digits
        "A,1,1",
        "A,1,1,1,1",
        ",1,1,1",
        "A\r,1,1,1",
        "A,1,1,1\r\r",
        "A,1,.,1",
        "A,1,1e,1",
        "A,1,1.5e+,1",
        "A,1," + "1" * 41 + ",1",
    ],
)
def test_refuses_a_block_with_any_line_outside_the_grammar(line):
    block = f"A,1,1,1\n{line}\nB,2,2,2\n".encode()
    assert parse_columns(block) is None


def plain(columns):
    """The columns as lists (the C parser packs times, prices and sizes into arrays)."""
    return None if columns is None else tuple(list(column) for column in columns)


def test_edges_of_a_block():
    assert plain(parse_columns(b"")) == ([], [], [], [])
    assert parse_columns(b"\n") is None  # one empty line: a bad row
    assert parse_columns(b"A,1,1,1\n\nB,2,2,2\n") is None
    assert parse_columns(b"A,1,1,1\n\n") is None  # an empty line before the final newline
    assert plain(parse_columns(b"A,-0,-0,5.\r\nB,007,.5,1E2\r")) == (
        ["A", "B"],
        [0, 7],
        [-0.0, 0.5],
        [5.0, 100.0],
    )
    assert parse_columns(b"A,1,1,1\xff\n") is None  # not a number
    assert parse_columns(b"\xff\xfe,1,1,1\n") is None  # not UTF-8: the fallback reports it
    assert plain(parse_columns(b"\xc3\xa9,1,1,1\n")) == (["é"], [1], [1.0], [1.0])
    assert plain(parse_columns(b"A,9223372036854775807,1,1\nB,-9223372036854775808,1,1\n")) == (
        ["A", "B"],
        [2**63 - 1, -(2**63)],
        [1.0, 1.0],
        [1.0, 1.0],
    )
    with pytest.raises(TypeError):
        parse_columns(bytearray(b"A,1,1,1\n"))  # type: ignore[arg-type]


def test_numbers_come_packed_as_a_channel_decodes_them():
    columns = parse_columns(b"A,1,2.5,3\nB,2,3.5,4\n")
    assert columns is not None
    symbols, times, prices, sizes = columns
    assert type(symbols) is list
    assert [(type(c), c.typecode) for c in (times, prices, sizes)] == [
        (array, "q"),
        (array, "d"),
        (array, "d"),
    ]


def test_rows_of_a_symbol_share_one_str_and_the_table_stays_bounded():
    symbols, *_ = parse_columns(b"".join(b"S%d,1,1,1\n" % (i % 3) for i in range(30)))
    assert len({id(s) for s in symbols}) == 3
    # Far more symbols than the table's 4,096 entries: collisions replace entries, and every
    # row still reads its own symbol.
    many = [f"K{i:06d}" for i in range(20_000)]
    block = "".join(f"{s},1,1,1\n" for s in many).encode()
    for _ in range(2):
        got, *_ = parse_columns(block)
        assert got == many
    gc.collect()
    before = sys.getrefcount(got[0])
    parse_columns(block)
    after = sys.getrefcount(got[0])  # (outside the assert, whose rewriting holds got[0])
    assert after == before  # a call keeps no reference to its rows


def file_of(tmp_path, body: str) -> str:
    return write(tmp_path / "t.csv", HEADER + body)


def test_the_source_gives_the_same_ticks_and_watermarks_with_and_without_it(tmp_path, monkeypatch):
    ticks = [Tick(f"S{i % 7}", 1_000 * i + i % 3, 100.0 + i / 8, 1.0 + i % 5) for i in range(9_000)]
    lines = [row(t) for t in ticks]
    lines[4_321] = "S1,+43210,1,1\n"  # one line only the fallback reads
    path = file_of(tmp_path, "".join(lines))
    for batch in (1, 1000, 4096):
        with_c = drain(CsvTicks(path, batch=batch, lateness_ns=5))
        monkeypatch.setattr(operators.csvsource, "parse_columns", lambda block: None)
        without = drain(CsvTicks(path, batch=batch, lateness_ns=5))
        monkeypatch.undo()
        assert with_c[1] == without[1]  # watermarks
        got = [t for b in with_c[0] for t in b]
        assert exact(got) == exact([t for b in without[0] for t in b])
        assert [len(b) for b in with_c[0]] == [len(b) for b in without[0]]
    assert got[4_321] == Tick("S1", 43210, 1.0, 1.0)


def test_a_row_only_the_reference_reads_after_packed_blocks_goes_on_as_a_list(
    tmp_path, monkeypatch
):
    """Blocks the C parser packed, then one only the reference loop reads (a time with a
    ``+`` sign), then packed ones again: every tick as the reference reads it, in order."""
    monkeypatch.setattr(operators.csvio, "CHUNK", 64)  # a block of two or three lines
    lines = [f"A,{i},1.5,2\n" for i in range(30)]
    lines[17] = f"B,+{2**60},1,1\n"
    path = file_of(tmp_path, "".join(lines))
    for batch in (1, 4, 7, 100):
        got = ticks_of(CsvTicks(path, batch=batch))
        good, bad = reference([line.rstrip("\n") for line in lines])
        assert bad == []
        assert exact(got) == exact(good)


def test_a_bad_row_is_still_reported_with_its_line(tmp_path):
    body = "".join(f"A,{i},1,1\n" for i in range(5_000)) + "A,1,1,0\n"
    path = file_of(tmp_path, body)
    dead = tmp_path / "dead.csv"
    got = ticks_of(CsvTicks(path, dead_letter=str(dead)))
    assert len(got) == 5_000
    with dead.open(newline="") as f:
        assert list(csv.reader(f))[1:] == [["5002", "A,1,1,0", "size '0' is not positive"]]
