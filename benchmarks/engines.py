"""The bars job through ringflow, and the single-process floor.

Both return a scaling row (``benchmarks.common.throughput_row``). ``seconds`` is the time
the job processes: for ringflow from the first source replica asking for its first batch
to the last digest sink closing (process start-up and teardown excluded; both ends read
CLOCK_MONOTONIC, one clock for every process); ``wall_s`` is the driver's time around
``engine.run``, start-up and teardown included. For ``single_process`` the two are the same
interval: generating every batch with the same ``GeneratorLogic`` and aggregating it, in
one loop, in this process.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.checksum import Digest, combine
from benchmarks.common import Workload, throughput_row
from benchmarks.handroll import HandBars
from benchmarks.probes import DigestSink, Timed, started_ns
from engine.dag import Dag
from engine.job import run
from engine.operator import Context, Source, Watermark
from engine.result import JobResult
from operators import OHLCV, Tumbling, WindowAggregate
from operators.generator import GeneratorLogic


def bars_dag(work: Workload, replicas: int, sources: int, source: Source | None = None) -> Dag:
    """``source`` (default: the workload's generator; ``sources`` replicas) -> key_by
    symbol -> OHLCV bars (``replicas``) -> a digest sink per bars replica (forward edge)."""
    dag = Dag("bench-bars")
    ticks = dag.source("ticks", Timed(source or work.generator()), parallelism=sources)
    # No tick is late (benchmarks.common); one would be counted (each row's late), as the
    # baselines count theirs.
    aggregate = WindowAggregate(Tumbling(work.window_ns), OHLCV(), late_output=None)
    bars = ticks.key_by("symbol").apply("bars", aggregate, replicas)
    bars.sink("digest", DigestSink(), replicas)
    return dag


def run_single_process(work: Workload) -> dict[str, Any]:
    started = time.perf_counter()
    cpu = time.process_time()
    logic = GeneratorLogic(work.generator(), Context("single_process"))
    bars = HandBars(work.window_ns)
    for item in logic.batches():
        if isinstance(item, Watermark):
            bars.advance(item.ts)
        else:
            bars.add_rows(zip(*item.data, strict=True), len(item))  # its columns, as rows
    bars.finish()
    return single_process_row(bars, time.perf_counter() - started, time.process_time() - cpu)


def single_process_row(bars: HandBars, seconds: float, cpu_s: float) -> dict[str, Any]:
    """The scaling row of a single-process run that aggregated with ``bars`` (finished)
    in ``seconds``, ``cpu_s`` of CPU."""
    return throughput_row(
        "single_process",
        1,
        bars.ticks,
        seconds,
        bars.digest.checksum(),
        sources=1,
        wall_s=seconds,
        cpu_s=cpu_s,
        late=bars.late,
    )


def run_ringflow(
    work: Workload,
    replicas: int,
    sources: int,
    *,
    source: Source | None = None,
    engine: str = "ringflow",
    **settings: Any,
) -> tuple[dict[str, Any], JobResult]:
    """The row and the ``JobResult`` (its node timings feed the engine-overhead report);
    ``source`` and ``engine`` as for another source than the generator."""
    dag = bars_dag(work, replicas, sources, source)
    started = time.perf_counter()
    result = run(dag, **settings)
    wall = time.perf_counter() - started
    reports = result.sinks["digest"]
    digest: Digest = combine([(r.bars, r.total) for r in reports])
    seconds = (max(r.closed_ns for r in reports) - started_ns(result.nodes["ticks"].counters)) / 1e9
    ticks = result.nodes["ticks"].records_out
    cpu = sum(n.timing.get("cpu_s", 0.0) for n in result.nodes.values())
    row = throughput_row(
        engine,
        replicas,
        ticks,
        seconds,
        digest.checksum(),
        sources=sources,
        wall_s=wall,
        cpu_s=cpu,
        late=result.counter("late"),
        batch=work.batch,
        **settings,
    )
    return row, result


def overhead(result: JobResult, replicas: int, sources: int, seconds: float) -> dict[str, Any]:
    """Per-tick CPU of each node, split into the node's own logic and the engine's share,
    and how busy its replicas were.

    ``logic`` is CPU time inside the node's logic (generation for the source, aggregation
    and firing for bars, digesting for the sink); ``engine`` is the rest of the worker's
    CPU after start-up: encoding and splitting on the way out, decoding on the way in,
    framing, channels, the worker loop. Microseconds per tick of the job's input, summed
    over replicas (so CPU, not wall time). ``busy_pct`` is a node's CPU time over its
    replicas' share of the measured ``seconds``; ``blocked_pct`` the same for the time its
    writers waited for credit (backpressure). A node well under 100% busy was waiting on
    another.
    """
    ticks = result.nodes["ticks"].records_out or 1
    row: dict[str, Any] = {
        "bench": "overhead",
        "engine": "ringflow",
        "replicas": replicas,
        "sources": sources,
        "ticks": ticks,
    }
    total_cpu = total_logic = 0.0
    for name, node in result.nodes.items():
        cpu = node.timing.get("cpu_s", 0.0)
        logic = node.timing.get("logic_s", 0.0)
        total_cpu += cpu
        total_logic += logic
        row[f"{name}_cpu_us"] = round(cpu / ticks * 1e6, 3)
        row[f"{name}_logic_us"] = round(logic / ticks * 1e6, 3)
        row[f"{name}_engine_us"] = round((cpu - logic) / ticks * 1e6, 3)
        span = (sources if name == "ticks" else replicas) * seconds or 1.0
        row[f"{name}_busy_pct"] = round(100 * cpu / span, 1)
        row[f"{name}_blocked_pct"] = round(100 * node.timing.get("backpressured_s", 0.0) / span, 1)
    row["total_cpu_us"] = round(total_cpu / ticks * 1e6, 3)
    row["total_logic_us"] = round(total_logic / ticks * 1e6, 3)
    row["total_engine_us"] = round((total_cpu - total_logic) / ticks * 1e6, 3)
    return row
