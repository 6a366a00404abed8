"""Sources: the synthetic Generator and the CSV tick reader, driven in-process."""

from __future__ import annotations

import csv
import itertools
import os
import pickle
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import operators.csvio
from engine.errors import DagError, RecordError
from engine.operator import Context, Watermark
from engine.records import Tick
from operators.csvio import RangeReader, split_points
from operators.csvparse import parse_block, parse_int, parse_lines
from operators.sources import CsvTicks, Generator, generate

# --- helpers ---------------------------------------------------------------------------


def drain(config, replica=0, parallelism=1):
    """Run a source replica to the end, as the engine does (its stream, then ``close()``):
    (batches, watermarks in order, items, counters)."""
    ctx = Context(node="src", replica=replica, parallelism=parallelism)
    logic = config.build(ctx)
    items = list(logic.batches())
    logic.close()
    batches = [list(item) for item in items if not isinstance(item, Watermark)]
    marks = [item.ts for item in items if isinstance(item, Watermark)]
    return batches, marks, items, ctx.counters


def ticks_of(config, replica=0, parallelism=1):
    return [t for batch in drain(config, replica, parallelism)[0] for t in batch]


def check_watermarks(items, lateness):
    """One watermark right after every batch, equal to max ts so far - lateness."""
    high = None
    assert items, "no output"
    for i, item in enumerate(items):
        if i % 2 == 0:
            assert not isinstance(item, Watermark) and item, f"item {i} should be a batch"
            top = max(t.ts for t in item)
            high = top if high is None else max(high, top)
        else:
            assert item == Watermark(high - lateness)


def write(path: Path, text: str) -> str:
    path.write_bytes(text.encode())
    return str(path)


def row(t: Tick) -> str:
    return f"{t.symbol},{t.ts},{t.price!r},{t.size!r}\n"


HEADER = "symbol,ts,price,size\n"


# --- Generator -------------------------------------------------------------------------


def test_generator_is_deterministic_and_seeded():
    a = generate(symbols=7, count=500, seed=3, disorder_ns=5_000, late_fraction=0.1)
    b = generate(symbols=7, count=500, seed=3, disorder_ns=5_000, late_fraction=0.1)
    c = generate(symbols=7, count=500, seed=4, disorder_ns=5_000, late_fraction=0.1)
    assert a == b
    assert a != c
    assert len(a) == 500


@pytest.mark.parametrize("parallelism", [1, 2, 3, 4, 7, 12])
@pytest.mark.parametrize("symbols,count", [(1, 10), (10, 1000), (7, 1003), (100, 250)])
def test_generator_replicas_union_is_the_single_stream(parallelism, symbols, count):
    config = Generator(
        symbols=symbols, count=count, seed=9, disorder_ns=3_000, late_fraction=0.05, batch=17
    )
    whole = generate(config)
    parts = [ticks_of(config, r, parallelism) for r in range(parallelism)]
    assert Counter(t for part in parts for t in part) == Counter(whole)
    assert sum(map(len, parts)) == count
    for r, part in enumerate(parts):
        assert part == generate(config, replica=r, parallelism=parallelism)
        # a replica owns whole symbols, so each symbol's walk is complete in one place
        assert {int(t.symbol[1:]) % parallelism for t in part} <= {r}


def test_generator_ticks_shape():
    config = Generator(symbols=5, count=5_000, seed=1, step_ns=1_000, start_ns=10**18)
    ticks = generate(config)
    assert [t.symbol for t in ticks[:6]] == ["S0000", "S0001", "S0002", "S0003", "S0004", "S0000"]
    assert [t.ts for t in ticks] == [10**18 + i * 1_000 for i in range(5_000)]
    last: dict[str, float] = {}
    for t in ticks:
        assert type(t) is Tick
        assert t.price > 0 and round(t.price * 100) / 100 == t.price  # whole cents
        assert t.size > 0 and t.size == int(t.size) and isinstance(t.size, float)
        if t.symbol in last:  # a walk in steps of at most 3 cents
            assert abs(round(t.price * 100) - round(last[t.symbol] * 100)) <= 3
        last[t.symbol] = t.price
    assert len({t.price for t in ticks}) > 50
    assert len({t.size for t in ticks}) > 5


