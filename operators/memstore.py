"""An in-repo store with a bounded write queue, for tests, examples and demos.

``RateLimitedStore`` speaks the same protocol as ``market_data_store``'s ``WriteCoordinator``
(see ``operators.store.WriteCoordinatorLike``): ``start()``, ``submit_many(items)`` (waits
while the queue is full), ``health()`` (``queue_size`` / ``capacity``) and
``stop(drain, timeout)``. A drain task takes records off the queue, at most ``batch_size`` at
a time and at most ``rate`` records per second (a token bucket), and stores them: in a list
kept for ``summary()`` (``keep=True``) and/or as JSON lines in a file (``path``).

Draining is adjustable while the store runs, from any thread: ``set_rate(None)`` drains
as fast as it can, ``set_rate(0)`` stops draining, and ``release(n)`` lets exactly ``n``
more records through while the rate is 0 (so a test can walk the queue depth down step by
step). ``gate`` (a file path) holds draining back until that file exists, so a test in
another process can hold the store and let it go without timing assumptions.

``MemoryStore`` is the frozen, picklable config: pass it to ``StoreSink`` as the coordinator
factory, and each sink replica builds its own ``RateLimitedStore`` in its worker.

A file is written through ``operators.csvio.AtomicFile``: it appears under its name only when
``stop(drain=True)`` has stored every queued record; otherwise it is removed, so a failed or
undrained run leaves no file that looks complete. All of a store's work (and its file) belongs
to the event loop it was started on; only ``set_rate`` and ``release`` may be called from
other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import DagError, StoreError
from engine.operator import Context, Files
from operators.csvio import AtomicFile, replica_path, replica_paths

__all__ = ["MemoryStore", "RateLimitedStore", "StoreHealth", "StoreReport"]

GATE_POLL_S = 0.01
_JSON = msgspec.json.Encoder()


@dataclass(frozen=True)
class StoreHealth:
    """What ``health()`` returns; the fields of ``market_data_store``'s ``CoordinatorHealth``."""

    workers_alive: int
    queue_size: int
    capacity: int
    circuit_state: str = "closed"


@dataclass(frozen=True)
class StoreReport:
    """What ``RateLimitedStore.summary()`` returns: how many records it stored, the records
    themselves in storage order when it kept them (else None), and the file it wrote."""

    stored: int
    records: list[Any] | None
    path: str | None


def _as_object(record: Any) -> Any:
    return msgspec.structs.asdict(record) if isinstance(record, msgspec.Struct) else record


