"""Small sources, operators and sinks for engine tests; importable by spawned workers."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.columns import Columns
from engine.operator import (
    Context,
    Operator,
    OperatorLogic,
    Sink,
    SinkLogic,
    Source,
    SourceLogic,
    Watermark,
)
from operators.sinks import JsonLinesBars


@dataclass(frozen=True)
class Numbered(Source):
    """Records (key, seq, replica) for seq in this replica's share of range(count); a
    watermark (= seq) after every batch."""

    count: int
    keys: int = 10
    batch: int = 100
    pause_every: int = 0  # sleep `pause` seconds every this many batches (0: never)
    pause: float = 0.0
    forever: bool = False
    first_after: float = 0.0  # seconds before the first batch (a feed slow to speak)

    def build(self, ctx: Context) -> SourceLogic:
        return _NumberedLogic(self, ctx)


class _NumberedLogic(SourceLogic):
    def __init__(self, cfg: Numbered, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx

    def batches(self) -> Any:
        cfg, r, p = self.cfg, self.ctx.replica, self.ctx.parallelism
        seq = r
        n = 0
        time.sleep(cfg.first_after)
        while cfg.forever or seq < cfg.count:
            batch = []
            while len(batch) < cfg.batch and (cfg.forever or seq < cfg.count):
                batch.append((f"k{seq % cfg.keys}", seq, r))
                seq += p
            yield batch
            yield Watermark(seq)
            n += 1
            if cfg.pause_every and n % cfg.pause_every == 0:
                time.sleep(cfg.pause)


class Order(msgspec.Struct, frozen=True):
    venue: str
    id: str
    qty: int


@dataclass(frozen=True)
class Orders(Source):
    """``count`` orders as Columns batches of ``batch``, shared among the replicas: venues
    from a handful (a string column that repeats), ids all distinct (one that never does)."""

    count: int
    batch: int = 1000

    output_type = Order

    def build(self, ctx: Context) -> SourceLogic:
        return _OrdersLogic(self, ctx)


class _OrdersLogic(SourceLogic):
    def __init__(self, cfg: Orders, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx

    def batches(self) -> Any:
        cfg, r, p = self.cfg, self.ctx.replica, self.ctx.parallelism
        for start in range(r * cfg.batch, cfg.count, p * cfg.batch):
            n = range(start, min(start + cfg.batch, cfg.count))
            yield Columns(Order, ([f"V{i % 5}" for i in n], [f"order-{i}" for i in n], list(n)))


@dataclass(frozen=True)
class AsyncNumbered(Source):
    """``count`` records, ten per batch, each after ``asyncio.sleep(pause_s)`` (a bare
    yield to the loop by default). With ``then_wait``, the source then waits for a
    message that never comes (a provider with nothing to say): only a stop that cancels
    the wait can end it; with ``swallow_cancel`` too, it catches that cancellation and
    waits on (only the stop's deadline, ``stop_timeout``, ends it)."""

    count: int
    then_wait: bool = False
    swallow_cancel: bool = False
    pause_s: float = 0.0

    def build(self, ctx: Context) -> SourceLogic:
        return _AsyncLogic(self.count, self.then_wait, self.swallow_cancel, self.pause_s)


class _AsyncLogic(SourceLogic):
    def __init__(self, count: int, then_wait: bool, swallow_cancel: bool, pause_s: float) -> None:
        self.count = count
        self.then_wait = then_wait
        self.swallow_cancel = swallow_cancel
        self.pause_s = pause_s

    async def batches(self) -> Any:  # type: ignore[override]
        import asyncio

        for i in range(0, self.count, 10):
            await asyncio.sleep(self.pause_s)
            yield [("a", j, 0) for j in range(i, min(i + 10, self.count))]
        while self.then_wait:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                if not self.swallow_cancel:
                    raise
            else:
                yield [("never", -1, 0)]


@dataclass(frozen=True)
class AsyncUnpicklable(Source):
    """Emits one record that cannot be pickled, then waits forever: the partial batch is
    flushed (and fails to encode) while the source waits."""

    def build(self, ctx: Context) -> SourceLogic:
        return _AsyncUnpicklableLogic()


class _AsyncUnpicklableLogic(SourceLogic):
    async def batches(self) -> Any:  # type: ignore[override]
        import asyncio

        yield [lambda: None]
        await asyncio.Event().wait()  # never set
        yield []


@dataclass(frozen=True)
class RunningSum(Operator):
    """Per (key, upstream replica): emits (key, seq, running count) for each record; the
    output depends only on the order of records per (key, source replica), which the engine
    preserves, not on how replicas interleave."""

    def build(self, ctx: Context) -> OperatorLogic:
        return _RunningSumLogic()


class _RunningSumLogic(OperatorLogic):
    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], int] = {}

    def process(self, batch: list[Any]) -> list[Any]:
        out = []
        counts = self.counts
        last = self.last
        for key, seq, replica in batch:
            k = (key, replica)
            if last.get(k, -1) >= seq:
                raise AssertionError(f"order broken for {k}: {seq} after {last[k]}")
            last[k] = seq
            n = counts.get(k, 0) + 1
            counts[k] = n
            out.append((key, seq, n))
        return out

    def on_eof(self) -> list[Any]:
        return [(key, -1 - r, n) for (key, r), n in sorted(self.counts.items())]


