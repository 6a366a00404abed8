"""Processing time for provider sources: a clock and an async sleep, injectable.

Everything in ``operators.providers`` that depends on processing time (replay pacing and
stalls, stall timeouts, batch linger, circuit-breaker cooldowns, rate-budget waits) reads
``timing.now()`` (seconds, float) and waits with ``await timing.sleep(seconds)``, so a test
can swap real time for virtual time and run a scenario of minutes in milliseconds, the same
way every time.

* ``REAL_TIME``: ``time.monotonic`` and ``asyncio.sleep``. Linux's monotonic clock is
  system-wide, so budgets shared through a file (``RateBudget(path=...)``) agree across
  processes.
* ``VirtualTime``: a clock that moves only when every task waiting on it is idle, like
  trio's ``MockClock(autojump_threshold=0)``: when sleepers are pending and no new sleep was
  started during ``IDLE_ROUNDS`` consecutive iterations of the event loop, the clock jumps to
  the earliest deadline and wakes whoever is due. The rule counts loop iterations, never
  real time, so a run does not depend on the machine's load. It holds for tasks that wait
  only on the virtual clock and on each other (queues, events), as provider sources and the
  in-repo replay provider do; a task doing real I/O would see virtual time run ahead of it.
  A virtual clock pickles by name: every config in a worker process that carries
  ``VirtualTime("x")`` gets that process's one clock named ``"x"``; virtual time starts at
  ``start`` and stands still while its loop is not running (a worker blocked downstream).
"""

from __future__ import annotations

import asyncio
import heapq
import time
import weakref
from collections.abc import Awaitable
from typing import Any, Protocol

__all__ = ["IDLE_ROUNDS", "REAL_TIME", "RealTime", "Timing", "VirtualTime"]

IDLE_ROUNDS = 20  # loop iterations with no new sleep before virtual time jumps


class Timing(Protocol):
    """A processing-time clock (``now``, seconds) and a matching ``sleep``."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class RealTime:
    """Wall-clock processing time: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(max(0.0, seconds))

    def __reduce__(self) -> str:
        return "REAL_TIME"

    def __repr__(self) -> str:
        return "REAL_TIME"


REAL_TIME = RealTime()

_CLOCKS: weakref.WeakValueDictionary[str, VirtualTime] = weakref.WeakValueDictionary()


def _virtual_time(name: str, start: float) -> VirtualTime:
    """Unpickle: this process's clock of that name (made on first use)."""
    clock = _CLOCKS.get(name)
    return VirtualTime(name, start) if clock is None else clock


class VirtualTime:
    """Virtual processing time for tests (see the module docstring). ``advance`` moves it by
    hand, for code that only reads the clock (a breaker, a budget)."""

    def __init__(self, name: str = "virtual", start: float = 0.0) -> None:
        self.name = name
        self.start = start
        self._now = start
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._starts = 0  # sleeps started, ever: "was anyone busy since the last look?"
        self._seen = -1
        self._idle = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        _CLOCKS[name] = self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_virtual_time, (self.name, self.start))

    def __repr__(self) -> str:
        return f"VirtualTime({self.name!r}, now={self._now})"

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by hand and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError(f"virtual time only moves forward, got advance({seconds})")
        self._now += seconds
        self._wake_due()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if loop is not self._loop:  # a new run: sleepers of a closed loop are gone
            self._loop, self._heap, self._handle = loop, [], None
        future: asyncio.Future[None] = loop.create_future()
        self._seq += 1
        self._starts += 1
        heapq.heappush(self._heap, (self._now + seconds, self._seq, future))
        if self._handle is None:
            self._handle = loop.call_soon(self._poll)
        await future

    def _poll(self) -> None:
        """One loop iteration's look: jump once sleepers have been idle long enough."""
        self._handle = None
        heap = self._heap
        while heap and heap[0][2].done():  # cancelled sleeps
            heapq.heappop(heap)
        if not heap or self._loop is None or self._loop.is_closed():
            return
        if self._starts != self._seen:
            self._seen = self._starts
            self._idle = 0
        else:
            self._idle += 1
        if self._idle >= IDLE_ROUNDS:
            self._idle = 0
            self._now = max(self._now, heap[0][0])
            self._wake_due()
        self._handle = self._loop.call_soon(self._poll)

    def _wake_due(self) -> None:
        heap = self._heap
        while heap and heap[0][0] <= self._now:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_result(None)