def test_generator_symbol_names_widen():
    assert Generator(symbols=12_345).symbol_names()[-1] == "S12344"


def test_generator_disorder_is_bounded_and_prices_do_not_depend_on_it():
    plain = generate(symbols=10, count=2_000, seed=5, step_ns=100)
    shaken = generate(symbols=10, count=2_000, seed=5, step_ns=100, disorder_ns=777)
    assert [(t.symbol, t.price, t.size) for t in plain] == [
        (t.symbol, t.price, t.size) for t in shaken
    ]
    shifts = [p.ts - s.ts for p, s in zip(plain, shaken, strict=True)]
    assert min(shifts) == 0 and max(shifts) == 777
    assert len(set(shifts)) > 100


@pytest.mark.parametrize("parallelism", [1, 3])
def test_generator_watermarks_one_per_batch(parallelism):
    config = Generator(symbols=10, count=1_005, batch=100, disorder_ns=5_000, lateness_ns=7_000)
    for r in range(parallelism):
        batches, marks, items, _ = drain(config, r, parallelism)
        check_watermarks(items, 7_000)
        assert marks == sorted(marks)
        assert all(len(b) == 100 for b in batches[:-1]) and 0 < len(batches[-1]) <= 100


def test_generator_default_lateness_makes_nothing_late():
    config = Generator(symbols=13, count=3_000, batch=50, disorder_ns=40_000, step_ns=1_000)
    assert config.lateness == 40_000
    for parallelism in (1, 4):
        for r in range(parallelism):
            mark = None
            for item in config.build(Context("src", r, parallelism)).batches():
                if isinstance(item, Watermark):
                    mark = item.ts
                elif mark is not None:
                    assert min(t.ts for t in item) > mark


def test_generator_late_fraction_makes_late_ticks():
    params = dict(symbols=10, count=20_000, batch=100, step_ns=1_000, disorder_ns=2_000)
    config = Generator(**params, late_fraction=0.02, late_by_ns=500_000)
    on_time = generate(**params)
    ctx = Context(node="src")
    injected = []
    index = 0
    mark = None
    for item in config.build(ctx).batches():
        if isinstance(item, Watermark):
            mark = item.ts
            continue
        for t in item:
            shift = on_time[index].ts - t.ts
            assert shift in (0, 2_000 + 500_000)  # lateness (= disorder) + late_by_ns
            if shift:
                injected.append(index)
                if on_time[index].ts >= config.start_ns + 500_000 + 100 * 1_000 + 2_000:
                    assert mark is not None and t.ts <= mark, "an injected tick is not late"
            index += 1
    assert ctx.counters["late_injected"] == len(injected)
    assert 250 < len(injected) < 550  # 2% of 20,000, give or take


def test_generator_pacing_uses_the_injected_clock():
    now = [0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += int(seconds * 1e9)

    config = Generator(symbols=4, count=10_000, batch=1_000, rate=5_000.0, sleep=sleep)
    ctx = Context(node="src", clock=lambda: now[0])
    n = sum(len(b) for b in config.build(ctx).batches() if not isinstance(b, Watermark))
    assert n == 10_000
    assert len(slept) == 10  # after every full batch
    assert now[0] == pytest.approx(2e9, rel=1e-6)  # 10,000 ticks at 5,000/s

    # two replicas each pace their half of the rate
    now[0] = 0
    slept.clear()
    ctx = Context(node="src", replica=1, parallelism=2, clock=lambda: now[0])
    list(config.build(ctx).batches())
    assert now[0] == pytest.approx(2e9, rel=1e-6)


def test_generator_unbounded_count():
    items = Generator(symbols=3, count=None, batch=10).build(Context("src")).batches()
    first = list(itertools.islice(items, 2_000))
    assert sum(len(b) for b in first if not isinstance(b, Watermark)) == 10_000
    with pytest.raises(DagError, match="finite count"):
        generate(count=None)


def test_generator_empty_and_idle_replicas():
    assert drain(Generator(count=0))[2] == []
    # 2 symbols over 3 replicas: replica 2 owns none
    assert drain(Generator(symbols=2, count=100), 2, 3)[2] == []


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"symbols": 0}, "symbols must be >= 1"),
        ({"count": -1}, "count must be >= 0"),
        ({"batch": 0}, "batch must be >= 1"),
        ({"rate": 0}, "rate must be > 0"),
        ({"disorder_ns": -1}, "disorder_ns must be >= 0"),
        ({"late_fraction": 1.5}, r"late_fraction must be in \[0, 1\]"),
    ],
)
def test_generator_config_errors(kwargs, message):
    with pytest.raises(DagError, match=message):
        Generator(**kwargs)


