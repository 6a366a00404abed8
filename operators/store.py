"""A sink into a store with a bounded write queue, that holds its input back while the
store's queue is deep.

The store is anything with the protocol of ``market_data_store``'s ``WriteCoordinator``
(``WriteCoordinatorLike``): ``start()``, ``submit_many(records)``, ``health()`` (its
``queue_size`` and ``capacity``) and ``stop(drain, timeout)``. ``market_data_store`` is
optional: ``WriteCoordinatorFactory`` imports it in the worker when a job uses it, and the
in-repo ``operators.memstore.MemoryStore`` serves tests and examples.

``StoreSink(factory, high_watermark, low_watermark)`` is the picklable config; a live store
cannot be pickled, so each sink replica calls ``factory(ctx)`` in its worker to build its own
(on the store's event loop, see ``operators.storeloop``) and starts it on the first batch.
Each ``write(batch)``:

1. submits the batch;
2. reads the queue depth into the ``queue_depth`` gauge;
3. if the depth is at or above ``high_watermark``, *pauses*: counts one ``pauses``, then polls
   the depth every ``poll_interval`` seconds until it is at or below ``low_watermark``,
   adding the time to the ``paused_ns`` counter as it goes (the gauge follows the depth).
   A store whose queue has not gone down for ``stall_timeout`` seconds of a pause fails
   the job with ``StoreError``: a store that takes nothing more would otherwise hold the
   job, a graceful stop included, for ever.

``write()`` does not return while paused, so the worker takes no input: its input channels
fill, credits stop flowing and the upstream nodes are backpressured up to the sources. The
engine reports ``pauses``, ``paused_ns`` and ``queue_depth`` in ``job.status()``, the job
result and the Prometheus metrics (``ringflow_sink_pauses_total``,
``ringflow_sink_paused_seconds_total``, ``ringflow_sink_queue_depth``), and the time the
upstream spends blocked as ``backpressured_s`` / ``ringflow_backpressured_ratio``.

A batch larger than the room left in the store's queue (its ``capacity`` less the depth) is
submitted in parts, each no larger than the room. The queue is then full, so after each part
but the last the sink pauses as in 3. (down to ``low_watermark``), and the parts are about
``capacity - low_watermark`` records each, not a trickle as the queue drains. The sink never
blocks inside ``submit_many`` (where a store that stopped taking records would hold it,
unwatched, for ever), and ``stall_timeout`` bounds every wait. A store whose ``health()``
gives no ``capacity`` gets each batch whole.

``close()`` stops the store with ``drain=True`` and returns a ``StoreResult``; a store still
holding records after ``drain_timeout`` seconds fails the job with ``StoreError`` rather than
lose them silently, and so does a store whose workers have all died while the sink waits,
and one whose ``summary()`` says it stored fewer records than it was given.
``abort()`` (a failed job) stops the store without draining.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.errors import DagError, StoreError
from engine.operator import Batch, Context, Files, Sink, SinkLogic, hook
from engine.refs import import_ref
from engine.validate import is_number
from operators.basic import describe
from operators.storeloop import StoreLoop

__all__ = [
    "CoordinatorFactory",
    "StoreError",
    "StoreResult",
    "StoreSink",
    "WriteCoordinatorFactory",
    "WriteCoordinatorLike",
]

ABORT_TIMEOUT_S = 5.0
PROTOCOL = ("start", "stop", "submit_many", "health")


class StoreHealthLike(Protocol):
    """What ``health()`` returns; ``market_data_store``'s ``CoordinatorHealth`` fits."""

    @property
    def queue_size(self) -> int: ...

    @property
    def capacity(self) -> int: ...


@runtime_checkable
class WriteCoordinatorLike(Protocol):
    """The part of ``market_data_store.coordinator.WriteCoordinator`` a ``StoreSink`` uses.

    All four are called on the store's event loop; ``submit_many`` may wait while the
    store's queue is full, and ``stop(drain=True)`` waits up to ``timeout`` seconds for it
    to empty. A store may add ``summary()``: its result goes into ``StoreResult.store``.
    """

    async def start(self) -> None: ...

    async def stop(self, drain: bool = True, timeout: float = 10.0) -> None: ...

    async def submit_many(self, items: Sequence[Any]) -> None: ...

    def health(self) -> StoreHealthLike: ...


