"""``FailoverRouter``: one tick stream from several providers of the same instruments.

The router subscribes to one provider at a time, in priority order, and stays with it while
it works (no flapping back). It leaves it when it fails (its stream raises), when it stalls
(no tick for ``stall_timeout_s`` of the router's own waiting: time the worker spends blocked
downstream does not count, since the provider is not read then either), or, with
``on_end="failover"``, when its stream ends. The next provider is the first after the failed
one, cyclically, whose circuit breaker allows a call (the failed one comes last, so a single
provider is resubscribed); when every breaker is open the router waits for the earliest
cooldown. Each subscription first takes a request from the shared ``RateBudget``, if any.
After ``give_up_after`` consecutive failed attempts that delivered no tick it raises
``ProvidersExhausted`` with every provider's last error (stalls do not count: a quiet market
looks the same; with quiet instruments, raise ``stall_timeout_s`` or set it to None).

A subscription runs as a *pump* task that moves the provider's records into a queue of
``prefetch`` entries; the pump runs only while the router awaits (the worker steps the
event loop only to get its next batch), so when downstream credits run out nothing pulls
from the provider, and at most ``prefetch`` records wait in between.

Ticks pass through an ``OverlapFilter``: after each switch the new provider's resent ticks
are dropped (``duplicates``, ``stale_ticks``), so watermarks (from ``high``) never go back and
no tick is emitted twice.

Logged once per change, with the provider's name, and counted in the source's context:
provider failures (``provider_failures:<p>``) and stalls (``provider_stalls:<p>``),
failovers (``failovers``) and resubscriptions of the same provider (``resubscribes:<p>``),
rate-limit waits (``rate_limit_waits:<p>``), waits for every breaker (``all_open_waits``),
and the breakers' own transitions (``operators.providers.breaker``). Counted only:
``subscriptions:<p>``, records a provider's converter skipped (``skipped:<p>``). Gauges:
``provider_active:<p>`` (1 for the provider in use), ``breaker_state:<p>``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.operator import Context
from engine.records import Tick
from operators.providers.breaker import Breaker, BreakerState, CircuitBreaker
from operators.providers.overlap import DUPLICATE, PASS, STALE, OverlapFilter
from operators.providers.protocol import ProviderHandle, ProvidersExhausted
from operators.providers.ratelimit import TokenBucket
from operators.providers.timing import Timing

__all__ = ["FailoverRouter", "Member"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0  # real seconds a pump may take to unwind after cancellation
WAIT_EPSILON_S = 1e-9  # a remaining wait below this is none (see _next)
_END = object()
_TIMEOUT = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass
class Member:
    """A provider in the router: its handle and breaker, and what it last did."""

    handle: ProviderHandle
    breaker: CircuitBreaker
    last_error: str = "never failed"

    @property
    def name(self) -> str:
        return self.handle.name


class _Subscription:
    def __init__(self, member: Member, pump: asyncio.Task[None], queue: asyncio.Queue[Any]):
        self.member = member
        self.pump = pump
        self.queue = queue
        self.waited = 0.0  # seconds waited for a tick since the last one
        self.live = False  # has it delivered a tick yet?


class FailoverRouter:
    """The live router of one provider-source replica (see the module docstring)."""

    def __init__(
        self,
        members: Sequence[Member],
        symbols: list[str],
        ctx: Context,
        timing: Timing,
        *,
        window: OverlapFilter,
        stall_timeout_s: float | None,
        bucket: TokenBucket | None = None,
        give_up_after: int | None = None,
        on_end: str = "stop",
        prefetch: int = 1024,
    ) -> None:
        self.members = list(members)
        self.symbols = symbols
        self.ctx = ctx
        self.timing = timing
        self.window = window
        self.stall_timeout_s = stall_timeout_s
        self.bucket = bucket
        self.give_up_after = give_up_after
        self.on_end = on_end
        self.prefetch = prefetch
        self.ended = False
        self._sub: _Subscription | None = None
        self._last: int | None = None  # index of the provider last subscribed
        self._attempts = 0  # consecutive attempts without a tick
        self._where = f"source {ctx.node!r} replica {ctx.replica}"
        for member in self.members:
            ctx.gauge(f"provider_active:{member.name}", 0.0)

    @classmethod
    def members_of(
        cls,
        handles: Sequence[ProviderHandle],
        breaker: Breaker,
        timing: Timing,
        ctx: Context,
    ) -> list[Member]:
        return [Member(h, breaker.build(h.name, timing.now, ctx)) for h in handles]

    @property
    def active(self) -> str | None:
        """The name of the provider in use, if any."""
        return None if self._sub is None else self._sub.member.name

    # -- the stream -----------------------------------------------------------------------

    async def fill(self, out: list[Tick], size: int, linger_s: float, idle_s: float) -> bool:
        """Append up to ``size`` ticks to ``out``; return when it is full, when ``linger_s``
        has passed since its first tick, or after ``idle_s`` without any (so the worker gets
        its turn). False once the stream has ended (``out`` may hold its last ticks)."""
        dropped = [0, 0, 0]  # by verdict; counted once per call, not once per tick
        try:
            return await self._fill(out, size, linger_s, idle_s, dropped)
        finally:
            if dropped[DUPLICATE]:
                self.ctx.count("duplicates", dropped[DUPLICATE])
            if dropped[STALE]:
                self.ctx.count("stale_ticks", dropped[STALE])

    async def _fill(
        self, out: list[Tick], size: int, linger_s: float, idle_s: float, dropped: list[int]
    ) -> bool:
        timing, admit = self.timing, self.window.admit
        started: float | None = None  # when out got its first tick
        idle_from = timing.now()
        while len(out) < size:
            sub = self._sub
            if sub is None:
                if self.ended:
                    return False
                if out:
                    return True  # hand over what we have before waiting for a provider
                await self._subscribe()
                continue
            queue = sub.queue
            if queue.empty():
                now = timing.now()
                limit = (started + linger_s) if started is not None else (idle_from + idle_s)
                wait = limit - now
                stall = self.stall_timeout_s
                if stall is not None:
                    wait = min(wait, stall - sub.waited)
                # A wait below a nanosecond is none: the waits are sums of float differences,
                # and a remainder of 1e-16 s would not move a virtual clock (now + wait ==
                # now), so it would be waited for ever, at full speed.
                if wait <= WAIT_EPSILON_S:
                    if stall is not None and sub.waited >= stall - WAIT_EPSILON_S:
                        await self._fail(sub, f"stalled: no tick for {stall:g} s", stalled=True)
                        continue
                    return True
                item = await self._take(queue, wait)
                sub.waited += timing.now() - now
                if item is _TIMEOUT:
                    continue
            else:
                item = queue.get_nowait()
            if type(item) is Tick:
                sub.waited = 0.0
                if not sub.live:
                    self._on_live(sub)
                verdict = admit(item)
                if verdict == PASS:
                    if started is None:
                        started = timing.now()
                    out.append(item)
                else:
                    dropped[verdict] += 1
            elif item is None:  # a record the provider's converter skipped
                self.ctx.count(f"skipped:{sub.member.name}")
            elif item is _END:
                if self.on_end == "stop":
                    await self._drop(sub)
                    self.ended = True
                    return False
                await self._fail(sub, "its stream ended")
            else:
                await self._fail(sub, _describe(item.error))
        return True

    async def _take(self, queue: asyncio.Queue[Any], seconds: float) -> Any:
        """The queue's next item, or ``_TIMEOUT`` after ``seconds`` (on ``timing``).
        ``Queue.get`` takes the item only once it resumes, so cancelling it loses nothing."""
        getter = asyncio.ensure_future(queue.get())
        timer = asyncio.ensure_future(self.timing.sleep(seconds))
        try:
            await asyncio.wait((getter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return _TIMEOUT

    def _on_live(self, sub: _Subscription) -> None:
        """The subscription delivered its first tick: it works."""
        sub.live = True
        self._attempts = 0
        sub.member.breaker.record_success()

    # -- switching ------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        """Pick the next provider (waiting for a breaker or the budget if need be) and start
        its pump."""
        member = await self._pick()
        if self.bucket is not None:
            wait = self.bucket.reserve()
            if wait > 0:
                log.info(
                    "%s: provider %r waits %.3f s for the request budget %r",
                    self._where,
                    member.name,
                    wait,
                    self.bucket.budget.name,
                )
                self.ctx.count(f"rate_limit_waits:{member.name}")
                await self.timing.sleep(wait)
        index = self.members.index(member)
        if self._last is not None:
            previous = self.members[self._last]
            if previous is member:
                log.info("%s: resubscribing to provider %r", self._where, member.name)
                self.ctx.count(f"resubscribes:{member.name}")
            else:
                log.warning(
                    "%s: failing over from provider %r to %r (%s)",
                    self._where,
                    previous.name,
                    member.name,
                    previous.last_error,
                )
                self.ctx.count("failovers")
            self.window.switch()
        self._last = index
        self.ctx.count(f"subscriptions:{member.name}")
        self.ctx.gauge(f"provider_active:{member.name}", 1.0)
        queue: asyncio.Queue[Any] = asyncio.Queue(self.prefetch)
        pump = asyncio.ensure_future(_pump(member.handle, self.symbols, queue))
        self._sub = _Subscription(member, pump, queue)

    async def _pick(self) -> Member:
        members = self.members
        n = len(members)
        first = 0 if self._last is None else self._last + 1
        order = [members[(first + k) % n] for k in range(n)]
        while True:
            for member in order:
                if member.breaker.allow():
                    return member
            wait = min(m.breaker.retry_in() for m in members)
            log.warning(
                "%s: every provider's circuit breaker is open; next probe in %.3f s",
                self._where,
                wait,
            )
            self.ctx.count("all_open_waits")
            await self.timing.sleep(wait)

    async def _fail(self, sub: _Subscription, error: str, *, stalled: bool = False) -> None:
        """Leave a subscription that failed or stalled. Only failures count towards
        ``give_up_after``: a stall may be a quiet market rather than a broken provider."""
        member = sub.member
        await self._drop(sub)
        member.last_error = error
        log.warning("%s: provider %r %s", self._where, member.name, error)
        kind = "stalls" if stalled else "failures"
        self.ctx.count(f"provider_{kind}:{member.name}")
        member.breaker.record_failure(error)
        if sub.live or stalled:
            return
        self._attempts += 1
        if self.give_up_after is not None and self._attempts >= self.give_up_after:
            states = "; ".join(
                f"{m.name!r}: breaker {BreakerState(m.breaker.state).name.lower()}, "
                f"last: {m.last_error}"
                for m in self.members
            )
            raise ProvidersExhausted(
                f"{self._where} gave up after {self._attempts} consecutive failed provider "
                f"attempts without a tick ({states}); fix the providers, or raise "
                "give_up_after (None: never give up)"
            )

    async def _drop(self, sub: _Subscription) -> None:
        self._sub = None
        self.ctx.gauge(f"provider_active:{sub.member.name}", 0.0)
        if not await _stop(sub.pump):
            # Its stream went on past its cancellation (it catches CancelledError): the
            # subscription is left behind, said so, as the engine does with such a source.
            log.warning(
                "%s: provider %r went on after its cancellation for %g s; left behind "
                "(does its stream catch asyncio.CancelledError? let it propagate)",
                self._where,
                sub.member.name,
                CLOSE_TIMEOUT_S,
            )
            self.ctx.count(f"abandoned:{sub.member.name}")

    async def aclose(self) -> None:
        """Stop the subscription and close every provider (errors are logged, not raised:
        closing must not hide the error that ended the stream)."""
        if self._sub is not None:
            await self._drop(self._sub)
        for member in self.members:
            try:
                await asyncio.wait_for(member.handle.aclose(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("%s: closing provider %r: %s", self._where, member.name, exc)


async def _pump(handle: ProviderHandle, symbols: list[str], queue: asyncio.Queue[Any]) -> None:
    """Move one subscription's records into ``queue``; end with ``_END`` or ``_Failed``."""
    stream = handle.stream(symbols)
    try:
        async for record in stream:
            await queue.put(record)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():  # we are being stopped
            raise
        await queue.put(_Failed(exc))  # the provider's stream raised it: a failure like any
        return
    except Exception as exc:
        await queue.put(_Failed(exc))
        return
    finally:
        await stream.aclose()
    await queue.put(_END)


async def _stop(task: asyncio.Task[None]) -> bool:
    """Cancel ``task`` and wait for it to end, up to ``CLOSE_TIMEOUT_S``; whether it did."""
    if not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=CLOSE_TIMEOUT_S)
        return task.done()
    if not task.cancelled():
        task.exception()  # retrieved: no "never retrieved" warning
    return True


def _describe(error: BaseException) -> str:
    return f"failed: {type(error).__name__}: {error}"