def test_generator_config_pickles():
    config = Generator(symbols=3, count=100, seed=2, disorder_ns=10, late_fraction=0.1)
    again = pickle.loads(pickle.dumps(config))
    assert again == config
    assert generate(again) == generate(config)


# --- CsvTicks: happy path and header ---------------------------------------------------


def test_csv_reads_what_the_generator_wrote(tmp_path):
    ticks = generate(symbols=20, count=2_345, disorder_ns=1_000, seed=7)
    path = write(tmp_path / "t.csv", HEADER + "".join(map(row, ticks)))
    batches, marks, items, counters = drain(CsvTicks(path, lateness_ns=500, batch=100))
    assert [t for b in batches for t in b] == ticks
    assert [len(b) for b in batches] == [100] * 23 + [45]
    check_watermarks(items, 500)
    assert marks == sorted(marks)
    assert counters.get("bad_rows", 0) == 0


def test_csv_accepts_crlf_bom_and_a_last_line_without_newline(tmp_path):
    text = "\ufeffsymbol,ts,price,size\r\nA,1,2.5,3\r\nB,2,1e2,4.0\r\nC,3,0.1,1"
    batches, *_ = drain(CsvTicks(write(tmp_path / "t.csv", text)))
    assert batches == [[Tick("A", 1, 2.5, 3.0), Tick("B", 2, 100.0, 4.0), Tick("C", 3, 0.1, 1.0)]]


def test_csv_reads_a_ts_written_as_an_integral_decimal_exactly(tmp_path):
    """``17e17`` and ``1700000000000000000.0`` are the integer they spell, beyond 2**53
    too (a float would round them); a fraction is not a ts."""
    rows = ["A,17e17,1,1", "B,1700000000000000001.0,1,1", "C,9223372036854775807e0,1,1"]
    path = write(tmp_path / "t.csv", HEADER + "\n".join(rows) + "\nD,1.5,1,1\n")
    batches, _, _, counters = drain(CsvTicks(path, dead_letter=str(tmp_path / "dead.csv")))
    assert [(t.symbol, t.ts) for b in batches for t in b] == [
        ("A", 17 * 10**17),
        ("B", 17 * 10**17 + 1),
        ("C", 2**63 - 1),
    ]
    dead = list(csv.reader((tmp_path / "dead.csv").open()))[1:]
    assert dead == [["5", "D,1.5,1,1", "ts '1.5' is not an integer (ns since the epoch)"]]
    assert counters["bad_rows"] == 1


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(10**25), 10**25),
    st.integers(-30, 30),
    st.sampled_from(["e", "E"]),
    st.booleans(),
)
def test_parse_int_reads_integral_decimals_as_the_integer_they_spell(n, k, e, point):
    """``n`` times ten to ``k``, written ``{n}e{k}`` or ``{n}.0e{k}``: the integer when it
    is one (clamped to +-10**19 from 10**19 on), else ValueError; as Fraction reads it."""
    text = f"{n}{'.0' if point else ''}{e}{k}"
    exact = Fraction(n) * Fraction(10) ** k
    if exact.denominator != 1:
        with pytest.raises(ValueError):
            parse_int(text)
    else:
        bound = 10**19
        assert parse_int(text) == max(-bound, min(bound, int(exact)))


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "sNaN", "1.5", "x", "", "1e-9999"])
def test_parse_int_refuses_what_is_not_an_integer(text):
    with pytest.raises(ValueError):
        parse_int(text)