CoordinatorFactory = Callable[[Context], WriteCoordinatorLike]


def resolve(spec: Callable[..., Any] | str, who: str) -> Callable[..., Any]:
    """``spec`` itself if callable, else the callable a ``"module:attribute"`` string names
    (imported now, so call this in the worker)."""
    if callable(spec):
        return spec
    obj = import_ref(spec, who, StoreError)
    if not callable(obj):
        raise StoreError(f"{who} {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _check_spec(spec: Any, who: str) -> None:
    if callable(spec):
        return
    if isinstance(spec, str):
        module_name, sep, attr = spec.partition(":")
        if sep and module_name and attr:
            return
    raise DagError(
        f"{who} must be a picklable callable taking the replica's Context (a module-level "
        f"def or a config such as MemoryStore(...)) or a 'module:attribute' string naming "
        f"one, got {spec!r}"
    )


@dataclass(frozen=True)
class StoreResult:
    """What a ``StoreSink`` replica's ``close()`` returns: the records it submitted, the
    pauses it made and their total length, the deepest queue it saw, and the store's own
    ``summary()`` (None when the store has none)."""

    records: int
    pauses: int
    paused_s: float
    max_queue_depth: int
    store: Any = None


@dataclass(frozen=True, repr=False)
class StoreSink(Sink):
    """Write batches to a store, pausing between ``high_watermark`` and ``low_watermark``
    (see the module docstring).

    ``coordinator``: called as ``coordinator(ctx)`` in each replica's worker to build its
    store; a picklable callable (``MemoryStore(...)``, ``WriteCoordinatorFactory(...)``, a
    module-level function) or a ``"module:attribute"`` string naming one, imported in the
    worker. Watermarks are queue depths (records): ``0 <= low_watermark < high_watermark``.
    ``poll_interval``: seconds between depth checks while paused. ``stall_timeout``: how
    long a pause may go on with the store's queue not going down before the job fails
    (None: for ever). ``drain_timeout``: how long ``close()`` lets the store drain.
    """

    coordinator: CoordinatorFactory | str
    high_watermark: int
    low_watermark: int
    poll_interval: float = 0.01
    drain_timeout: float = 30.0
    stall_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        _check_spec(self.coordinator, "StoreSink coordinator")
        high, low = self.high_watermark, self.low_watermark
        problems = []
        if not isinstance(high, int) or high < 1:
            problems.append(f"high_watermark must be an integer >= 1, got {high!r}")
        elif not isinstance(low, int) or not 0 <= low < high:
            problems.append(
                f"low_watermark must be an integer with 0 <= low_watermark < high_watermark "
                f"({high}), got {low!r}"
            )
        if not self.poll_interval > 0:
            problems.append(f"poll_interval must be > 0 seconds, got {self.poll_interval!r}")
        if not self.drain_timeout > 0:
            problems.append(f"drain_timeout must be > 0 seconds, got {self.drain_timeout!r}")
        stall = self.stall_timeout
        if stall is not None and not (is_number(stall) and stall > 0):
            problems.append(f"stall_timeout must be > 0 seconds or None, got {stall!r}")
        if problems:
            raise DagError(f"invalid StoreSink config: {'; '.join(problems)}")

    def __repr__(self) -> str:
        spec = self.coordinator
        shown = (
            repr(spec)
            if isinstance(spec, str) or hasattr(spec, "__dataclass_fields__")
            else describe(spec)
        )
        return (
            f"StoreSink({shown}, high_watermark={self.high_watermark}, "
            f"low_watermark={self.low_watermark})"
        )

    def declared_files(self, parallelism: int) -> Files:
        """The files its store writes, where the store's factory declares them (as
        ``MemoryStore`` does): validated as any sink's, and their temporaries removed
        if a worker is killed."""
        files = hook(self.coordinator, "declared_files", parallelism)
        return files if isinstance(files, Files) else Files()

    def build(self, ctx: Context) -> StoreSinkLogic:
        return StoreSinkLogic(self, resolve(self.coordinator, "StoreSink coordinator"), ctx)


class StoreSinkLogic(SinkLogic):
    """One replica of a ``StoreSink``. ``coordinator`` is its store once the first batch
    has started it (for tests; use it on the store's loop only)."""

    def __init__(self, config: StoreSink, factory: Callable[..., Any], ctx: Context) -> None:
        self.config = config
        self.factory = factory
        self.ctx = ctx
        self.coordinator: WriteCoordinatorLike | None = None
        self.records = 0
        self.max_depth = 0
        self._store: StoreLoop | None = None
        self._capacity: int | None = None  # the store's, when its health says
        self._depth = 0  # the queue depth last seen

    # -- on the worker's loop -------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        store = self._store
        if store is None:
            store = self._store = StoreLoop(f"ringflow-store:{self.ctx.node}[{self.ctx.replica}]")
            await store.call(self._start())
        # Each part fits in the room left (a submit blocked on a full queue is unwatched). A
        # part that left some of the batch behind filled the queue: wait for it to come down
        # to low_watermark before the next, as at high_watermark. So the depth is below
        # high_watermark (<= capacity, checked at the start) whenever a part is cut.
        cfg, capacity, n, sent = self.config, self._capacity, len(batch), 0
        while sent < n:
            room = n - sent if capacity is None else capacity - self._depth
            if room <= 0:  # (a write cut short, by a cancel, can leave the depth seen that high)
                depth, _ = await store.call(self._probe())
                self._report(depth)
                if depth > cfg.low_watermark:
                    await self._pause(store, depth)
                continue
            part = batch if sent == 0 and room >= n else batch[sent : sent + room]
            depth, _ = await store.call(self._submit(part))
            sent += len(part)
            self.records += len(part)
            self._report(depth)
            if depth >= cfg.high_watermark or (sent < n and depth > cfg.low_watermark):
                await self._pause(store, depth)

    async def _pause(self, store: StoreLoop, depth: int) -> None:
        ctx, cfg = self.ctx, self.config
        clock = ctx.clock
        ctx.count("pauses")
        last = clock()
        lowest, since = depth, last  # the queue's progress: its lowest depth, and when
        while depth > cfg.low_watermark:
            await asyncio.sleep(cfg.poll_interval)
            depth, alive = await store.call(self._probe())
            now = clock()
            ctx.count("paused_ns", max(0, now - last))  # as it goes: metrics see it grow
            last = now
            self._report(depth)
            if alive == 0:
                raise StoreError(
                    f"sink {ctx.node!r} replica {ctx.replica}: the store has no live workers "
                    f"and {depth} record(s) queued, so it will not drain; its health: "
                    f"{self._health_text()}"
                )
            if depth < lowest:
                lowest, since = depth, now
            elif cfg.stall_timeout is not None and now - since >= cfg.stall_timeout * 1e9:
                raise StoreError(
                    f"sink {ctx.node!r} replica {ctx.replica}: the store's queue has not gone "
                    f"down from {lowest} record(s) in {cfg.stall_timeout} s of a pause (it "
                    f"resumes at {cfg.low_watermark}), so the store takes nothing more; its "
                    f"health: {self._health_text()}; raise StoreSink(stall_timeout=...), or "
                    "give None to wait for ever"
                )

    def _report(self, depth: int) -> None:
        self._depth = depth
        self.ctx.gauge("queue_depth", depth)
        if depth > self.max_depth:
            self.max_depth = depth

    async def close(self) -> StoreResult:
        store, self._store = self._store, None
        report = None
        if store is not None:
            try:
                left, report = await store.call(self._stop())
            finally:
                store.close()
            ctx = self.ctx
            if left:
                raise StoreError(
                    f"sink {ctx.node!r} replica {ctx.replica}: the store still held {left} "
                    f"record(s) after draining for {self.config.drain_timeout} s, so they "
                    "were not written; raise StoreSink(drain_timeout=...) or speed up the store"
                )
            stored = getattr(report, "stored", None)
            if isinstance(stored, int) and stored < self.records:
                raise StoreError(
                    f"sink {ctx.node!r} replica {ctx.replica}: the store stored {stored} of "
                    f"the {self.records} record(s) it was given and holds none: it lost "
                    f"{self.records - stored} (its summary: {report!r})"
                )
        counters = self.ctx.counters
        return StoreResult(
            self.records,
            counters.get("pauses", 0),
            counters.get("paused_ns", 0) / 1e9,
            self.max_depth,
            report,
        )

    def abort(self) -> None:
        """Stop the store without draining. Called with no loop running in this thread."""
        store, self._store = self._store, None
        if store is None:
            return
        try:
            if self.coordinator is not None:
                store.call_blocking(self._abort(), ABORT_TIMEOUT_S)
        finally:
            store.close()

    # -- on the store's loop --------------------------------------------------------------

    async def _start(self) -> None:
        ctx, cfg = self.ctx, self.config
        coordinator = self.factory(ctx)
        missing = [m for m in PROTOCOL if not callable(getattr(coordinator, m, None))]
        if missing:
            raise StoreError(
                f"sink {ctx.node!r}: the store factory {self.factory!r} returned a "
                f"{type(coordinator).__name__}, which lacks {', '.join(missing)}; a store "
                "needs async start(), stop(drain, timeout), submit_many(items) and health()"
            )
        self.coordinator = coordinator
        await coordinator.start()
        capacity = getattr(coordinator.health(), "capacity", None)
        if isinstance(capacity, int):
            self._capacity = capacity
        if isinstance(capacity, int) and cfg.high_watermark > capacity:
            raise StoreError(
                f"sink {ctx.node!r}: high_watermark {cfg.high_watermark} is above the store's "
                f"capacity {capacity}, so the sink would never pause (submits would block "
                "instead); lower high_watermark or raise the store's capacity"
            )

    async def _submit(self, batch: Batch) -> tuple[int, int | None]:
        assert self.coordinator is not None
        await self.coordinator.submit_many(batch)
        return await self._probe()

    async def _probe(self) -> tuple[int, int | None]:
        """The store's queue depth and live workers (None when it does not say)."""
        assert self.coordinator is not None
        health = self.coordinator.health()
        return int(health.queue_size), getattr(health, "workers_alive", None)

    def _health_text(self) -> str:
        return repr(self.coordinator.health()) if self.coordinator is not None else "none"

    async def _stop(self) -> tuple[int, Any]:
        coordinator = self.coordinator
        if coordinator is None:
            return 0, None
        _, alive = await self._probe()
        if alive == 0 and self.records:
            # Every worker died: what one held when it died is gone, even with the queue empty
            await coordinator.stop(drain=False, timeout=ABORT_TIMEOUT_S)
            raise StoreError(
                f"sink {self.ctx.node!r} replica {self.ctx.replica}: the store's workers all "
                f"died before it drained ({self._health_text()}), so records written to it "
                "may be lost"
            )
        await coordinator.stop(drain=True, timeout=self.config.drain_timeout)
        left = int(coordinator.health().queue_size)
        summary = getattr(coordinator, "summary", None)
        return left, summary() if callable(summary) else None

    async def _abort(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop(drain=False, timeout=ABORT_TIMEOUT_S)


@dataclass(frozen=True)
class WriteCoordinatorFactory:
    """Builds ``market_data_store``'s ``WriteCoordinator`` in the worker, for ``StoreSink``.

    ``market_data_store`` is imported only when a replica builds its coordinator, and only
    this class needs it. ``writer`` builds the coordinator's own sink (an object with
    ``async write(batch)``, e.g. a database writer): a picklable callable taking the
    replica's Context, or a ``"module:attribute"`` string naming one. The other fields are
    the coordinator's; overflow is always ``"block"`` (a store that drops records would defeat
    the sink's backpressure). ``coord_id`` defaults to ``<node>-<replica>``.
    """

    writer: Callable[[Context], Any] | str
    capacity: int = 10_000
    workers: int = 4
    batch_size: int = 500
    flush_interval: float = 0.25
    coord_id: str | None = None

    def __post_init__(self) -> None:
        _check_spec(self.writer, "WriteCoordinatorFactory writer")

    def __call__(self, ctx: Context) -> WriteCoordinatorLike:
        try:
            module = importlib.import_module("market_data_store.coordinator")
        except ImportError as exc:
            raise StoreError(
                f"sink {ctx.node!r}: WriteCoordinatorFactory needs the optional package "
                f"market_data_store (pip install market-data-store): {exc}; or use the "
                "in-repo operators.memstore.MemoryStore"
            ) from None
        writer = resolve(self.writer, "WriteCoordinatorFactory writer")(ctx)
        coordinator: WriteCoordinatorLike = module.WriteCoordinator(
            sink=writer,
            capacity=self.capacity,
            workers=self.workers,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            overflow_strategy="block",
            coord_id=self.coord_id or f"{ctx.node}-{ctx.replica}",
        )
        return coordinator
