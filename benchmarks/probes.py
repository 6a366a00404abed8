"""Benchmark-only sources and sinks for ringflow jobs (module level, so they pickle).

* ``Timed(source)``: the source, plus a counter ``started_ns_<replica>`` holding
  ``time.monotonic_ns()`` when the replica asks for its first batch: the start of the
  measured interval (CLOCK_MONOTONIC is one clock for every process on the machine).
* ``DigestSink()``: folds bars into ``benchmarks.checksum.Digest`` in the worker and returns
  only ``DigestReport(bars, total, closed_ns)``: no bar travels back to the driver, and
  ``closed_ns`` (monotonic, at end of input) ends the measured interval.
* ``ClockTicks(rate, ...)``: ticks whose event time is their creation time
  (``time.time_ns()``), a batch per millisecond at a fixed rate, for latency; or, with
  ``rate=None``, a fixed count as fast as the job takes them, for its maximum.
* ``LatencySink(mode)``: per record, ``time.time_ns()`` on arrival minus the record's event
  time (``mode="ticks"``) or minus its window end (``mode="bars"``; a bar whose window has
  not ended on arrival was fired by end of input and is not sampled); returns the samples.
* ``StallSink(flag)``: holds every write while the file ``flag`` exists, awaiting on the
  worker's event loop so its heartbeat stays fresh: a destination that stops accepting.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.checksum import Digest
from engine.columns import Columns
from engine.operator import Batch, Context, Sink, SinkLogic, Source, SourceLogic, Watermark
from engine.records import Tick

STARTED = "started_ns_"
Item = Batch | Columns | Watermark  # what a source yields
BEHIND = "behind_ns_"
LATE = "late_ns_"


def identity(record: Any) -> Any:
    """The function of the latency job's ``Map``: records pass through unchanged."""
    return record


@dataclass(frozen=True)
class Timed(Source):
    """``inner``, with its start time recorded per replica (see the module docstring)."""

    inner: Source

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_type", self.inner.output_type)

    def build(self, ctx: Context) -> SourceLogic:
        return _TimedLogic(self.inner.build(ctx), ctx)


class _TimedLogic(SourceLogic):
    def __init__(self, inner: SourceLogic, ctx: Context) -> None:
        self.inner = inner
        self.ctx = ctx

    def batches(self) -> Iterator[Item] | AsyncIterator[Item]:
        items = self.inner.batches()
        return self._async(items) if isinstance(items, AsyncIterator) else self._sync(items)

    def _started(self) -> None:
        self.ctx.count(f"{STARTED}{self.ctx.replica}", time.monotonic_ns())

    def _sync(self, items: Iterator[Item]) -> Iterator[Item]:
        self._started()  # runs when the first batch is asked for, as does _async's
        yield from items

    async def _async(self, items: AsyncIterator[Item]) -> AsyncIterator[Item]:
        self._started()
        async for item in items:
            yield item


def _per_replica(counters: dict[str, int], prefix: str) -> list[int]:
    """The values of the per-replica counters ``<prefix><replica>``."""
    return [v for k, v in counters.items() if k.startswith(prefix)]


def started_ns(counters: dict[str, int]) -> int:
    """The earliest replica start recorded by ``Timed``."""
    return min(_per_replica(counters, STARTED))


def behind_ns(counters: dict[str, int]) -> int:
    """The furthest any ``ClockTicks`` replica fell behind its schedule (0 if none said)."""
    return max(_per_replica(counters, BEHIND), default=0)


def late_ns(counters: dict[str, int]) -> int:
    """How late the latest ``ClockTicks`` replica finished its schedule (0 if none said)."""
    return max(_per_replica(counters, LATE), default=0)


@dataclass(frozen=True)
class DigestReport:
    bars: int
    total: int
    closed_ns: int


@dataclass(frozen=True)
class DigestSink(Sink):
    """Fold bars into a digest in the worker (see the module docstring)."""

    def build(self, ctx: Context) -> SinkLogic:
        return _DigestLogic()


class _DigestLogic(SinkLogic):
    def __init__(self) -> None:
        self.digest = Digest()

    def write(self, batch: Batch) -> None:
        add = self.digest.add_bar
        for bar in batch:
            add(bar)

    def close(self) -> DigestReport:
        return DigestReport(self.digest.bars, self.digest.total, time.monotonic_ns())


@dataclass(frozen=True)
class ClockTicks(Source):
    """``rate`` ticks/s for ``seconds`` over ``symbols`` symbols, stamped at creation.

    The replica wakes after each ``interval`` boundary of its schedule and creates the ticks
    owed up to the last boundary passed (an absolute schedule: a late wake-up creates more,
    so the rate holds; uvloop's timers count whole milliseconds, so wake-ups come up to a
    millisecond late), all stamped with the wake-up's ``time.time_ns()``. It is an async
    generator that awaits its wake-ups, as a provider's source awaits its feed, so its
    worker sends each batch as soon as the source waits (it is idle), not at its next
    wake-up or after the linger. With ``watermarks`` it yields ``Watermark(newest -
    lateness_ns)`` after each batch; without, none.

    Stamping at creation leaves out how late the ticks were created, so each replica also
    counts ``behind_ns_<replica>``, the furthest its creation fell behind the schedule, and
    ``late_ns_<replica>``, how late it finished it. A job that cannot take ``rate`` holds
    the source back (backpressure), and this is where it shows: a stall it recovers from
    shows in the first, a rate it cannot keep up with in both.

    ``rate=None`` runs unpaced, for the job's maximum: ``seconds`` is ignored and the
    replicas create ``count`` ticks in all, in batches of ``batch``, as fast as they go.
    """

    rate: float | None
    seconds: float
    symbols: int = 1000
    interval: float = 0.001
    watermarks: bool = False
    lateness_ns: int = 0
    count: int = 0
    batch: int = 4096

    output_type = Tick

    def build(self, ctx: Context) -> SourceLogic:
        return _ClockTicksLogic(self, ctx)


