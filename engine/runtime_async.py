"""The per-process uvloop event loop that async sources and sinks run on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

TICK_S = 0.25


class AsyncRunner:
    """Runs awaitables to completion on one lazily created uvloop loop.

    ``on_tick`` (if given) is called every ``TICK_S`` while an awaitable runs, so a worker
    keeps its heartbeat and counters fresh while an async sink waits on its store or an async
    source on its provider.
    """

    def __init__(self, on_tick: Callable[[], None] | None = None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_tick = on_tick

    def __call__(self, awaitable: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = uvloop.new_event_loop()
        loop = self._loop
        if self._on_tick is None:
            return loop.run_until_complete(awaitable)
        handle = loop.call_later(TICK_S, self._tick)
        try:
            return loop.run_until_complete(awaitable)
        finally:
            handle.cancel()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    _handle: asyncio.TimerHandle | None = None

    def _tick(self) -> None:
        assert self._loop is not None and self._on_tick is not None
        self._handle = self._loop.call_later(TICK_S, self._tick)
        self._on_tick()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