def test_parse_int_does_not_build_the_int_of_a_huge_exponent():
    assert parse_int("1e999999999") == 10**19  # 10**999999999 would take minutes
    assert parse_int("-1e999999999") == -(10**19)
    assert parse_int("0e999999999") == 0


def test_csv_header_only(tmp_path):
    assert drain(CsvTicks(write(tmp_path / "t.csv", HEADER)))[2] == []
    assert drain(CsvTicks(write(tmp_path / "u.csv", HEADER.strip())))[2] == []


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "the file is empty; expected the header line 'symbol,ts,price,size'"),
        ("A,1,2,3\n", ":1: expected the header 'symbol,ts,price,size', got 'A,1,2,3'"),
        ("symbol,ts,size,price\nA,1,2,3\n", ":1: expected the header"),
        ("sym,ts,price,size\n", ":1: expected the header"),
    ],
)
def test_csv_header_errors_name_the_file(tmp_path, text, message):
    path = write(tmp_path / "t.csv", text)
    with pytest.raises(RecordError, match=message) as info:
        CsvTicks(path).build(Context("src"))
    assert str(info.value).startswith(path)


# --- CsvTicks: bad rows ----------------------------------------------------------------

BAD_ROWS = [
    ("A,1,2", "expected 4 fields (symbol,ts,price,size), got 3"),
    ("A,1,2,3,4", "expected 4 fields (symbol,ts,price,size), got 5"),
    ("", "empty line"),
    ("\r", "empty line"),
    (",1,2,3", "empty symbol"),
    ("A,x,2,3", "ts 'x' is not an integer"),
    ("A,1.5,2,3", "ts '1.5' is not an integer"),
    ("A,,2,3", "ts '' is not an integer"),
    ("A,1,abc,3", "price 'abc' is not a number"),
    ("A,1,nan,3", "price 'nan' is not finite"),
    ("A,1,-inf,3", "price '-inf' is not finite"),
    ("A,1,1e999,3", "price '1e999' is not finite"),
    ("A,1,2,0", "size '0' is not positive"),
    ("A,1,2,-5", "size '-5' is not positive"),
    ("A,1,2,x", "size 'x' is not a number"),
    ("A,1,2,inf", "size 'inf' is not finite"),
    ("A,1,2,NaN", "size 'NaN' is not finite"),
    ('"A",1,2,3', "symbol '\"A\"' holds a quote or carriage return (this format has no quoting)"),
    ("A\rB,1,2,3", "symbol 'A\\rB' holds a quote or carriage return"),
    ("A,9223372036854775808,2,3", "ts '9223372036854775808' is outside the int64 range"),
    ("A,-9223372036854775809,2,3", "ts '-9223372036854775809' is outside the int64 range"),
    ("A,9.3e18,2,3", "ts '9.3e18' is outside the int64 range"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_csv_bad_row_stops_the_job_with_file_and_line(tmp_path, bad, reason):
    path = write(tmp_path / "t.csv", HEADER + "A,1,2,3\n" + bad + "\nB,2,3,4\n")
    with pytest.raises(RecordError) as info:
        drain(CsvTicks(path))
    message = str(info.value)
    assert message.startswith(f"{path}:3: {reason}")
    assert "dead_letter=" in message  # says how to go on instead


def test_csv_bad_utf8_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"symbol,ts,price,size\nA,1,2,3\n\xff\xfe,1,2,3\nB,2,3,4\n")
    with pytest.raises(RecordError, match=r"t\.csv:3: not valid UTF-8"):
        drain(CsvTicks(str(path)))
    dead = tmp_path / "dead.csv"
    batches, *_ = drain(CsvTicks(str(path), dead_letter=str(dead)))
    assert [t.symbol for b in batches for t in b] == ["A", "B"]
    assert list(csv.reader(dead.open()))[1] == ["3", "\\xff\\xfe,1,2,3", "not valid UTF-8"]


def test_csv_dead_letter_collects_every_bad_row_and_goes_on(tmp_path):
    lines = ["A,1,2,3"]
    expected = []
    for bad, reason in BAD_ROWS:
        lines.append(bad)
        expected.append([str(len(lines) + 1), bad.removesuffix("\r"), reason])
        lines.append("B,2,3,4")
    path = write(tmp_path / "t.csv", HEADER + "\n".join(lines) + "\n")
    dead = tmp_path / "bad.csv"
    batches, _, items, counters = drain(CsvTicks(path, dead_letter=dead, batch=4))
    assert [t.symbol for b in batches for t in b] == ["A"] + ["B"] * len(BAD_ROWS)
    assert counters["bad_rows"] == len(BAD_ROWS)
    got = list(csv.reader(dead.open(newline="")))
    assert got[0] == ["line", "raw", "reason"]
    assert len(got) == len(expected) + 1
    for (line, raw, reason), (want_line, want_raw, want_reason) in zip(
        got[1:], expected, strict=True
    ):
        assert (line, raw) == (want_line, want_raw)
        assert reason.startswith(want_reason)
    check_watermarks(items, 0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_csv_dead_letter_appears_when_the_stream_ends_well(tmp_path):
    body = "bad\n" + "".join(f"A,{i},1,1\n" for i in range(50)) + "worse\n" + "A,99,1,1\n"
    path = write(tmp_path / "t.csv", HEADER + body)
    dead = tmp_path / "bad.csv"
    dead.write_text("an old file\n")
    first = 'line,raw,reason\n2,bad,"expected 4 fields (symbol,ts,price,size), got 1"\n'
    # The job fails partway: nothing replaces the old file, no temporary remains.
    logic = CsvTicks(path, dead_letter=str(dead), batch=10).build(Context("src"))
    items = logic.batches()
    next(items)
    assert dead.read_text() == "an old file\n"  # not replaced before the end
    items.close()
    logic.abort()
    assert dead.read_text() == "an old file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "t.csv"]
    # A graceful stop partway: the bad rows read until then, as bad_rows counts them.
    ctx = Context("src")
    logic = CsvTicks(path, dead_letter=str(dead), batch=10).build(ctx)
    items = logic.batches()
    next(items)
    items.close()
    logic.close()
    assert dead.read_text() == first and ctx.counters["bad_rows"] == 1
    # Read to the end: every bad row.
    drain(CsvTicks(path, dead_letter=str(dead)))
    second = '53,worse,"expected 4 fields (symbol,ts,price,size), got 1"\n'
    assert dead.read_text() == first + second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "t.csv"]


def test_csv_dead_letter_per_replica(tmp_path):
    body = "".join(f"A,{i},1,1\n" for i in range(100)) + "bad\n"
    path = write(tmp_path / "t.csv", HEADER + body)
    for r in range(2):
        drain(CsvTicks(path, dead_letter=str(tmp_path / "dead.csv")), r, 2)
    assert (tmp_path / "dead.0.csv").read_text() == "line,raw,reason\n"
    assert (tmp_path / "dead.1.csv").read_text().splitlines()[1].startswith("102,bad,")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch": 0}, "batch must be >= 1"),
        ({"ranges": 0}, "ranges must be >= 1"),
        ({"lateness_ns": -1}, "lateness_ns must be >= 0"),
    ],
)
def test_csv_config_errors(kwargs, message):
    with pytest.raises(DagError, match=message):
        CsvTicks("x.csv", **kwargs)


