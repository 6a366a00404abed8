"""The per-process uvloop event loop that async sources and sinks run on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import uvloop


class AsyncRunner:
    """Runs awaitables to completion on one lazily created uvloop loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, awaitable: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = uvloop.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
