"""An event loop on its own thread, where one sink replica's store lives.

Why a thread: a worker runs its uvloop loop (``engine.runtime_async``) only while it awaits
something a sink returned. A store's own tasks (the workers that drain a ``WriteCoordinator``'s
queue, the in-repo store's drain task) would then run only during writes, and stall while the
worker waits for input, so records queued just before a lull would sit unwritten. On its own
loop the store drains continuously, as the store service would. The sink's ``write()`` still
runs on the worker's loop and awaits the store's loop through ``call``, so the worker keeps its
heartbeat and counters fresh while it waits.

Ownership: the store object is created, used and stopped on this loop only (``call`` and
``call_blocking`` carry coroutines there); the thread is a daemon, so a store that never
returns cannot keep a worker process alive.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

__all__ = ["StoreLoop"]

T = TypeVar("T")


class StoreLoop:
    """A uvloop loop running on a daemon thread named ``name`` until ``close()``."""

    def __init__(self, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Closing: whatever is still pending (a submit waiting on a full queue after an
            # abort) is cancelled and given the chance to unwind.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the store's loop; await the result on the caller's running loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call_blocking(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the store's loop and block this thread (with no loop running) for
        its result; ``TimeoutError`` after ``timeout`` seconds."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop (pending tasks are cancelled) and join the thread. Idempotent."""
        if self._thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # closed meanwhile
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