def test_csv_config_pickles(tmp_path):
    config = CsvTicks(tmp_path / "t.csv", lateness_ns=5, dead_letter=tmp_path / "d.csv", ranges=3)
    assert isinstance(config.path, str) and isinstance(config.dead_letter, str)
    assert pickle.loads(pickle.dumps(config)) == config


# --- fast path against the reference ----------------------------------------------------

FIELD = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-0",
            "1",
            "12",
            "1.5",
            "-2.25",
            "1e3",
            "1E-2",
            "12.0",
            "+3",
            " 4",
            "5 ",
            "1_0",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "0x10",
            ".5",
            "5.",
            "01",
            "1e400",
            '"',
            "\\",
            "\\u0041",
            "\t",
            "null",
            "true",
            "[1]",
            "9223372036854775808",
            "-9223372036854775809",
        ]
    ),
    st.text(alphabet='AZaz09.-+e,"\\ \t\r', max_size=6),
)
SYMBOL = st.one_of(
    st.sampled_from(["A", "", "a b", "é", "\\", '"', "\t", "[", "]"]),
    st.text(alphabet='AZ09"\\ ', max_size=3),
)
NUMBER = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(min_value=-1e300, max_value=1e300).map(repr),
    st.sampled_from(["1", "2.5", "1e3", "12.0", "-0", "0"]),
)
POSITIVE = st.one_of(
    st.integers(1, 10**20).map(str),
    st.floats(min_value=1e-300, max_value=1e300).map(repr),
    st.sampled_from(["1", "2.5", "1e3", "1E-2", "12.0"]),
)
LINE = st.one_of(
    st.builds(
        lambda *fields: ",".join(fields), st.sampled_from(["A", "é"]), NUMBER, NUMBER, POSITIVE
    ),
    st.builds(lambda *fields: ",".join(fields), SYMBOL, NUMBER, NUMBER, NUMBER),
    st.builds(lambda *fields: ",".join(fields), SYMBOL, FIELD, FIELD, FIELD),
    st.builds(lambda fs: ",".join(fs), st.lists(FIELD, min_size=1, max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=8))
def test_fast_path_accepts_only_what_the_reference_accepts(lines):
    lines = [line.replace("\n", "") for line in lines]
    good: list[Tick] = []
    bad: list[str] = []
    parse_lines(lines, good, bad)
    fast = parse_block(("\n".join(lines) + "\n").encode())
    if fast is not None:  # (None: the batch goes to the reference path)
        assert bad == []
        assert fast == good


@pytest.mark.parametrize(
    ("ts", "exact"),
    [
        ("1e-400", None),
        ("1.00000000000000001", None),
        ("4503599627370497.5", None),
        ("9007199254740993.0", 9007199254740993),
        ("17e17", 1700000000000000000),
    ],
)
def test_fast_path_leaves_a_time_with_a_fraction_or_exponent_to_the_reference(ts, exact):
    # msgspec would read these through a float (1e-400 as 0, 9007199254740993.0 as ...992);
    # the reference reads an integral value exactly and reports any other row
    assert parse_block(f"A,1,1,1\nA,{ts},1,1\n".encode()) is None
    good: list[Tick] = []
    bad: list[str] = []
    parse_lines([f"A,{ts},1,1"], good, bad)
    assert ([t.ts for t in good], bad) == (([exact], []) if exact else ([], [f"A,{ts},1,1"]))


@pytest.mark.parametrize("ts", [2**63, 2**64 - 1, 2**64, -(2**63) - 1])
def test_fast_path_refuses_a_time_outside_int64(ts):
    # msgspec reads a quoted integer of any size; the reference reports such a row
    assert parse_block(f"A,1,1,1\nA,{ts},1,1\n".encode()) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ABC", "X", "é", "a b"]),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(-1e300, 1e300),
            st.floats(min_value=1e-300, max_value=1e300),
        ),
        max_size=20,
    )
)
def test_fast_path_reads_repr_floats_exactly(rows):
    text = "".join(f"{s},{t},{p!r},{z!r}\n" for s, t, p, z in rows)
    ticks = parse_block(text.encode())
    assert ticks is not None
    assert ticks == [Tick(*r) for r in rows]


