"""End-to-end latency of ringflow jobs at a fixed input rate.

The source is ``benchmarks.probes.ClockTicks``: every millisecond it creates the ticks it
owes at ``rate`` ticks/s, stamped with their creation time (``time.time_ns()``) as event
time. Two jobs, each run once per linger setting:

* ``ticks``: source -> key_by symbol -> ``Map(identity)`` x R -> ``LatencySink`` x R. No
  watermarks, so batches leave a worker when full or when their oldest record has waited
  ``linger``. A sample per record: arrival at the sink minus creation.
* ``bars``: source (a watermark after every batch, lateness 0) -> key_by symbol ->
  ``WindowAggregate(Tumbling(100 ms), OHLCV())`` x R -> ``LatencySink`` x R. A sample per
  bar: arrival at the sink minus ``window_end``. With event time = creation time and no
  lateness, ``window_end`` is when the window closed in wall time; the first tick past it
  (which moves the watermark) is created at the source's next wake-up, 0-2 ms later (1 ms
  intervals on uvloop's millisecond timers), so this is the delay from the event that
  closes a window to the bar's arrival, plus up to 2 ms.
  Watermarks flush batches, so linger matters little here. The bars of one window arrive
  together (one per symbol that traded in it, so about 1,000 a close), which makes the
  bars' p99 a statistic of window closes: the windows are 100 ms rather than the
  throughput job's 1 s so that a run has tens of closes, not a handful (the close's work,
  a bar per symbol, is the same for any window length). Each row also gives ``closes``
  with the median and slowest close (the latency of a close's last bar).

Each pipeline runs at about half its own maximum, measured just before by ``maximum``:
the same job unpaced (``ClockTicks(rate=None)``), a fixed number of ticks as fast as it
takes them. Records built one by one cost more per tick than the throughput section's
columns, so half of that section's rate would load these jobs well past half. One such
measurement read anywhere from 1.47 to 2.25 M ticks/s on the shared 2-core machine, and
one that reads high loads the run past half; so the maximum is the median of
``CALIBRATIONS`` (``half_load``).

Samples from the first second of event time are dropped (processes still starting).
Percentiles are over every remaining sample, nearest-rank.

Each row says how far the source fell behind its schedule at worst (``source_behind_ms``:
a stall downstream holds the source back, and is in the latencies too) and how late it
finished it (``source_late_ms``). A run that finished more than ``OVERLOAD_MS`` late did
not keep up with the rate it was given (the calibration overestimated the maximum, or the
machine was busy for a long stretch): its row says so (``overloaded``), and its latencies
are not latencies at half load.
"""

from __future__ import annotations

import math
import statistics
import time
from array import array
from typing import Any

from benchmarks.probes import (
    ClockTicks,
    LatencySink,
    Timed,
    behind_ns,
    identity,
    late_ns,
    started_ns,
)
from engine.dag import Dag
from engine.job import run
from engine.records import Tick
from operators import OHLCV, Map, Tumbling, WindowAggregate

BARS_WINDOW_NS = 100_000_000  # see the module docstring
OVERLOAD_MS = 100.0  # see the module docstring
CALIBRATIONS = 3  # see the module docstring


def latency_dag(
    mode: str, rate: float | None, seconds: float, replicas: int, count: int = 0
) -> Dag:
    """The ``mode`` pipeline at ``rate`` ticks/s for ``seconds``, or (``rate=None``) with
    ``count`` ticks unpaced, its source timed (``benchmarks.probes.Timed``)."""
    dag = Dag(f"latency-{mode}")
    source = ClockTicks(rate=rate, seconds=seconds, watermarks=mode == "bars", count=count)
    keyed = dag.source("ticks", Timed(source)).key_by("symbol")
    if mode == "ticks":
        out = keyed.apply("map", Map(identity, output_type=Tick), replicas)
    else:
        window = Tumbling(BARS_WINDOW_NS)
        aggregate = WindowAggregate(window, OHLCV(), late_output=None)  # in order: none late
        out = keyed.apply("bars", aggregate, replicas)
    out.sink("latency", LatencySink(mode), replicas)
    return dag


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def maximum(mode: str, replicas: int, ticks: int, linger: float) -> dict[str, Any]:
    """The ``mode`` pipeline's own maximum rate: ``ticks`` ticks unpaced, counted from the
    first source batch to the last sink's end of input (start-up excluded), as the
    throughput section counts."""
    result = run(latency_dag(mode, None, 0.0, replicas, count=ticks), linger=linger)
    ended = max(report.closed_ns for report in result.sinks["latency"])
    seconds = (ended - started_ns(result.nodes["ticks"].counters)) / 1e9
    done = result.nodes["ticks"].records_out
    return {
        "bench": "latency_max",
        "pipeline": mode,
        "replicas": replicas,
        "ticks": done,
        "seconds": round(seconds, 4),
        "ticks_per_s": round(done / seconds) if seconds > 0 else 0,
    }


def half_load(maxima: list[dict[str, Any]]) -> float:
    """Half the median of the ``maximum`` rows' rates: the rate a latency run is given."""
    return statistics.median(row["ticks_per_s"] for row in maxima) / 2


def run_latency(
    mode: str, rate: float, linger: float, seconds: float, replicas: int
) -> dict[str, Any]:
    dag = latency_dag(mode, rate, seconds, replicas)
    started = time.perf_counter()
    result = run(dag, linger=linger)
    wall = time.perf_counter() - started
    samples = array("q")
    closes: dict[int, int] = {}  # bars: window end -> its slowest bar over all replicas
    for report in result.sinks["latency"]:
        samples.frombytes(report.samples)
        for end, ns in report.closes.items():
            closes[end] = max(closes.get(end, 0), ns)
    ordered = sorted(samples)
    ticks = result.nodes["ticks"].records_out
    row: dict[str, Any] = {
        "bench": "latency",
        "engine": "ringflow",
        "pipeline": mode,
        "linger_ms": linger * 1e3,
        "window_ms": BARS_WINDOW_NS / 1e6 if mode == "bars" else None,
        "replicas": replicas,
        "rate": round(rate),
        "ticks": ticks,
        "samples": len(ordered),
        "wall_s": round(wall, 3),
        "source_behind_ms": round(behind_ns(result.nodes["ticks"].counters) / 1e6, 3),
        "source_late_ms": round(late_ns(result.nodes["ticks"].counters) / 1e6, 3),
    }
    row["overloaded"] = row["source_late_ms"] > OVERLOAD_MS
    if ordered:
        row.update(
            {
                "p50_ms": round(percentile(ordered, 50) / 1e6, 3),
                "p99_ms": round(percentile(ordered, 99) / 1e6, 3),
                "p999_ms": round(percentile(ordered, 99.9) / 1e6, 3),
                "max_ms": round(ordered[-1] / 1e6, 3),
                "mean_ms": round(sum(ordered) / len(ordered) / 1e6, 3),
            }
        )
    if closes:  # each window close is one event: its slowest bar, then over the closes
        slowest = sorted(closes.values())
        row.update(
            {
                "closes": len(slowest),
                "close_p50_ms": round(percentile(slowest, 50) / 1e6, 3),
                "close_max_ms": round(slowest[-1] / 1e6, 3),
            }
        )
    return row