@dataclass(frozen=True)
class Explode(Operator):
    """Raises after `after` records, or dies by `signal` after `after` records."""

    after: int = 0
    kill_signal: int = 0
    hang: bool = False

    def build(self, ctx: Context) -> OperatorLogic:
        return _ExplodeLogic(self)


class _ExplodeLogic(OperatorLogic):
    def __init__(self, cfg: Explode) -> None:
        self.cfg = cfg
        self.seen = 0

    def process(self, batch: list[Any]) -> list[Any]:
        self.seen += len(batch)
        if self.seen > self.cfg.after:
            if self.cfg.kill_signal:
                os.kill(os.getpid(), self.cfg.kill_signal)
            if self.cfg.hang:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                while True:
                    time.sleep(1)
            raise ValueError(f"boom after {self.seen} records")
        return batch


@dataclass(frozen=True)
class SetsAside(Operator):
    """Sends every ``every``-th record to the side output "odd", which it does not declare."""

    every: int = 2

    def build(self, ctx: Context) -> OperatorLogic:
        return _SetsAsideLogic(self.every, ctx)


class _SetsAsideLogic(OperatorLogic):
    def __init__(self, every: int, ctx: Context) -> None:
        self.every, self.ctx = every, ctx

    def process(self, batch: list[Any]) -> list[Any]:
        self.ctx.emit_side("odd", batch[:: self.every])
        return batch


@dataclass(frozen=True)
class Collect(Sink):
    def build(self, ctx: Context) -> SinkLogic:
        return _CollectLogic()


class _CollectLogic(SinkLogic):
    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, batch: list[Any]) -> None:
        self.records.extend(batch)

    def close(self) -> Any:
        return self.records


@dataclass(frozen=True)
class Stall(Sink):
    """Counts what it receives; its first write (``hold="write"``), or its ``close()`` as
    a slow commit would (``hold="close"``), does not return until the file ``release``
    exists (at most ``STALL_LIMIT_S``)."""

    release: str
    hold: str = "write"

    def build(self, ctx: Context) -> SinkLogic:
        return _StallLogic(self.release, self.hold)


STALL_LIMIT_S = 120.0


class _StallLogic(SinkLogic):
    def __init__(self, release: str, hold: str) -> None:
        self.release = release
        self.hold = hold
        self.n = 0

    def _held(self, step: str) -> None:
        deadline = time.monotonic() + STALL_LIMIT_S
        while self.hold == step and not os.path.exists(self.release):
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def write(self, batch: list[Any]) -> None:
        self._held("write")
        self.n += len(batch)

    def close(self) -> Any:
        self._held("close")
        return self.n


@dataclass(frozen=True)
class Fragile(Sink):
    """A sink that fails on write (``fail_on="write"``) or on close, and whose abort takes
    ``abort_s`` seconds and then touches ``marker``."""

    marker: str
    fail_on: str = "write"
    abort_s: float = 0.0
    delay_s: float = 0.0  # sleep per write, to make a slow consumer

    def build(self, ctx: Context) -> SinkLogic:
        return _FragileLogic(self)


class _FragileLogic(SinkLogic):
    def __init__(self, cfg: Fragile) -> None:
        self.cfg = cfg
        self.n = 0

    def write(self, batch: list[Any]) -> None:
        if self.cfg.delay_s:
            time.sleep(self.cfg.delay_s)
        self.n += len(batch)
        if self.cfg.fail_on == "write":
            raise OSError("disk full")

    def close(self) -> Any:
        if self.cfg.fail_on == "close":
            raise OSError("rename failed")
        return self.n

    def abort(self) -> None:
        time.sleep(self.cfg.abort_s)
        with open(self.cfg.marker, "w") as f:
            f.write("aborted")


@dataclass(frozen=True)
class StartStamped(Source):
    """One record per replica: (CLOCK_MONOTONIC ns when it produced its first batch, replica)."""

    def build(self, ctx: Context) -> SourceLogic:
        return _StartStampedLogic(ctx)


class _StartStampedLogic(SourceLogic):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def batches(self) -> Any:
        yield [(time.monotonic_ns(), self.ctx.replica)]


