"""``PipelineRuntime``: one API for linear pipelines and DAGs, on the one engine.

A pipeline run inline, the same pipeline across processes and the equivalent hand-built DAG
must give the same output.
"""

from __future__ import annotations

import time

import pytest
from jobs import Collect, Numbered

from engine import Dag, DagError, RingflowError, SettingsError
from engine.records import Bar
from engine.runtime import PipelineRuntime, pipeline_dag
from operators import OHLCV, Filter, Generator, Map, Throttle, Tumbling, WindowAggregate
from operators import Collect as CollectRecords
from partitioning import KeyHash

WAIT = 60.0


def positive(tick):
    return tick.size > 0


def symbol_of(tick):
    return tick.symbol


def source() -> Generator:
    return Generator(symbols=20, count=6_000, disorder_ns=50_000, step_ns=100_000, seed=3)


def bars_operators() -> list:
    return [Filter(positive), WindowAggregate(Tumbling("20ms"), OHLCV())]


def by_window(bars: list[Bar]) -> list[Bar]:
    return sorted(bars, key=lambda b: (b.window_start, b.symbol))


def test_pipeline_dag_is_the_linear_dag_with_key_edges():
    dag = pipeline_dag(
        source(),
        [Map(symbol_of), Map(symbol_of), Filter(positive)],
        CollectRecords(),
        key="symbol",
        parallelism=2,
        name="p",
    )
    assert dag.name == "p"
    assert [(n.name, n.kind, n.parallelism) for n in dag.nodes] == [
        ("source", "source", 1),
        ("map", "operator", 2),
        ("map_2", "operator", 2),
        ("filter", "operator", 2),
        ("sink", "sink", 1),
    ]
    assert [(e.upstream, e.downstream) for e in dag.edges] == [
        ("source", "map"),
        ("map", "map_2"),
        ("map_2", "filter"),
        ("filter", "sink"),
    ]
    assert [type(e.partitioner) for e in dag.edges[:3]] == [KeyHash] * 3
    assert dag.edges[3].partitioner is None  # the engine's default
    dag.validate()


def test_pipeline_side_outputs_go_to_side_sinks_and_are_never_left_unconsumed():
    window = WindowAggregate(Tumbling("20ms"), OHLCV())
    with pytest.raises(
        DagError,
        match=r"pipeline 'pipeline': operator 'windowaggregate' sends .*"
        r"'late', which would be lost: pass side_sinks=\{'late': <a sink>\}, "
        r"or pass late_output=None",
    ):
        pipeline_dag(source(), [window], CollectRecords(), key="symbol")
    dag = pipeline_dag(
        source(), [window], CollectRecords(), key="symbol", side_sinks={"late": CollectRecords()}
    )
    late = [(e.upstream, e.downstream) for e in dag.edges if e.output == "late"]
    assert late == [("windowaggregate", "windowaggregate_late")]
    dag.validate()
    with pytest.raises(DagError, match=r"side_sinks names \['throttled'\], which no operator"):
        sides = {"late": CollectRecords(), "throttled": Collect()}
        pipeline_dag(source(), [window], CollectRecords(), side_sinks=sides)

    # One sink per operator where they share an output's name: "<operator>.<output>".
    first, second, shared = CollectRecords(), Collect(), CollectRecords()
    throttles = [Throttle("symbol", 1, "1s"), Throttle("symbol", 2, "1s")]
    sides = {"throttled": shared, "throttle_2.throttled": second}
    dag = pipeline_dag(source(), throttles, CollectRecords(), key="symbol", side_sinks=sides)
    assert {n.name: n.config for n in dag.nodes if n.name.endswith("_throttled")} == {
        "throttle_throttled": shared,
        "throttle_2_throttled": second,
    }
    assert [e.partitioner.key for e in dag.edges if e.downstream in ("throttle", "throttle_2")] == [
        "symbol",
        "symbol",
    ]
    dag.validate()
    sides = {"throttle.throttled": first, "throttle_2.throttled": second, "throttled": shared}
    with pytest.raises(DagError, match=r"side_sinks names \['throttled'\]"):
        pipeline_dag(source(), throttles, CollectRecords(), key="symbol", side_sinks=sides)


def test_pipeline_dag_names_what_is_not_an_operator():
    with pytest.raises(DagError, match=r"operators\[1\] is a Generator"):
        pipeline_dag(source(), [Map(symbol_of), source()], CollectRecords())


def test_settings_are_checked_when_the_runtime_is_made():
    with pytest.raises(SettingsError, match=r"unknown engine setting.*the settings are slots, "):
        PipelineRuntime(slotz=4)
    with pytest.raises(SettingsError, match="linger must be >= 0 seconds, got -1"):
        PipelineRuntime(linger=-1, inline=True)  # checked even where nothing will use them
    with pytest.raises(RingflowError, match="cannot launch one in the background"):
        PipelineRuntime(inline=True).launch_dag(Dag("x"))


def test_pipeline_and_dag_inline_and_across_processes_give_the_same_bars():
    inline = PipelineRuntime(inline=True)
    processes = PipelineRuntime(slots=4, linger=0.001)
    shape = {"key": "symbol", "parallelism": 2, "side_sinks": {"late": CollectRecords()}}
    reference = inline.run_pipeline(source(), bars_operators(), CollectRecords(), **shape)
    bars = by_window(reference.collected("sink"))
    assert len(bars) > 100
    assert sum(b.count for b in bars) == reference.nodes["source"].records_out
    assert reference.collected("windowaggregate_late") == []  # lateness covers the disorder

    across = processes.run_pipeline(
        source(), bars_operators(), CollectRecords(), timeout=WAIT, **shape
    )
    assert by_window(across.collected("sink")) == bars

    dag = Dag("by_hand")
    ticks = dag.source("ticks", source())
    kept = ticks.key_by("symbol").apply("positive", Filter(positive), 2)
    windowed = kept.key_by("symbol").apply("bars", WindowAggregate(Tumbling("20ms"), OHLCV()), 2)
    windowed.sink("out", CollectRecords())
    windowed.side("late").sink("late", CollectRecords())
    assert by_window(inline.run_dag(dag).collected("out")) == bars


def test_a_timed_out_run_leaves_no_job_behind():
    dag = Dag("endless")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002)).sink("out", Collect())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"still running after 0\.5 s"):
        PipelineRuntime().run_dag(dag, timeout=0.5)
    assert time.monotonic() - started < WAIT
    # the autouse fixture checks that no process or segment is left
