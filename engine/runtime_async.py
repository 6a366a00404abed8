"""The per-process uvloop event loop that async sources and sinks run on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

TICK_S = 0.25


class AsyncRunner:
    """Runs awaitables to completion on one lazily created uvloop loop.

    ``on_tick`` (if given) is called while an awaitable runs, so a worker keeps its
    heartbeat and counters fresh while an async sink waits on its store or an async source
    on its provider. It returns the seconds until it wants to run again (None: ``TICK_S``),
    and ``next_tick`` (if given) says when it first wants to run; a source worker uses them
    to flush a partial batch after its linger while the source waits, rather than whenever
    the provider next speaks. When ``cancel_when`` (if given) returns True at a tick, the
    awaitable is cancelled and the call raises ``asyncio.CancelledError``: a source worker
    that is asked to stop does not wait for a quiet provider's next message.
    """

    def __init__(
        self,
        on_tick: Callable[[], float | None] | None = None,
        cancel_when: Callable[[], bool] | None = None,
        next_tick: Callable[[], float] | None = None,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_tick = on_tick
        self._cancel_when = cancel_when
        self._next_tick = next_tick
        self._running: asyncio.Future[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def __call__(self, awaitable: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = uvloop.new_event_loop()
        loop = self._loop
        if self._on_tick is None:
            return loop.run_until_complete(awaitable)
        first = TICK_S if self._next_tick is None else min(TICK_S, self._next_tick())
        self._handle = loop.call_later(max(0.0, first), self._tick)
        self._running = asyncio.ensure_future(awaitable, loop=loop)
        try:
            return loop.run_until_complete(self._running)
        finally:
            self._running = None
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None and self._on_tick is not None
        delay = self._on_tick()
        self._handle = self._loop.call_later(TICK_S if delay is None else delay, self._tick)
        if self._cancel_when is not None and self._running is not None and self._cancel_when():
            self._running.cancel()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