class _ClockTicksLogic(SourceLogic):
    def __init__(self, config: ClockTicks, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        names = [f"S{s:04d}" for s in range(config.symbols)]
        self.names = names[ctx.replica :: ctx.parallelism]
        self.prices = [100.0 + (i % 50) / 100 for i in range(len(self.names))]
        self.share = len(self.names) / config.symbols

    def batches(self) -> Iterator[Batch | Watermark] | AsyncIterator[Batch | Watermark]:
        return self._unpaced() if self.config.rate is None else self._paced(self.config.rate)

    def _ticks(self, first: int, count: int, now: int) -> list[Tick]:
        """Ticks ``first`` .. ``first + count - 1`` of this replica, stamped ``now``."""
        names, prices, n = self.names, self.prices, len(self.names)
        return [Tick(names[i % n], now, prices[i % n], 100.0) for i in range(first, first + count)]

    def _unpaced(self) -> Iterator[Batch | Watermark]:
        cfg = self.config
        total = int(cfg.count * self.share)
        for first in range(0, total, cfg.batch):
            now = time.time_ns()
            yield self._ticks(first, min(cfg.batch, total - first), now)
            if cfg.watermarks:
                yield Watermark(now - cfg.lateness_ns)

    async def _paced(self, rate: float) -> AsyncIterator[Batch | Watermark]:
        cfg, ctx = self.config, self.ctx
        rate *= self.share
        total = int(rate * cfg.seconds) if self.names else 0
        emitted = 0
        behind = 0.0  # seconds: the furthest creation fell behind the schedule
        start = time.monotonic()
        while emitted < total:
            elapsed = time.monotonic() - start
            passed = math.floor(elapsed / cfg.interval) * cfg.interval  # the last boundary
            owed = min(total, int(passed * rate)) - emitted
            # The oldest tick owed was due at emitted / rate; an on-time wake-up owes
            # those of the last interval only.
            behind = max(behind, elapsed - emitted / rate)
            if owed > 0:
                now = time.time_ns()
                batch = self._ticks(emitted, owed, now)
                emitted += owed
                yield batch
                if cfg.watermarks:
                    yield Watermark(now - cfg.lateness_ns)
            # Await the next interval boundary of the schedule: one batch per interval. uvloop
            # counts whole milliseconds and runs a shorter timer at once, so the wait is
            # rounded up: an early wake-up would make a sliver of a batch.
            elapsed = time.monotonic() - start
            wait = (math.floor(elapsed / cfg.interval) + 1) * cfg.interval - elapsed
            await asyncio.sleep(math.ceil(wait * 1000 - 1e-9) / 1000)
        ctx.count(f"{BEHIND}{ctx.replica}", int(behind * 1e9))
        late = time.monotonic() - start - total / rate if total else 0.0
        ctx.count(f"{LATE}{ctx.replica}", int(max(0.0, late) * 1e9))


@dataclass(frozen=True)
class LatencyReport:
    samples: bytes  # array('q') of nanoseconds
    late_start_ns: int  # samples before this event time were warm-up and dropped
    closes: dict[int, int]  # bars: window end -> latency of its slowest bar here (ns)
    closed_ns: int  # time.monotonic_ns() at end of input (ends a calibration's interval)


@dataclass(frozen=True)
class LatencySink(Sink):
    """Latency per record on arrival (see the module docstring); ``warmup_s`` of event
    time after the first record are not sampled (processes starting, caches filling)."""

    mode: str = "ticks"  # or "bars"
    warmup_s: float = 1.0

    def build(self, ctx: Context) -> SinkLogic:
        return _LatencyLogic(self.mode, int(self.warmup_s * 1e9))


class _LatencyLogic(SinkLogic):
    def __init__(self, mode: str, warmup_ns: int) -> None:
        self.bars = mode == "bars"
        self.warmup_ns = warmup_ns
        self.samples = array("q")
        self.from_ns: int | None = None
        self.closes: dict[int, int] = {}

    def write(self, batch: Batch) -> None:
        now = time.time_ns()
        times = [b.window_end for b in batch] if self.bars else [t.ts for t in batch]
        if self.from_ns is None:
            self.from_ns = min(times) + self.warmup_ns
        cut = self.from_ns
        # A bar whose window has not ended yet was fired by end of input, not by time.
        kept = [t for t in times if cut <= t <= now]
        self.samples.extend([now - t for t in kept])
        if self.bars:
            closes = self.closes
            for end in set(kept):
                closes[end] = max(closes.get(end, 0), now - end)

    def close(self) -> LatencyReport:
        return LatencyReport(
            self.samples.tobytes(), self.from_ns or 0, self.closes, time.monotonic_ns()
        )


@dataclass(frozen=True)
class StallSink(Sink):
    """Counts bars; every write waits while the file ``flag`` exists (async, so the
    worker's heartbeat keeps going). ``close()`` returns the record count."""

    flag: str
    poll_s: float = 0.02

    def build(self, ctx: Context) -> SinkLogic:
        return _StallLogic(self.flag, self.poll_s)


class _StallLogic(SinkLogic):
    def __init__(self, flag: str, poll_s: float) -> None:
        self.flag = flag
        self.poll_s = poll_s
        self.records = 0

    def write(self, batch: Batch) -> Any:
        self.records += len(batch)
        if os.path.exists(self.flag):
            return self._held()
        return None

    async def _held(self) -> None:
        while os.path.exists(self.flag):
            await asyncio.sleep(self.poll_s)

    def close(self) -> int:
        return self.records
