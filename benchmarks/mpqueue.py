"""The baseline a user builds with the standard library: processes and ``multiprocessing.Queue``.

One source process runs the same ``GeneratorLogic`` as ringflow's source, routes each tick
by mmh3 (``partitioning.replica_for``, cached per symbol, the key groups of ringflow's
``key_by``) and puts batches of ``BATCH`` ticks, as ``(symbol, ts, price, size)`` tuples
(pickling tuples costs well under half of pickling ``Tick`` structs, so this is the
faster choice), on one bounded ``multiprocessing.Queue(maxsize=QUEUE_SLOTS)`` per worker.
Each message is ``(watermark, rows)``: the newest generator watermark seen before the
rows were cut, which is safe to apply after them (every tick it covers is in this batch
or an earlier one). ``R`` worker processes aggregate with ``benchmarks.handroll.HandBars``
and return their digest on a result queue.

Timing: every process starts (spawned, like ringflow's workers), imports, and waits at a
barrier; the measured interval runs from the source's first batch after the barrier to the
last worker's end of input (CLOCK_MONOTONIC in every process). ``wall_s`` counts from the
first process start to the last join. The barrier gives this baseline its full start-up for
free, which ringflow's number does not get.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from typing import Any

from benchmarks.checksum import combine
from benchmarks.common import KEY_GROUPS, Workload, running, throughput_row
from benchmarks.handroll import MIN_WATERMARK, HandBars
from engine.operator import Context, Watermark
from operators.generator import GeneratorLogic
from partitioning import replica_for

BATCH = 1000
Rows = list[tuple[str, int, float, float]]
QUEUE_SLOTS = 8
JOIN_S = 60.0


def routed_batches(logic: GeneratorLogic, replicas: int) -> Iterator[tuple[int, int, Rows]]:
    """The generator's ticks as ``(replica, watermark, rows)``: mmh3-routed, in batches of
    ``BATCH`` rows, each with the watermark current when it filled; partial batches last.
    The loop a user would write by hand, shared by the ``mp_queue`` and ``ray`` baselines."""
    route: dict[str, int] = {}
    buffers: list[Rows] = [[] for _ in range(replicas)]
    watermark = MIN_WATERMARK
    for item in logic.batches():
        if isinstance(item, Watermark):
            watermark = item.ts
            continue
        # the generator's columns, as (symbol, ts, price, size) rows
        for row in zip(*item.data, strict=True):
            symbol = row[0]
            r = route.get(symbol)
            if r is None:
                r = route[symbol] = replica_for(symbol, replicas, KEY_GROUPS)
            buffer = buffers[r]
            buffer.append(row)
            if len(buffer) >= BATCH:
                yield r, watermark, buffer
                buffers[r] = []
    for r in range(replicas):
        yield r, watermark, buffers[r]


def _source(work: Workload, queues: list[Any], barrier: Barrier, results: Any) -> None:
    logic = GeneratorLogic(work.generator(), Context("mp_queue.source"))
    barrier.wait()
    started = time.monotonic_ns()
    cpu = time.process_time()
    for r, watermark, rows in routed_batches(logic, len(queues)):
        queues[r].put((watermark, rows))
    for queue in queues:
        queue.put(None)
    results.put(("source", started, time.process_time() - cpu))


def _worker(work: Workload, queue: Any, barrier: Barrier, results: Any) -> None:
    bars = HandBars(work.window_ns)
    barrier.wait()
    cpu = time.process_time()
    while (message := queue.get()) is not None:
        watermark, rows = message
        bars.add_rows(rows, len(rows))
        bars.advance(watermark)
    digest = bars.finish()
    ended = time.monotonic_ns()
    results.put(("worker", ended, time.process_time() - cpu, digest, bars.ticks, bars.late))


def run_mp_queue(work: Workload, replicas: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    wall = time.perf_counter()
    queues = [ctx.Queue(maxsize=QUEUE_SLOTS) for _ in range(replicas)]
    results = ctx.Queue()
    barrier = ctx.Barrier(replicas + 1)
    procs = [ctx.Process(target=_source, args=(work, queues, barrier, results), daemon=True)]
    procs += [
        ctx.Process(target=_worker, args=(work, q, barrier, results), daemon=True) for q in queues
    ]
    with running(procs, "mp_queue", JOIN_S):
        messages = [results.get(timeout=JOIN_S * 10) for _ in range(1 + replicas)]
    wall = time.perf_counter() - wall
    [(_, started, source_cpu)] = [m for m in messages if m[0] == "source"]
    workers = [m for m in messages if m[0] == "worker"]
    digest = combine([(d.bars, d.total) for _, _, _, d, _, _ in workers])
    ticks = sum(m[4] for m in workers)
    return throughput_row(
        "mp_queue",
        replicas,
        ticks,
        (max(m[1] for m in workers) - started) / 1e9,
        digest.checksum(),
        sources=1,
        wall_s=wall,
        cpu_s=source_cpu + sum(m[2] for m in workers),
        late=sum(m[5] for m in workers),
    )
