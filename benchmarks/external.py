"""The bars job on other stream processors, when installed (the optional ``bench`` extra).

``available()`` says which of ``bytewax`` and ``ray`` import; the others are skipped with a
note. Both get the same ticks (``GeneratorLogic``) and must produce the same digest.

* ``bytewax``: the idiomatic dataflow. ``R`` processes of one worker each, joined over
  loopback TCP (``bytewax.testing.cluster_main``); the input has ``R`` partitions, partition
  ``r`` generating replica ``r`` of ``R`` of the stream; ``key_on`` symbol, then
  ``fold_window`` with a ``TumblingWindower`` of the window length and an ``EventClock`` on
  the tick's time, folding the same OHLCV accumulator; each worker's sink digests its
  bars. By default ``EventClock`` also advances its watermark with system time, which
  suits a live feed: a replay processed slower than real time (bytewax here: about half)
  would see its watermark overtake the ticks after ``wait / (1 - speed)`` seconds and drop
  them as late. The clock is given a frozen ``now_getter`` and no wake-ups, so its
  watermark is the newest tick's time minus the lateness, as in every other engine.
  Timing: from the first partition's first batch to the last sink's close, both written
  to files by the processes (CLOCK_MONOTONIC).
* ``ray``: one source actor generating, routing by mmh3 like ``mp_queue``, and sending
  ``(watermark, rows)`` batches of 1,000 tuple ticks to ``R`` aggregator actors
  (``HandBars``), at most ``QUEUE_SLOTS`` calls in flight per actor. Timing: from the
  source's first batch to the last actor's end of input; ``ray.init`` and actor creation
  are not counted (``init_s`` reports the first).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.checksum import Digest, combine
from benchmarks.common import Workload, running, throughput_row
from benchmarks.handroll import HandBars, bar_fields, fold_tick
from benchmarks.mpqueue import QUEUE_SLOTS, routed_batches
from engine.operator import Context, Watermark
from engine.records import Tick
from operators.generator import GeneratorLogic

JOIN_S = 600.0
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def available() -> dict[str, bool]:
    return {name: importlib.util.find_spec(name) is not None for name in ("bytewax", "ray")}


# --- bytewax ---------------------------------------------------------------------------


def _tick_time(tick: Tick) -> datetime.datetime:
    return EPOCH + datetime.timedelta(microseconds=tick.ts // 1000)


def _symbol(tick: Tick) -> str:
    return tick.symbol


def _frozen_now() -> datetime.datetime:
    """bytewax's "system time", held still: watermarks follow event time only."""
    return EPOCH


def _no_wake_up(close: datetime.datetime) -> None:
    """Windows close when a newer tick moves the watermark, or at end of input."""
    return None


def _new_acc() -> list[Any]:
    return []


def _fold(acc: list[Any], tick: Tick) -> list[Any]:
    return fold_tick(acc, tick.ts, tick.price, tick.size)


def _merge(a: list[Any], b: list[Any]) -> list[Any]:  # only session windows merge
    raise AssertionError("tumbling windows never merge")


