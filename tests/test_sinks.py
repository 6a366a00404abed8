"""Sinks: file formats, exact float round-trips, temp-then-rename, abort, replicas."""

from __future__ import annotations

import csv
import math
import pickle

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import DagError, RecordError
from engine.operator import Context, Watermark
from engine.records import Bar, Tick
from operators.csvparse import parse_lines
from operators.sinks import (
    Collect,
    Counts,
    CountSink,
    CsvBars,
    CsvTicksSink,
    JsonLinesBars,
    Written,
    _plainly_readable,
)
from operators.sources import CsvTicks, generate

CTX = Context(node="out")
AWKWARD = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 123456789.123456789, 1 / 3]

BARS = [
    Bar("AAPL", 10**18, 10**18 + 10**9, 1.5, 2.25, 1.0, 2.0, 1234.0, 1.6153846153846154, 3),
    Bar("é", -5, 0, *AWKWARD[:6], 7),
    Bar("X", 0, 1, math.inf, -math.inf, 0.0, AWKWARD[6], 1e22, 2.5e-7, 0),
]


def hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_csv_bars_format_and_exact_round_trip(tmp_path):
    path = tmp_path / "bars.csv"
    sink = CsvBars(path).build(CTX)
    sink.write(BARS[:2])
    sink.on_watermark(5)
    sink.write(BARS[2:])
    assert sink.close() == Written(str(path), 3)
    text = path.read_text()
    assert text.splitlines()[:2] == [
        "symbol,window_start,window_end,open,high,low,close,volume,vwap,count",
        "AAPL,1000000000000000000,1000000001000000000,1.5,2.25,1.0,2.0,1234.0,1.6153846153846154,3",
    ]
    rows = list(csv.DictReader(path.open(newline="")))
    back = [
        Bar(
            r["symbol"],
            int(r["window_start"]),
            int(r["window_end"]),
            *(float(r[k]) for k in ("open", "high", "low", "close", "volume", "vwap")),
            int(r["count"]),
        )
        for r in rows
    ]
    assert back == BARS
    assert [repr(x) for x in msgspec.structs.astuple(back[1])[3:9]] == [
        repr(x) for x in AWKWARD[:6]
    ]  # -0.0 keeps its sign
    assert hidden(tmp_path) == []


def test_csv_bars_nan_round_trips(tmp_path):
    path = tmp_path / "bars.csv"
    sink = CsvBars(path).build(CTX)
    sink.write([Bar("A", 0, 1, math.nan, 1.0, 1.0, 1.0, 0.0, math.nan, 0)])
    sink.close()
    row = path.read_text().splitlines()[1]
    assert row == "A,0,1,nan,1.0,1.0,1.0,0.0,nan,0"
    assert math.isnan(float(row.split(",")[3]))


def test_json_lines_bars(tmp_path):
    path = tmp_path / "bars.jsonl"
    sink = JsonLinesBars(str(path)).build(CTX)
    sink.write(BARS[:2])
    assert sink.close() == Written(str(path), 2)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = msgspec.json.decode(lines[0])
    assert list(first) == list(Bar.__struct_fields__)
    assert first["symbol"] == "AAPL" and first["count"] == 3
    assert [Bar(**msgspec.json.decode(line)) for line in lines] == BARS[:2]
    assert repr(msgspec.json.decode(lines[1])["open"]) == repr(AWKWARD[0])


def test_json_lines_non_finite_floats_become_null(tmp_path):
    path = tmp_path / "bars.jsonl"
    sink = JsonLinesBars(path).build(CTX)
    sink.write(BARS[2:])
    sink.close()
    assert msgspec.json.decode(path.read_text())["open"] is None


def test_tick_sink_writes_what_csv_ticks_reads(tmp_path):
    ticks = generate(symbols=30, count=3_000, disorder_ns=10_000, seed=4)
    ticks.append(Tick("Z", 1, AWKWARD[0], AWKWARD[1]))
    path = tmp_path / "late.csv"
    sink = CsvTicksSink(path).build(CTX)
    for i in range(0, len(ticks), 700):
        sink.write(ticks[i : i + 700])
    assert sink.close() == Written(str(path), len(ticks))
    assert path.read_text().startswith("symbol,ts,price,size\n")
    items = CsvTicks(path).build(Context("src")).batches()
    assert [t for item in items if not isinstance(item, Watermark) for t in item] == ticks


