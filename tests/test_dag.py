"""DAG validation: every malformed DAG is refused before anything starts, naming the node
and the fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgspec
import pytest
from jobs import Collect, Explode, Numbered, RunningSum

from engine import Dag, DagError, Operator, Sink, SinkLogic, Source, Tick
from engine.dag import OPERATOR, Stream
from engine.testing import run_inline
from operators import (
    OHLCV,
    Count,
    Dedupe,
    Filter,
    Generator,
    Router,
    Throttle,
    Tumbling,
    WindowAggregate,
)
from operators.sinks import CsvBars, CsvTicksSink
from operators.sources import CsvTicks


def _valid() -> Dag:
    dag = Dag("t")
    src = dag.source("src", Numbered(10), parallelism=2)
    summed = src.key_by(_key).apply("sum", RunningSum(), parallelism=3)
    summed.sink("out", Collect())
    return dag


def _key(record):
    return record[0]


def test_valid_dag_passes_and_orders_topologically():
    dag = _valid()
    dag.validate()
    assert [n.name for n in dag.topological()] == ["src", "sum", "out"]


def _refused(dag: Dag, *fragments: str) -> str:
    with pytest.raises(DagError) as info:
        dag.validate()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_cycle_is_named():
    dag = Dag("t")
    dag.source("src", Numbered(1)).apply("a", RunningSum()).apply("b", RunningSum()).sink(
        "out", Collect()
    )
    dag.connect("b", "a")
    _refused(dag, "cycle", "a -> b -> a")


def test_duplicate_and_unknown_names():
    dag = _valid()
    dag.source("src", Numbered(1)).sink("out2", Collect())
    _refused(dag, "'src'", "used 2 times", "unique name")
    dag = _valid()
    dag.connect("sum", "nowhere")
    _refused(dag, "unknown node 'nowhere'")


def test_source_with_input_and_sink_with_output():
    dag = _valid()
    dag.connect("sum", "src")
    _refused(dag, "source 'src' has inputs")
    dag = _valid()
    dag.add("after", OPERATOR, RunningSum())
    dag.connect("out", "after")
    _refused(dag, "sink 'out' has outputs")


def test_unreachable_node():
    dag = _valid()
    dag.operator("orphan", RunningSum()).sink("orphan_out", Collect())
    _refused(dag, "'orphan' is not reachable from any source")


def test_parallelism_below_one():
    dag = Dag("t")
    dag.source("src", Numbered(1), parallelism=0).sink("out", Collect())
    _refused(dag, "node 'src'", "parallelism must be an integer >= 1")


def test_keyed_edge_without_key():
    dag = Dag("t")
    with pytest.raises(DagError, match=r"key_by on the output of node 'src'.*name the attribute"):
        dag.source("src", Numbered(1)).key_by("")


def test_unpicklable_operator_is_named():
    dag = Dag("t")
    src = dag.source("src", Numbered(1))
    src.key_by(lambda r: r[0]).apply("sum", RunningSum()).sink("o", Collect())
    _refused(dag, "'src' -> 'sum'", "cannot be pickled", "module-level")
    dag = Dag("t")
    dag.source("src", Numbered(1)).map("m", lambda r: r).sink("o", Collect())
    _refused(dag, "node 'm'", "cannot be pickled")


def test_operator_without_downstream_and_unknown_side_output():
    dag = Dag("t")
    dag.source("src", Numbered(1)).apply("dangling", Explode(after=10))
    _refused(dag, "operator 'dangling' has no downstream", "add a sink")
    dag = _valid()
    dag.connect(dag.source("s2", Numbered(1)).side("late"), "out")
    _refused(dag, "node 's2' has no side output 'late'")


def test_forward_edge_needs_equal_parallelism():
    dag = Dag("t")
    dag.source("src", Numbered(1), parallelism=2).forward().apply("sum", RunningSum(), 3).sink(
        "o", Collect(), 3
    )
    _refused(dag, "'src' -> 'sum'", "forward edge needs equal parallelism", ".rebalance()")


def test_wrong_config_type():
    dag = Dag("t")
    dag.source("src", RunningSum()).sink("o", Collect())  # type: ignore[arg-type]
    _refused(dag, "node 'src'", "a source needs")


def test_names_and_kinds_that_are_not_ringflow_s():
    dag = Dag("t")
    dag.source(["src"], Numbered(1)).sink("o", Collect())  # type: ignore[arg-type]
    _refused(dag, "node names must be non-empty strings, got ['src']")
    dag = _valid()
    dag.add("odd", "weird", RunningSum())
    _refused(dag, "node 'odd': unknown kind 'weird'", "dag.source")


def test_an_edge_declared_twice_is_refused():
    """Twice the same edge would feed every record in twice (doubled aggregates)."""
    dag = _valid()
    dag.connect(Stream(dag, "src").key_by(_key), "sum")
    _refused(dag, "edge 'src' -> 'sum' (output 'main') is declared 2 times", "declare it once")


def test_too_many_workers_is_refused_before_anything_starts():
    dag = Dag("t")
    dag.source("src", Numbered(1)).rebalance().apply("wide", RunningSum(), 5000).sink(
        "o", Collect()
    )
    _refused(dag, "would start 5002 worker processes", "node 'wide' has parallelism 5000")


def test_key_by_a_field_the_records_lack():
    dag = Dag("t")
    ticks = dag.source("ticks", Generator(count=10))
    ticks.key_by("sym").apply("bars", WindowAggregate(Tumbling("1s"), OHLCV())).sink("o", Collect())
    _refused(dag, "'ticks' -> 'bars'", "key_by('sym')", "Tick records have no field 'sym'")


def _bars_dag(tmp_path, output, late, source=None):
    dag = Dag("t")
    ticks = dag.source("ticks", source or Generator(count=10))
    bars = ticks.key_by("symbol").apply("bars", WindowAggregate(Tumbling("1s"), OHLCV()))
    bars.sink("out", CsvBars(output))
    bars.side("late").sink("late", CsvTicksSink(late))
    return dag


def test_two_nodes_writing_one_file_are_refused(tmp_path):
    same = tmp_path / "same.csv"
    _refused(
        _bars_dag(tmp_path, same, same),
        f"node 'late' writes {str(same)!r}, and node 'out' writes it too",
        "give each node its own path",
    )
    (tmp_path / "here").symlink_to(tmp_path)  # the same folder by another name
    _refused(_bars_dag(tmp_path, same, tmp_path / "here" / "same.csv"), "'out' writes it too")
    # A link is replaced by the rename, not what it points to: no clash
    (tmp_path / "link.csv").symlink_to(same)
    _bars_dag(tmp_path, same, tmp_path / "link.csv").validate()


def test_writing_a_file_the_job_reads_is_refused(tmp_path):
    ticks = tmp_path / "ticks.csv"
    ticks.write_text("symbol,ts,price,size\nA,1,1,1\n")
    source = CsvTicks(ticks)
    _refused(_bars_dag(tmp_path, ticks, tmp_path / "l.csv", source), "node 'ticks' reads it")
    dead = CsvTicks(ticks, dead_letter=tmp_path / "bad.csv")
    dag = _bars_dag(tmp_path, tmp_path / "bad.csv", tmp_path / "l.csv", dead)
    _refused(dag, "node 'out' writes", "node 'ticks' writes it too")
    # the writer declared before the reader
    dag = Dag("t")
    dag.source("gen", Generator(count=10)).sink("late_first", CsvTicksSink(ticks))
    dag.source("ticks", CsvTicks(ticks)).sink("o", Collect())
    _refused(dag, "node 'late_first' writes", "node 'ticks' reads it")


def test_a_missing_input_or_folder_is_refused(tmp_path):
    missing = CsvTicks(tmp_path / "nope.csv")
    dag = _bars_dag(tmp_path, tmp_path / "b.csv", tmp_path / "l.csv", missing)
    _refused(dag, "node 'ticks' reads", "nope.csv', which does not exist")
    dag = _bars_dag(tmp_path, tmp_path / "b.csv", tmp_path / "l.csv", CsvTicks(tmp_path))
    _refused(dag, "which is a folder")
    dag = _bars_dag(tmp_path, tmp_path / "no" / "b.csv", tmp_path / "l.csv")
    _refused(dag, "node 'out' writes", "its folder does not exist; create it")
    dag = _bars_dag(tmp_path, tmp_path, tmp_path / "l.csv")
    _refused(dag, "node 'out' writes", "which is a folder")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Generator(count=1.5), "count must be an integer or None, got 1.5"),
        (lambda: Generator(symbols=True), "symbols must be an integer, got True"),
        (lambda: CsvTicks("t.csv", lateness_ns="2s"), "lateness_ns must be an integer, got '2s'"),
        (lambda: CsvTicks("t.csv", ranges=2.0), "ranges must be an integer or None, got 2.0"),
    ],
)
def test_a_config_field_of_the_wrong_type_is_named(make, expected):
    with pytest.raises(DagError, match=re.escape(expected)):
        make()


def _window_on_ticks(window: WindowAggregate, parallelism: int = 1, edge=None) -> Dag:
    dag = Dag("t")
    ticks = dag.source("ticks", Generator(count=10))
    stream = (edge or (lambda s: s.key_by("symbol")))(ticks)
    bars = stream.apply("bars", window, parallelism)
    bars.sink("o", Collect(), parallelism)
    bars.side("late").sink("late", Collect())
    return dag


def test_a_window_keyed_or_timed_by_a_field_its_records_lack():
    window = WindowAggregate(Tumbling("1s"), OHLCV(), key="nosuch")
    _refused(_window_on_ticks(window), "WindowAggregate 'bars' reads 'nosuch', which Tick")
    window = WindowAggregate(Tumbling("1s"), OHLCV(), key=("sym",), time="when")
    _refused(_window_on_ticks(window), "reads 'sym', 'when', which Tick records lack")


def test_records_without_the_fields_a_node_reads_are_refused(tmp_path):
    dag = Dag("t")
    bars = (
        dag.source("ticks", Generator(count=10))
        .key_by("symbol")
        .apply("bars", WindowAggregate(Tumbling("1s"), OHLCV()))
    )
    bars.key_by("symbol").apply("again", WindowAggregate(Tumbling("1m"), OHLCV())).sink(
        "o", Collect()
    )
    bars.side("late").sink("late", Collect())
    _refused(
        dag, "'bars' -> 'again'", "WindowAggregate 'again' reads 'ts', 'price', 'size', which Bar"
    )
    dag = Dag("t")
    bars = (
        dag.source("ticks", Generator(count=10))
        .key_by("symbol")
        .apply("bars", WindowAggregate(Tumbling("1s"), OHLCV()))
    )
    bars.sink("o", CsvTicksSink(tmp_path / "t.csv"))
    bars.side("late").sink("late", CsvBars(tmp_path / "b.csv"))
    _refused(dag, "CsvTicksSink 'o' reads 'ts', 'price', 'size', which Bar records lack")


class Reading(msgspec.Struct, frozen=True):
    sensor: str
    ts: int
    value: float

    @property
    def room(self) -> str:
        return self.sensor.split("-")[0]


class Readings(Source):
    output_type = Reading

    def build(self, ctx):  # pragma: no cover - validation only
        raise NotImplementedError


class VTick(Tick, frozen=True):
    venue: str = "X"


class VTicks(Source):
    output_type = VTick

    def build(self, ctx):  # pragma: no cover - validation only
        raise NotImplementedError


@dataclass(frozen=True)
class Listed(Source):
    files: tuple[str, ...] = ("a.csv",)  # a field, not the validation hook

    def build(self, ctx):  # pragma: no cover - validation only
        raise NotImplementedError


def test_records_that_have_the_fields_pass_whatever_their_type(tmp_path):
    dag = Dag("t")
    readings = dag.source("r", Readings()).key_by("room")  # a property
    counted = readings.apply("n", WindowAggregate(Tumbling(5), Count(), key="sensor"))
    counted.sink("o", Collect())
    counted.side("late").sink("late", Collect())
    dag.validate()
    dag = Dag("t")
    dag.source("v", VTicks()).sink("o", CsvTicksSink(tmp_path / "v.csv"))  # a Tick subclass
    dag.source("l", Listed()).sink("o2", Collect())
    dag.validate()


class Ten(IntEnum):
    TEN = 10


def test_an_int_subclass_is_an_int():
    assert Generator(count=Ten.TEN).count == 10


@pytest.mark.parametrize(
    "operator, edge, expected",
    [
        (
            WindowAggregate(Tumbling("1s"), OHLCV()),
            lambda s: s.rebalance(),
            "WindowAggregate 'bars' keeps its state per key 'symbol' in each of its 3 replicas",
        ),
        (
            WindowAggregate(Tumbling("1s"), OHLCV()),
            lambda s: s.key_by("price"),
            "make this edge key_by('symbol')",
        ),
        (Dedupe(None, "1s"), lambda s: s.rebalance(), "per each whole record"),
        (Throttle(None, 10, "1s"), lambda s: s.key_by("symbol"), "one state over all records"),
    ],
)
def test_state_per_key_needs_its_keys_together(operator, edge, expected):
    dag = Dag("t")
    out = edge(dag.source("ticks", Generator(count=10))).apply("bars", operator, 3)
    out.sink("o", Collect(), 3)
    for side in getattr(operator, "side_outputs", ()):
        out.side(side).sink(side, Collect())
    _refused(dag, expected)


@pytest.mark.parametrize(
    "operator, edge",
    [
        (WindowAggregate(Tumbling("1s"), OHLCV()), lambda s: s.key_by("symbol")),
        (Dedupe(("symbol", "ts"), "1s"), lambda s: s.key_by("symbol")),  # coarser: fine
        (Dedupe(None, "1s"), lambda s: s.key_by("symbol")),
        (Throttle("symbol", 10, "1s"), lambda s: s.key_by(_key)),  # a function: trusted
    ],
)
def test_state_per_key_passes_a_key_by_on_its_fields(operator, edge):
    dag = Dag("t")
    out = edge(dag.source("ticks", Generator(count=10))).apply("bars", operator, 3)
    out.sink("o", Collect(), 3)
    for side in getattr(operator, "side_outputs", ()):
        out.side(side).sink(side, Collect())
    dag.validate()


def test_a_forward_edge_after_a_key_by_keeps_keys_together():
    """Forward edges keep each record on its replica's number: behind a key_by on the key,
    a chain of keyed nodes is fine; straight from a source it is not."""
    dag = Dag("t")
    deduped = (
        dag.source("ticks", Generator(count=10), parallelism=2)
        .key_by("symbol")
        .apply("dedupe", Dedupe("symbol", "1s"), 2)
    )
    deduped.apply("throttle", Throttle("symbol", 5, "1s"), 2).sink("o", Collect(), 2)
    dag.connect(Stream(dag, "throttle", "throttled"), "o")  # its side output, forward too
    dag.validate()
    dag = Dag("t")
    ticks = dag.source("ticks", Generator(count=10), parallelism=2)
    ticks.apply("dedupe", Dedupe("symbol", "1s"), 2).sink("o", Collect(), 2)
    _refused(dag, "'ticks' -> 'dedupe'", "keeps its state per key 'symbol'")


@dataclass(frozen=True)
class Plain:
    symbol: str
    ts: int


class PlainMap(Source):
    output_type = Plain

    def build(self, ctx):  # pragma: no cover - validation only
        raise NotImplementedError


class Opaque:
    def __init__(self, symbol: str) -> None:
        self.symbol = symbol


class OpaqueSource(Source):
    output_type = Opaque

    def build(self, ctx):  # pragma: no cover - validation only
        raise NotImplementedError


def test_fields_are_checked_where_the_type_lists_them():
    dag = Dag("t")
    dag.source("p", PlainMap()).key_by("symbol").apply("d", Dedupe("symbol", 10)).sink(
        "o", Collect()
    )
    dag.validate()  # a dataclass field with no default: not a class attribute, still a field
    dag = Dag("t")
    dag.source("p", PlainMap()).key_by("sym").apply("d", Dedupe("symbol", 10)).sink("o", Collect())
    _refused(dag, "Plain records have no field 'sym'; key by one of ['symbol', 'ts']")
    dag = Dag("t")
    dag.source("q", OpaqueSource()).key_by("anything").apply("d", Dedupe(None, 10)).sink(
        "o", Collect()
    )
    dag.validate()  # fields set in __init__: not known before a record exists, not checked


def test_an_int_subclass_becomes_a_plain_int():
    assert type(Generator(count=Ten.TEN).count) is int


def _keep(record):
    return True


def _is_a(record):
    return record.symbol == "A"


def _link_types(dag: Dag) -> dict[tuple[str, str], object]:
    from engine.plan import plan

    return {(k.up, k.down): k.record_type for k in plan(dag).links}


def test_operators_that_pass_their_input_on_keep_its_record_type():
    dag = Dag("typed")
    ticks = dag.source("src", Generator(count=10))
    kept = ticks.apply("filter", Filter(_keep)).key_by("symbol")
    deduped = kept.apply("dedupe", Dedupe("symbol", 1)).key_by("symbol")
    throttled = deduped.apply("throttle", Throttle("symbol", 5, 10**9))
    routed = throttled.apply("router", Router({"a": _is_a}))
    routed.sink("out", Collect())
    routed.side("a").sink("a", Collect())
    throttled.side("throttled").sink("slow", Collect())
    dag.validate()
    assert set(_link_types(dag).values()) == {Tick}


def test_a_field_missing_after_a_filter_is_refused_before_start():
    dag = Dag("typed")
    dag.source("src", Generator(count=10)).apply("filter", Filter(_keep)).key_by("nosuch").sink(
        "out", Collect()
    )
    with pytest.raises(DagError, match="nosuch"):
        dag.validate()


def test_a_filter_of_inputs_of_two_types_passes_records_untyped():
    dag = Dag("mixed")
    ticks = dag.source("ticks", Generator(count=10))
    numbers = dag.source("numbers", Numbered(10))
    ticks.apply("filter", Filter(_keep)).sink("out", Collect())
    numbers.to("filter")
    dag.validate()
    assert _link_types(dag)[("filter", "out")] is None
    assert _link_types(dag)[("ticks", "filter")] is Tick


class Quote(msgspec.Struct, array_like=True, frozen=True):
    symbol: str
    ts: int
    bid: float


@dataclass(frozen=True)
class Quotes(Source):
    output_type: Any = Quote

    def build(self, ctx: Any) -> Any:
        raise NotImplementedError  # only planned here


def test_a_windows_late_records_have_its_inputs_type():
    # They were typed Tick whatever came in: a job of other records failed on its first
    # late record, or turned array-like ones into Ticks.
    dag = Dag("quotes")
    windows = (
        dag.source("src", Quotes())
        .key_by("symbol")
        .apply("count", WindowAggregate(Tumbling(10), Count()))
    )
    windows.sink("out", Collect())
    windows.side("late").sink("late", Collect())
    dag.validate()
    assert _link_types(dag)[("count", "late")] is Quote


def test_fields_an_aggregation_reads_are_checked_before_start():
    dag = Dag("quotes")
    dag.source("src", Quotes()).key_by("symbol").apply(
        "bars", WindowAggregate(Tumbling(10), OHLCV(price="bid"))
    ).sink("out", Collect())
    with pytest.raises(DagError, match="size"):
        dag.validate()
    fine = Dag("quotes")
    fine.source("src", Quotes()).key_by("symbol").apply(
        "bars", WindowAggregate(Tumbling(10), Count(), late_output=None)
    ).sink("out", Collect())
    fine.validate()


def test_types_pass_through_fan_in_and_out_of_filters():
    dag = Dag("diamonds")
    stream = dag.source("src", Generator(count=10))
    for k in range(12):  # each stage: two filters of the one before, joined by a third
        stream.apply(f"a{k}", Filter(_keep))
        stream.apply(f"b{k}", Filter(_keep))
        joined = dag.operator(f"j{k}", Filter(_keep))
        dag.connect(f"a{k}", f"j{k}")
        dag.connect(f"b{k}", f"j{k}")
        stream = joined
    stream.sink("out", Collect())
    dag.validate()
    assert set(_link_types(dag).values()) == {Tick}


def _window_dag(window: WindowAggregate, late: bool) -> Dag:
    dag = Dag("late")
    source = Generator(count=5_000, symbols=5, late_fraction=0.05, seed=1)
    bars = dag.source("ticks", source).key_by("symbol").apply("bars", window)
    bars.sink("out", Collect())
    if late:
        bars.side("late").sink("late", Collect())
    return dag


def test_a_side_output_nothing_consumes_is_refused_with_the_way_to_keep_or_drop_it():
    # Its records would be lost: nothing is dropped unless the config says so.
    window = WindowAggregate(Tumbling("1s"), OHLCV())
    _refused(
        _window_dag(window, late=False),
        "node 'bars' sends records to its side output 'late', which nothing consumes",
        "add .side('late').sink(...), or pass late_output=None to count late records",
    )
    _window_dag(window, late=True).validate()
    _window_dag(WindowAggregate(Tumbling("1s"), OHLCV(), late_output=None), late=False).validate()

    dag = Dag("throttle")
    ticks = dag.source("ticks", Generator(count=10)).key_by("symbol")
    ticks.apply("slow", Throttle("symbol", 1, "1s")).sink("out", Collect())
    _refused(dag, "side output 'throttled'", "or pass side_output=None to drop the records")

    dag = Dag("router")
    routed = dag.source("ticks", Generator(count=10)).apply("r", Router({"a": _is_a}, "rest"))
    routed.sink("out", Collect())
    _refused(dag, "side output 'a'", "or to drop its records, use a Filter that keeps the others")
    routed.side("a").sink("a", Collect())
    _refused(dag, "side output 'rest'", "or leave default=None to send the records no route")
    routed.side("rest").sink("rest", Collect())
    dag.validate()
    two = Router({"a": _is_a, "b": _is_a}, default="b")
    assert two.without_side("a") == "remove the route 'a'"
    assert two.without_side("b") == "remove the route 'b' and default"

    dag = Dag("custom")
    sides = dag.source("ticks", Generator(count=10)).apply("odd", _DeclaresOdd())
    sides.sink("out", Collect())
    message = _refused(dag, "its side output 'odd', which nothing consumes")
    assert message.endswith("add .side('odd').sink(...)")  # no config change to offer


def test_a_sink_has_no_side_outputs_to_declare_or_send_to():
    dag = Dag("sink")
    dag.source("ticks", Generator(count=10)).sink("out", _SinkWithSides())
    _refused(dag, "sink 'out' declares side outputs ['rejects']; sinks end the DAG")
    dag = Dag("sink")
    dag.source("ticks", Generator(count=10)).sink("out", _SinkSettingAside())
    with pytest.raises(DagError, match=r"node 'out' sent 10 record\(s\) to the side output 'x'"):
        run_inline(dag)


def test_a_window_without_a_late_output_counts_late_records_and_keeps_none():
    kept = run_inline(_window_dag(WindowAggregate(Tumbling("1s"), OHLCV()), late=True))
    late = len(kept.collected("late"))
    assert late > 0 and kept.counter("late") == late
    dropped = run_inline(
        _window_dag(WindowAggregate(Tumbling("1s"), OHLCV(), late_output=None), late=False)
    )
    assert dropped.counter("late") == late
    assert dropped.collected("out") == kept.collected("out")
    assert dropped.nodes["bars"].records_out == kept.nodes["bars"].records_out - late


def _is_a(record: Any) -> bool:
    return bool(record.symbol.startswith("A"))


class _DeclaresOdd(Operator):
    side_outputs = ("odd",)


class _SinkWithSides(Collect):
    side_outputs = ("rejects",)


@dataclass(frozen=True)
class _SinkSettingAside(Sink):
    def build(self, ctx: Any) -> SinkLogic:
        return _SetAside(ctx)


class _SetAside(SinkLogic):
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def write(self, batch: Any) -> None:
        self.ctx.emit_side("x", list(batch))  # records a sink cannot pass on: an error