@dataclass(frozen=True)
class SlowToOpen(Sink):
    """Takes ``delay`` seconds to set up (as a sink opening a connection might); its result
    is (CLOCK_MONOTONIC ns when set-up ended, the records it received)."""

    delay: float

    def build(self, ctx: Context) -> SinkLogic:
        time.sleep(self.delay)
        return _SlowToOpenLogic(time.monotonic_ns())


class _SlowToOpenLogic(SinkLogic):
    def __init__(self, opened_ns: int) -> None:
        self.opened_ns = opened_ns
        self.records: list[Any] = []

    def write(self, batch: list[Any]) -> None:
        self.records.extend(batch)

    def close(self) -> Any:
        return self.opened_ns, self.records


@dataclass(frozen=True)
class StallsAfterClose(Sink):
    """Finishes its work, then stalls for ``seconds``: while its close() result is sent
    (``where="send"``: the result takes that long to pickle) or, after it returned
    ``"closed"``, on its way out of the process (``where="exit"``: an exit handler), as a
    worker frozen there would."""

    where: str
    seconds: float

    def build(self, ctx: Context) -> SinkLogic:
        return _StallsAfterCloseLogic(self.where, self.seconds)


class _SlowToPickle:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        time.sleep(self.seconds)
        return (_SlowToPickle, (self.seconds,))


class _StallsAfterCloseLogic(SinkLogic):
    def __init__(self, where: str, seconds: float) -> None:
        self.where, self.seconds = where, seconds

    def write(self, batch: list[Any]) -> None:
        pass

    def close(self) -> Any:
        if self.where == "send":
            return _SlowToPickle(self.seconds)
        import atexit

        time.sleep(0.5)  # the source is gone before this result arrives, most likely
        atexit.register(time.sleep, self.seconds)
        return "closed"


def _slow_load(seconds: float) -> str:
    time.sleep(seconds)  # a large result's unpickling, on the coordinator's loop
    return "slow"


class _SlowToUnpickle:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        return (_slow_load, (self.seconds,))


class _NoLoad(Exception):
    """Pickles, but does not unpickle: its __init__ takes two arguments, its args one."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


@dataclass(frozen=True)
class Results(Sink):
    """Replica 0's close() result takes ``load_s`` to unpickle where it is received
    (``"slow"``) or, with ``load_s`` None, cannot be unpickled at all; the other replicas
    return ``"quick"`` ``delay_s`` later."""

    load_s: float | None
    delay_s: float = 0.0

    def build(self, ctx: Context) -> SinkLogic:
        return _ResultsLogic(ctx.replica, self.load_s, self.delay_s)


class _ResultsLogic(SinkLogic):
    def __init__(self, replica: int, load_s: float | None, delay_s: float) -> None:
        self.replica, self.load_s, self.delay_s = replica, load_s, delay_s

    def write(self, batch: list[Any]) -> None:
        pass

    def close(self) -> Any:
        if self.replica == 0:
            return _NoLoad(1, 2) if self.load_s is None else _SlowToUnpickle(self.load_s)
        time.sleep(self.delay_s)
        return "quick"


@dataclass(frozen=True)
class StubbornFile(JsonLinesBars):
    """A JSON-lines file sink that, after ``after`` records, hangs with SIGTERM ignored:
    only SIGKILL ends it, so its temporary is left for the job's teardown to remove."""

    after: int = 0

    def build(self, ctx: Context) -> SinkLogic:
        return _StubbornFileLogic(super().build(ctx), self.after)


class _StubbornFileLogic(SinkLogic):
    def __init__(self, inner: SinkLogic, after: int) -> None:
        self.inner = inner
        self.after = after
        self.seen = 0

    def write(self, batch: list[Any]) -> None:
        self.inner.write(batch)
        self.seen += len(batch)
        if self.seen > self.after:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)

    def close(self) -> Any:
        return self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


@dataclass(frozen=True)
class ManyCounters(Operator):
    """Passes records on and keeps ``names`` logic counters (a status answer of this node
    is then large: about 20 bytes a counter)."""

    names: int

    def build(self, ctx: Context) -> OperatorLogic:
        return _ManyCountersLogic(ctx, self.names)


class _ManyCountersLogic(OperatorLogic):
    def __init__(self, ctx: Context, names: int) -> None:
        self.ctx = ctx
        self.names = names

    def process(self, batch: list[Any]) -> list[Any]:
        for i in range(self.names):
            self.ctx.count(f"counter-{i:06d}")
        return batch


def tick_with_a_tuple_symbol(record: Any) -> Any:
    """A Map function whose Ticks break their type: a tuple where a str belongs."""
    from engine.records import Tick

    return Tick((record[0],), record[1], 1.0, 1.0)


@dataclass(frozen=True)
class MarkBuilt(Sink):
    """Touches the file ``marker`` when a worker builds it: whether any worker started."""

    marker: str

    def build(self, ctx: Context) -> SinkLogic:
        open(self.marker, "w").close()
        return _CollectLogic()