# --- byte ranges -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    st.booleans(),
    st.integers(1, 9),
    st.integers(1, 7),
)
def test_ranges_cover_every_line_once(tmp_path_factory, lines, final_newline, n, chunk):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path_factory.mktemp("r") / "f"
    path.write_bytes(data)
    bounds = split_points(len(data), n)
    got = b""
    with path.open("rb") as f:
        for k in range(n):
            reader = RangeReader(f, bounds[k], bounds[k + 1], chunk=chunk)
            for offset, block in reader.blocks():
                assert data[offset : offset + len(block)] == block
                assert offset == 0 or data[offset - 1 : offset] == b"\n"
                assert bounds[k] <= offset < bounds[k + 1]
                got += block
    assert got == data


ROW = st.one_of(
    st.builds(
        lambda s, t, p, z: f"{s},{t},{p},{z}",
        st.sampled_from(["A", "BB", "é"]),
        st.integers(0, 10**6),
        st.sampled_from(["1", "2.5", "0.1", "1e2"]),
        st.sampled_from(["1", "100.0", "3"]),
    ),
    st.sampled_from(["", "A,1,2", "A,x,1,1", "A,1,1,0", ",1,1,1", "A,1,nan,1", "A,1,1,1,1"]),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(ROW, max_size=40),
    st.booleans(),
    st.integers(1, 6),
    st.integers(1, 5),
    st.sampled_from([1, 7, 64, 1 << 20]),
)
def test_ranges_union_equals_the_whole_file(
    tmp_path, monkeypatch, rows, final_newline, n, batch, chunk
):
    monkeypatch.setattr(operators.csvio, "CHUNK", chunk)
    text = HEADER + "\n".join(rows) + ("\n" if final_newline and rows else "")
    path = write(tmp_path / "t.csv", text)
    whole_dead = tmp_path / "whole.csv"
    whole = ticks_of(CsvTicks(path, batch=batch, dead_letter=str(whole_dead), ranges=1))
    expected_dead = whole_dead.read_text()

    # n replicas, one range each: in replica order, the ranges are the file in order
    parts, dead_rows = [], []
    for r in range(n):
        dead = tmp_path / "dead.csv"
        batches, _, items, _ = drain(CsvTicks(path, batch=batch, dead_letter=str(dead)), r, n)
        parts += [t for b in batches for t in b]
        if items:
            check_watermarks(items, 0)
        part_dead = tmp_path / (f"dead.{r}.csv" if n > 1 else "dead.csv")
        dead_rows += part_dead.read_text().splitlines()[1:]
    assert parts == whole
    assert dead_rows == expected_dead.splitlines()[1:]

    # the reference: each physical line parsed on its own
    lines = text.split("\n")[1:]
    if text.endswith("\n"):
        lines.pop()  # the final newline does not make an empty line
    reference: list[Tick] = []
    bad: list[str] = []
    for line in lines:
        parse_lines([line], reference, bad)
    assert whole == reference
    assert len(expected_dead.splitlines()) - 1 == len(bad)

    # one replica reading the n ranges in turn reads the file in order
    assert ticks_of(CsvTicks(path, batch=batch, dead_letter=str(whole_dead), ranges=n)) == whole


