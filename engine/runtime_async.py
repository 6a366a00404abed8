"""The per-process uvloop event loop that async sources and sinks run on."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import uvloop

TICK_S = 0.25
TIMER_RESOLUTION_S = 0.001  # uvloop's timers and loop.time() count milliseconds


class StopAwaiting(Exception):
    """The runner cancelled what it was awaiting because ``cancel_when`` asked it to."""


class Abandoned(StopAwaiting):
    """The runner gave up on an awaitable ``abandon_after`` seconds into a stop: one that
    caught its cancellation and went on awaiting, or a cleanup that did not end."""


class AsyncRunner:
    """Runs awaitables to completion on one lazily created uvloop loop.

    ``on_tick`` (if given) is called while an awaitable runs, at most ``TICK_S`` apart, so a
    worker keeps its heartbeat and counters fresh while an async sink waits on its store or
    an async source on its provider. It returns the seconds until it wants to run again
    (None: ``TICK_S``), and ``next_tick`` says when it first wants to run; during a call,
    ``tick_within`` brings it forward. A source worker flushes a partial batch after its
    linger while the source waits, rather than whenever the provider next speaks.

    ``cancel_when`` (if given) is asked at every tick; once it has said True for ``TICK_S``
    (so an item already on its way has time to arrive), the awaitable is cancelled, once,
    and the call raises ``StopAwaiting``: a source worker that is asked to
    stop does not wait for a quiet provider's next message. A call made with
    ``cancellable=False`` (a generator's ``aclose()``, its cleanup) is never cancelled.

    ``abandon_after`` (if given) bounds each call's wait once ``cancel_when`` says True:
    that many seconds into it, an awaitable that was cancelled (at the latest then) and
    is still running, or a cleanup still running, is given up on and the call raises
    ``Abandoned``: a source that swallows ``asyncio.CancelledError``, or whose cleanup
    hangs, cannot hold a graceful stop up for ever. Its loop is closed with it, so nothing
    more of it runs; a later call gets a new loop.

    Nothing raised in a tick, or by a signal handler while the loop runs (a worker's SIGTERM
    exception), is lost in the loop's log: it cancels the awaitable and the call raises it.
    """

    def __init__(
        self,
        on_tick: Callable[[], float | None] | None = None,
        cancel_when: Callable[[], bool] | None = None,
        next_tick: Callable[[], float] | None = None,
        abandon_after: float | None = None,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_tick = on_tick
        self._cancel_when = cancel_when
        self._next_tick = next_tick
        self._abandon_after = abandon_after
        self._running: asyncio.Future[Any] | None = None
        self._outcome: asyncio.Future[Any] | None = None  # what the call returns or raises
        self._handle: asyncio.Handle | None = None  # the next tick
        self._tick_at = 0.0  # when it is due, in loop time
        self._error: BaseException | None = None  # from a tick or a signal handler
        self._cancellable = False
        self._stop_since: float | None = None  # when cancel_when() began to say True
        self._cancelled = False

    def __call__(self, awaitable: Awaitable[Any], *, cancellable: bool = True) -> Any:
        if self._loop is None:
            self._loop = uvloop.new_event_loop()
            self._loop.set_exception_handler(self._on_loop_error)
        loop = self._loop
        if self._on_tick is None:
            return loop.run_until_complete(awaitable)
        first = TICK_S if self._next_tick is None else min(TICK_S, self._next_tick())
        self._schedule_tick(first)
        self._cancellable = cancellable
        self._stop_since = None
        self._cancelled = False
        self._running = running = asyncio.ensure_future(awaitable, loop=loop)
        # The call waits on its own future, which the awaitable completes when it ends and
        # a tick fails with Abandoned when it gives up on it.
        self._outcome = outcome = loop.create_future()
        running.add_done_callback(_relay_to(outcome))
        try:
            try:
                result = loop.run_until_complete(outcome)
            except Abandoned:
                self._drop_loop(running)
                if self._error is not None:  # a tick's error or SIGTERM meanwhile: that
                    raise self._error from None
                raise
            except asyncio.CancelledError:
                if self._error is None and self._cancelled:
                    raise StopAwaiting from None
                if self._error is None:
                    raise  # the awaitable's own cancellation: not ours to excuse
            if self._error is not None:
                raise self._error
            return result
        finally:
            self._error = None
            self._running = None
            self._outcome = None
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    @property
    def ticking(self) -> bool:
        """Whether a call is running with its tick scheduled (an async source's stream)."""
        return self._handle is not None

    def tick_within(self, delay: float) -> None:
        """Run the next tick within ``delay`` seconds: sooner than planned, if it was
        planned later (a record now waits in a partial batch that is due by then)."""
        if self._handle is None or self._loop is None:
            return
        if self._tick_at > self._loop.time() + delay + TIMER_RESOLUTION_S:
            self._handle.cancel()
            self._schedule_tick(delay)

    def _schedule_tick(self, delay: float) -> None:
        assert self._loop is not None
        delay = max(0.0, delay)
        self._tick_at = self._loop.time() + delay
        self._handle = self._loop.call_later(delay, self._tick)

    def _drop_loop(self, running: asyncio.Future[Any]) -> None:
        """Close the loop with the abandoned awaitable still pending on it, unrun."""
        if isinstance(running, asyncio.Task):  # given up on, not forgotten: no warning
            running._log_destroy_pending = False  # type: ignore[attr-defined]
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._running is not None:
            self._running.cancel()

    def _on_loop_error(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if exc is not None and not isinstance(exc, Exception) and self._running is not None:
            self._fail(exc)  # the worker's Stopped (SIGTERM) raised inside a loop callback
        else:
            loop.default_exception_handler(context)

    def _tick(self) -> None:
        assert self._loop is not None and self._on_tick is not None
        try:
            delay = self._on_tick()
        except BaseException as exc:  # the loop would log it and go on
            self._fail(exc)
            return
        delay = TICK_S if delay is None else min(TICK_S, max(0.0, delay))
        self._schedule_tick(delay)
        if self._cancel_when is None or self._running is None:
            return
        if not self._cancel_when():
            self._stop_since = None
            return
        now = time.monotonic()
        if self._stop_since is None:
            self._stop_since = now
        waited = now - self._stop_since
        late = self._abandon_after is not None and waited >= self._abandon_after
        if late and (self._cancelled or not self._cancellable):
            if self._outcome is not None and not self._outcome.done():
                self._outcome.set_exception(Abandoned())
            return
        if self._cancellable and not self._cancelled and (waited >= TICK_S or late):
            self._cancelled = True
            self._running.cancel()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


@types.coroutine
def anext_noting_wait(
    items: AsyncIterator[Any],
    on_wait: Callable[[], None],
    on_ready: Callable[[], None] | None = None,
) -> Generator[Any, Any, Any]:
    """``await anext(items)``, calling ``on_wait()`` each time the iterator suspends on a
    future (a timer, a socket, an empty queue: the item is not ready), not when it only
    yields to the loop (``asyncio.sleep(0)``) and goes on; and ``on_ready()`` when it
    resumes from that wait, however the wait ended.

    Whatever the loop sends or throws in (a cancellation, the worker's SIGTERM) goes on to
    the iterator. Closing this closes the iterator's pending await without running any more
    of it, as closing a plain ``await`` does (an abandoned source runs no further). If
    ``on_wait()`` raises, the iterator's wait is cancelled first, so its cleanup runs as it
    would on any cancellation."""
    step = items.__anext__().__await__()
    waiting = False
    sent: Any = None
    thrown: BaseException | None = None
    try:
        while True:
            try:
                yielded = step.send(sent) if thrown is None else step.throw(thrown)
            except StopIteration as stop:
                return stop.value
            if yielded is not None:
                waiting = True
                try:
                    on_wait()
                except BaseException:
                    _cancel(step)
                    raise
            try:
                sent, thrown = (yield yielded), None
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:
                sent, thrown = None, exc
            if waiting:
                waiting = False
                if on_ready is not None:
                    on_ready()
    finally:
        if waiting and on_ready is not None:  # closed while it waited
            on_ready()


def _cancel(step: Any) -> None:
    """Unwind a suspended ``__await__`` iterator as a cancellation would (its ``finally``
    blocks run); what it raises doing so is secondary to the error being raised."""
    with contextlib.suppress(BaseException):
        step.throw(asyncio.CancelledError())
    with contextlib.suppress(BaseException):
        step.close()  # it caught the cancellation and went on waiting


def _relay_to(outcome: asyncio.Future[Any]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that gives ``outcome`` the finished future's result or exception."""

    def relay(done: asyncio.Future[Any]) -> None:
        if outcome.done():
            return  # abandoned meanwhile
        if done.cancelled():
            outcome.cancel()
        elif done.exception() is not None:
            outcome.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outcome.set_result(done.result())

    return relay