@pytest.mark.parametrize(
    "config,records",
    [(CsvBars, BARS), (JsonLinesBars, BARS), (CsvTicksSink, [Tick("A", 1, 1.0, 1.0)])],
)
def test_file_appears_only_on_close(tmp_path, config, records):
    path = tmp_path / "out"
    path.write_text("an old file\n")
    sink = config(path).build(CTX)
    sink.write(records)
    assert path.read_text() == "an old file\n"
    assert len(hidden(tmp_path)) == 1  # the temporary, beside the target
    sink.close()
    assert path.read_text() != "an old file\n"
    assert hidden(tmp_path) == []
    sink.abort()  # after close: nothing to undo
    assert path.exists()


@pytest.mark.parametrize("config", [CsvBars, JsonLinesBars, CsvTicksSink])
def test_abort_leaves_no_file(tmp_path, config):
    sink = config(tmp_path / "new").build(CTX)
    sink.write(BARS if config is not CsvTicksSink else [Tick("A", 1, 1.0, 1.0)])
    sink.abort()
    sink.abort()
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "old").write_text("keep me")
    sink = config(tmp_path / "old").build(CTX)
    sink.abort()
    assert (tmp_path / "old").read_text() == "keep me"
    assert hidden(tmp_path) == []


class Cut(BaseException):
    """What the worker's SIGTERM handler raises (engine.worker.Stopped), here on demand."""


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_abort_after_a_commit_cut_short_leaves_no_temporary(tmp_path, monkeypatch, step):
    """A SIGTERM (the coordinator tearing a failed job down) can land inside close(): the
    abort that follows still removes the temporary, and an earlier file stays as it was."""
    (tmp_path / "bars.csv").write_text("keep me")
    sink = CsvBars(tmp_path / "bars.csv").build(CTX)
    sink.write(BARS)

    def cut(*args):
        raise Cut

    monkeypatch.setattr(f"operators.csvio.os.{step}", cut)
    with pytest.raises(Cut):
        sink.close()
    monkeypatch.undo()
    sink.abort()
    assert hidden(tmp_path) == []
    assert (tmp_path / "bars.csv").read_text() == "keep me"


@pytest.mark.parametrize("config", [CsvBars, JsonLinesBars, CsvTicksSink])
def test_file_sinks_refuse_several_replicas(tmp_path, config):
    sink = config(tmp_path / "x")
    assert sink.max_parallelism == 1
    with pytest.raises(DagError, match=r"sink node 'out'.*parallelism 2; give the sink "):
        sink.build(Context(node="out", replica=0, parallelism=2))
    assert list(tmp_path.iterdir()) == []


def test_csv_refuses_symbols_it_cannot_carry(tmp_path):
    sink = CsvTicksSink(tmp_path / "t.csv").build(CTX)
    with pytest.raises(RecordError, match=r"cannot write Tick\(symbol='A,B'.*comma, quote"):
        sink.write([Tick("ok", 1, 1.0, 1.0), Tick("A,B", 1, 1.0, 1.0)])
    for symbol in ['say "hi"', "two\nlines", "cr\r"]:
        with pytest.raises(RecordError):
            sink.write([Tick(symbol, 1, 1.0, 1.0)])
    bars = CsvBars(tmp_path / "b.csv").build(CTX)
    with pytest.raises(RecordError, match="CsvBars"):
        bars.write([Bar("A,B", 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)])
    sink.abort()
    bars.abort()