def test_line_numbers_in_a_late_range(tmp_path):
    body = "".join(f"A,{i},1,1\n" for i in range(1_000)) + "A,1,1,oops\n" + "A,1,1,1\n"
    path = write(tmp_path / "t.csv", HEADER + body)
    for r in range(3):  # only the last range holds the bad row
        drain(CsvTicks(path), r, 4)
    with pytest.raises(RecordError, match=r"t\.csv:1002: size 'oops' is not a number"):
        drain(CsvTicks(path), 3, 4)


def test_empty_ranges_with_more_replicas_than_bytes(tmp_path):
    path = write(tmp_path / "t.csv", HEADER + "A,1,1,1\n")
    got = [t for r in range(64) for t in ticks_of(CsvTicks(path), r, 64)]
    assert got == [Tick("A", 1, 1.0, 1.0)]
    assert os.path.getsize(path) < 64


def test_csv_watermarks_follow_each_replica(tmp_path):
    ticks = [Tick("A", i * 10, 1.0, 1.0) for i in range(400)]
    path = write(tmp_path / "t.csv", HEADER + "".join(map(row, ticks)))
    last = []
    for r in range(2):
        batches, marks, items, _ = drain(CsvTicks(path, lateness_ns=15, batch=50), r, 2)
        check_watermarks(items, 15)
        last.append(marks[-1])
        assert marks[-1] == max(t.ts for b in batches for t in b) - 15
    assert last[0] < last[1] == 3990 - 15