def _bar_fields(size_ns: int, item: tuple[str, tuple[int, list[Any]]]) -> tuple[Any, ...]:
    symbol, (_, acc) = item
    start = acc[0] - acc[0] % size_ns
    return bar_fields(symbol, start, start + size_ns, acc)


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def _bytewax_flow(work: Workload, parts: int, outdir: str) -> Any:
    import functools

    import bytewax.operators as op  # type: ignore[import-not-found, unused-ignore]
    from bytewax.dataflow import Dataflow  # type: ignore[import-not-found, unused-ignore]
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # type: ignore[import-not-found, unused-ignore]
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window  # type: ignore[import-not-found, unused-ignore]
    from bytewax.outputs import DynamicSink, StatelessSinkPartition  # type: ignore[import-not-found, unused-ignore]

    class Partition(StatefulSourcePartition[Tick, None]):
        def __init__(self, replica: int) -> None:
            self.replica = replica
            ctx = Context("bytewax", replica, parts)
            self.items: Iterator[Any] = iter(GeneratorLogic(work.generator(), ctx).batches())
            self.first = True

        def next_batch(self) -> list[Tick]:
            if self.first:
                self.first = False
                _write_json(f"{outdir}/start-{self.replica}", {"ns": time.monotonic_ns()})
            for item in self.items:  # raises StopIteration at the end, as bytewax wants
                if not isinstance(item, Watermark):
                    return list(item)
            raise StopIteration

        def snapshot(self) -> None:
            return None

    class Ticks(FixedPartitionedSource[Tick, None]):
        def list_parts(self) -> list[str]:
            return [str(r) for r in range(parts)]

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Partition:
            return Partition(int(for_part))

    class DigestPart(StatelessSinkPartition[Any]):
        def __init__(self, path: str, late: bool) -> None:
            self.path, self.late = path, late
            self.digest = Digest()
            self.count = 0

        def write_batch(self, items: list[Any]) -> None:
            if self.late:
                self.count += len(items)
                return
            for fields in items:
                self.digest.add(*fields)

        def close(self) -> None:
            d = self.digest
            data = {"bars": d.bars, "total": d.total, "late": self.count}
            _write_json(self.path, {**data, "closed_ns": time.monotonic_ns()})

    class DigestOut(DynamicSink[Any]):
        def __init__(self, name: str) -> None:
            self.name = name

        def build(self, step_id: str, worker_index: int, worker_count: int) -> DigestPart:
            return DigestPart(f"{outdir}/{self.name}-{worker_index}", self.name == "late")

    flow = Dataflow("bench_bars")
    ticks = op.input("ticks", flow, Ticks())
    keyed = op.key_on("symbol", ticks, _symbol)
    clock = EventClock(
        _tick_time,
        wait_for_system_duration=datetime.timedelta(microseconds=work.lateness_ns // 1000),
        now_getter=_frozen_now,
        to_system_utc=_no_wake_up,
    )
    windower = TumblingWindower(
        length=datetime.timedelta(microseconds=work.window_ns // 1000), align_to=EPOCH
    )
    out = fold_window("bars", keyed, clock, windower, _new_acc, _fold, _merge, ordered=False)
    bars = op.map("fields", out.down, functools.partial(_bar_fields, work.window_ns))
    op.output("digest", bars, DigestOut("digest"))
    op.output("late", out.late, DigestOut("late"))
    return flow


def _bytewax_process(work: Workload, addresses: list[str], proc_id: int, outdir: str) -> None:
    from bytewax.testing import cluster_main  # type: ignore[import-not-found, unused-ignore]

    cluster_main(_bytewax_flow(work, len(addresses), outdir), addresses, proc_id)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_bytewax(work: Workload, replicas: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(replicas)]
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-bytewax-") as outdir:
        wall = time.perf_counter()
        procs = [
            ctx.Process(target=_bytewax_process, args=(work, addresses, i, outdir), daemon=True)
            for i in range(replicas)
        ]
        with running(procs, "bytewax", JOIN_S):
            pass
        wall = time.perf_counter() - wall
        parts: dict[str, list[dict[str, Any]]] = {"start": [], "digest": [], "late": []}
        for name in os.listdir(outdir):
            with open(os.path.join(outdir, name)) as f:
                parts[name.split("-")[0]].append(json.load(f))
    digest = combine([(d["bars"], d["total"]) for d in parts["digest"]])
    started = min(s["ns"] for s in parts["start"])
    seconds = (max(d["closed_ns"] for d in parts["digest"]) - started) / 1e9
    return throughput_row(
        "bytewax",
        replicas,
        work.ticks,
        seconds,
        digest.checksum(),
        sources=replicas,
        wall_s=wall,
        late=sum(d["late"] for d in parts["late"]),
    )


# --- ray -------------------------------------------------------------------------------


class _Aggregator:
    """Ray actor body: one ``HandBars`` fed ``(watermark, rows)`` batches."""

    def __init__(self, work: Workload) -> None:
        self.bars = HandBars(work.window_ns)
        self.cpu = 0.0  # set when the run starts (ready)

    def ready(self) -> bool:
        self.cpu = time.process_time()
        return True

    def add(self, watermark: int, rows: list[tuple[str, int, float, float]]) -> None:
        self.bars.add_rows(rows, len(rows))
        self.bars.advance(watermark)

    def finish(self) -> dict[str, Any]:
        digest = self.bars.finish()
        return {
            "bars": digest.bars,
            "total": digest.total,
            "ticks": self.bars.ticks,
            "late": self.bars.late,
            "ended_ns": time.monotonic_ns(),
            "cpu_s": time.process_time() - self.cpu,
        }


class _Source:
    """Ray actor body: generates, routes by mmh3 and sends 1,000-tick batches."""

    def __init__(self, work: Workload) -> None:
        self.work = work

    def run(self, actors: list[Any]) -> dict[str, Any]:
        import ray  # type: ignore[import-not-found, unused-ignore]

        logic = GeneratorLogic(self.work.generator(), Context("ray.source"))
        in_flight: list[list[Any]] = [[] for _ in actors]
        started = time.monotonic_ns()
        cpu = time.process_time()
        for r, watermark, rows in routed_batches(logic, len(actors)):
            calls = in_flight[r]
            if len(calls) >= QUEUE_SLOTS:
                ray.get(calls.pop(0))
            calls.append(actors[r].add.remote(watermark, rows))
        ray.get([call for calls in in_flight for call in calls])
        return {"started_ns": started, "cpu_s": time.process_time() - cpu}


def run_ray(work: Workload, replicas: int) -> dict[str, Any]:
    import ray  # type: ignore[import-not-found, unused-ignore]

    init_s = 0.0
    if not ray.is_initialized():
        init_s = time.perf_counter()
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        init_s = time.perf_counter() - init_s
    wall = time.perf_counter()
    aggregator: Any = ray.remote(_Aggregator)
    source_actor: Any = ray.remote(_Source)
    actors = [aggregator.remote(work) for _ in range(replicas)]
    source = source_actor.remote(work)
    ray.get([a.ready.remote() for a in actors])
    src = ray.get(source.run.remote(actors))
    parts = ray.get([a.finish.remote() for a in actors])
    wall = time.perf_counter() - wall
    for actor in [*actors, source]:
        ray.kill(actor)
    digest = combine([(p["bars"], p["total"]) for p in parts])
    return throughput_row(
        "ray",
        replicas,
        sum(p["ticks"] for p in parts),
        (max(p["ended_ns"] for p in parts) - src["started_ns"]) / 1e9,
        digest.checksum(),
        sources=1,
        wall_s=wall,
        cpu_s=src["cpu_s"] + sum(p["cpu_s"] for p in parts),
        late=sum(p["late"] for p in parts),
        init_s=round(init_s, 2),
    )


def shutdown() -> None:
    """Stop the local ray cluster if this process started one."""
    if importlib.util.find_spec("ray") is not None:
        import ray  # type: ignore[import-not-found, unused-ignore]

        if ray.is_initialized():
            ray.shutdown()