@pytest.mark.parametrize(
    "tick,reason",
    [
        (Tick("", 1, 1.0, 1.0), "empty symbol"),
        (Tick("A", 1, math.nan, 1.0), "price 'nan' is not finite"),
        (Tick("A", 1, 1.0, -math.inf), "size '-inf' is not finite"),
        (Tick("A", 1, 1.0, 0.0), "size '0.0' is not positive"),
        (Tick("A", 2**63, 1.0, 1.0), "ts '9223372036854775808' is outside the int64 range"),
    ],
)
def test_tick_sink_refuses_a_tick_csv_ticks_would_not_read_back(tmp_path, tick, reason):
    """Nothing lost at the read-back: the job stops, naming the tick and why."""
    sink = CsvTicksSink(tmp_path / "t.csv").build(CTX)
    sink.write([Tick("ok", 1, 1.0, 1.0)])
    with pytest.raises(RecordError) as info:
        sink.write([Tick("ok", 2, 1.0, 1.0), tick])
    assert f"cannot write {tick!r}: {reason}" in str(info.value)
    assert "CsvTicks could not read it back" in str(info.value)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


ODD_VALUES = st.sampled_from(
    [0, -1, 2**63, True, 1.5, -0.0, 0.0, math.nan, math.inf, -math.inf, 1e308, 10**400, ""]
)
TICK_FIELDS = st.tuples(
    st.one_of(st.sampled_from(["A", "", " b ", "é"]), ODD_VALUES),
    st.one_of(st.integers(-(2**64), 2**64), ODD_VALUES),
    st.one_of(st.floats(), st.integers(-(10**400), 10**400), ODD_VALUES),
    st.one_of(st.floats(), st.integers(-5, 5), ODD_VALUES),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(TICK_FIELDS, max_size=6))
def test_tick_sink_quick_check_passes_only_ticks_csv_ticks_reads_back_as_they_are(rows):
    """The column check that spares a well-formed batch the exact read-back check never
    passes a tick the exact check (CsvTicks's reference parser) would refuse or change."""
    batch = [Tick(*row) for row in rows]
    if not _plainly_readable(batch):
        return  # (the exact check decides)
    good: list[Tick] = []
    bad: list[str] = []
    parse_lines([f"{t.symbol},{t.ts},{t.price!r},{t.size!r}" for t in batch], good, bad)
    assert bad == []
    assert good == batch


@pytest.mark.parametrize("config", [CsvBars, CsvTicksSink])
def test_a_symbol_utf8_cannot_carry_stops_the_job_naming_it_and_writes_none_of_its_batch(
    tmp_path, config
):
    good = BARS[0] if config is CsvBars else Tick("A", 1, 1.0, 1.0)
    bad = msgspec.structs.replace(good, symbol="B\udc80")  # a lone surrogate
    sink = config(tmp_path / "out.csv").build(CTX)
    with pytest.raises(RecordError, match=r"cannot write .*symbol='B\\udc80'.* as UTF-8"):
        sink.write([good, bad])
    sink.write([good])
    sink.close()
    assert (tmp_path / "out.csv").read_text().count("\n") == 2  # the header and one record


def test_collect_and_count():
    collect = Collect().build(CTX)
    collect.write([1, 2])
    collect.on_watermark(7)
    collect.write([3])
    assert collect.close() == [1, 2, 3]

    marks = Collect(watermarks=True).build(Context("out", 1, 3))
    marks.write(BARS[:1])
    marks.on_watermark(7)
    result = marks.close()
    assert result == [BARS[0], Watermark(7)]
    assert pickle.loads(pickle.dumps(result)) == result

    count = CountSink().build(CTX)
    count.write([1, 2, 3])
    count.write([4])
    count.on_watermark(1)
    assert count.close() == Counts(records=4, batches=2, watermarks=1)


def test_configs_and_results_pickle(tmp_path):
    configs = [
        CsvBars(tmp_path / "a.csv"),
        JsonLinesBars(tmp_path / "a.jsonl"),
        CsvTicksSink(tmp_path / "t.csv"),
        Collect(watermarks=True),
        CountSink(),
    ]
    for config in configs:
        assert pickle.loads(pickle.dumps(config)) == config
    for result in (Written("x", 1), Counts(1, 2, 3)):
        assert pickle.loads(pickle.dumps(result)) == result