class RateLimitedStore:
    """A bounded queue drained into a list and/or a file at a settable rate (module docstring).

    ``rate``: records per second, None for no limit, 0 to hold everything until ``set_rate``
    or ``release``. ``capacity``: the queue's bound; ``submit_many`` waits while it is full.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        rate: float | None = None,
        batch_size: int = 100,
        keep: bool = True,
        path: str | None = None,
        gate: str | None = None,
        owner: str = "",
    ) -> None:
        _check(capacity, rate, batch_size)
        self.capacity = capacity
        self.batch_size = batch_size
        self.keep = keep
        self.path = path
        self.gate = gate
        self.owner = owner  # the job its file's temporary is named for (AtomicFile)
        self.records: list[Any] = []
        self.stored = 0
        self._rate = rate
        self._released = 0
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._lock = threading.Lock()  # rate and released, set from other threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._file: AtomicFile | None = None
        self._failure: BaseException | None = None

    # -- the WriteCoordinator protocol ----------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self.capacity)
        self._changed = asyncio.Event()
        self._refilled = time.monotonic()
        if self.path is not None:
            self._file = AtomicFile(self.path, self.owner)
        self._task = asyncio.create_task(self._drain(), name="ringflow-memstore-drain")

    async def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop draining; with ``drain``, first wait up to ``timeout`` s for the queue to
        empty. The file is committed only when every record was stored."""
        if self._task is None or self._queue is None:
            return
        if drain and self._failure is None:
            # Wait for the queue to empty, or for the drain task to fail, or for the timeout.
            joined = asyncio.ensure_future(self._queue.join())
            await asyncio.wait(
                {joined, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            joined.cancel()
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        file, self._file = self._file, None
        if file is not None:
            if drain and self._failure is None and self._queue.empty():
                file.commit()
            else:
                file.abort()

    async def submit(self, item: Any) -> None:
        await self.submit_many((item,))

    async def submit_many(self, items: Sequence[Any]) -> None:
        """Queue ``items`` in order, waiting while the queue is full."""
        queue = self._queue
        if queue is None or self._task is None:
            raise RuntimeError("RateLimitedStore.submit_many() before start() or after stop()")
        for item in items:
            if self._failure is not None:
                raise StoreError(f"the store's drain task failed: {self._failure!r}")
            if queue.full():
                await queue.put(item)
            else:
                queue.put_nowait(item)

    def health(self) -> StoreHealth:
        alive = 1 if self._task is not None and not self._task.done() else 0
        size = self._queue.qsize() if self._queue is not None else 0
        return StoreHealth(alive, size, self.capacity, "open" if self._failure else "closed")

    def summary(self) -> StoreReport:
        return StoreReport(self.stored, list(self.records) if self.keep else None, self.path)

    # -- control, from any thread ---------------------------------------------------------

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Records per second from now on: None for no limit, 0 to hold everything."""
        _check(self.capacity, rate, self.batch_size)
        with self._lock:
            self._rate = rate
        self._wake()

    def release(self, n: int) -> None:
        """Let ``n`` more records through while the rate is 0."""
        if n < 0:
            raise ValueError(f"release() wants n >= 0, got {n}")
        with self._lock:
            self._released += n
        self._wake()

    def _wake(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            changed.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(changed.set)

    # -- draining -------------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self._queue is not None
        queue = self._queue
        try:
            while True:
                if self.gate is not None:
                    while not os.path.exists(self.gate):
                        await asyncio.sleep(GATE_POLL_S)
                allowed = await self._allowance()
                first = await queue.get()
                # From here to the write nothing awaits: a batch is never half stored.
                batch = [first]
                while len(batch) < allowed and not queue.empty():
                    batch.append(queue.get_nowait())
                self._store(batch)
                self._spend(len(batch))
                for _ in batch:
                    queue.task_done()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            raise

    async def _allowance(self) -> int:
        """How many records the next batch may hold: wait until at least one may pass."""
        assert self._changed is not None
        while True:
            with self._lock:
                rate, released = self._rate, self._released
            if rate is None:
                return self.batch_size
            if rate == 0:
                if released > 0:
                    return min(self.batch_size, released)
                self._changed.clear()
                await self._changed.wait()
                continue
            now = time.monotonic()
            self._tokens = min(float(self.batch_size), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= 1.0:
                return int(self._tokens)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), (1.0 - self._tokens) / rate)

    def _spend(self, n: int) -> None:
        with self._lock:
            if self._rate == 0:
                self._released = max(0, self._released - n)
            elif self._rate is not None:
                self._tokens = max(0.0, self._tokens - n)

    def _store(self, batch: list[Any]) -> None:
        if self._file is not None:
            self._file.write(_JSON.encode_lines([_as_object(r) for r in batch]).decode("utf-8"))
        if self.keep:
            self.records.extend(batch)
        self.stored += len(batch)


def _check(capacity: int, rate: float | None, batch_size: int) -> None:
    problems = []
    if not isinstance(capacity, int) or capacity < 1:
        problems.append(f"capacity must be an integer >= 1, got {capacity!r}")
    if rate is not None and not rate >= 0:
        problems.append(f"rate must be >= 0 records/s or None (no limit), got {rate!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if problems:
        raise DagError(f"invalid in-repo store config: {'; '.join(problems)}")


@dataclass(frozen=True)
class MemoryStore:
    """Config of a ``RateLimitedStore``; calling it with a replica's context builds one.

    Pass it to ``StoreSink`` as the coordinator factory. With ``path`` and several sink
    replicas, replica ``r`` writes ``name.<r>.ext``. ``gate``: see the module docstring.
    """

    capacity: int = 10_000
    rate: float | None = None
    batch_size: int = 100
    keep: bool = True
    path: str | None = None
    gate: str | None = None

    def __post_init__(self) -> None:
        _check(self.capacity, self.rate, self.batch_size)
        for name in ("path", "gate"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))

    def __call__(self, ctx: Context) -> RateLimitedStore:
        path = None if self.path is None else replica_path(self.path, ctx.replica, ctx.parallelism)
        return RateLimitedStore(
            capacity=self.capacity,
            rate=self.rate,
            batch_size=self.batch_size,
            keep=self.keep,
            path=path,
            gate=self.gate,
            owner=ctx.job,
        )

    def declared_files(self, parallelism: int) -> Files:
        """The file each of ``parallelism`` sink replicas writes (``StoreSink`` asks)."""
        if self.path is None:
            return Files()
        return Files(writes=replica_paths(self.path, parallelism))
