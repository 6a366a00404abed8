"""``ProviderSource``: ticks from market-data providers, with failover, as a ringflow source.

Its logic is an async generator, so the worker runs it on its uvloop loop one item at a time
and keeps its heartbeat while the next item is awaited. Each item is a batch of up to
``batch`` ticks, gathered until the batch is full or ``linger_s`` after its first tick, then
``Watermark(high - lateness_ns)`` when that moved (``high``: the highest event time sent;
it never goes back, so neither do the watermarks). When nothing comes for ``IDLE_S`` the
source yields an empty batch. (The worker no longer needs that to flush lingering output
or notice a stop: it does both while any async source waits, engine.runtime_async.)

Providers come in priority order (``FailoverRouter`` has the switching rules); one provider
is the plain adapter. Resent ticks after a switch are dropped by identity within
``dedupe_horizon_ns`` of event time (``OverlapFilter``); by default that horizon is the
larger of ``lateness_ns`` and one second.

Replicas: replica ``r`` of ``P`` subscribes to ``sorted(symbols)[r::P]``; with ``P > 1``
``symbols`` must be given, at least ``P`` distinct ones (validation refuses fewer: a
replica with none would subscribe to no instruments, which providers read as all).
``symbols=None`` with one replica asks providers for everything they have (an empty
instrument list; the in-repo ``Replay`` sends every symbol then); ``symbols=()`` is refused,
as it would ask for the same.

Timing (processing time): ``timing`` (default ``REAL_TIME``; ``VirtualTime`` in tests)
drives linger, stall timeouts, breaker cooldowns, budget waits and replay pacing alike.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import DagError
from engine.operator import Batch, Context, Source, SourceLogic, Watermark
from engine.records import Tick
from engine.validate import is_number
from operators.providers.breaker import Breaker
from operators.providers.failover import FailoverRouter
from operators.providers.overlap import OverlapFilter
from operators.providers.protocol import ProviderConfig
from operators.providers.ratelimit import RateBudget
from operators.providers.timing import REAL_TIME, Timing

__all__ = ["IDLE_S", "ProviderSource"]

IDLE_S = 0.05  # longest step without a tick before the worker gets its turn
ON_END = ("stop", "failover")


@dataclass(frozen=True)
class ProviderSource(Source):
    """Config of a provider source: ``ProviderSource((primary, backup), symbols=("AAPL",))``.

    ``providers``: provider configs (``Replay``, ``ProviderRef``), in priority order, with
    distinct names. ``stall_timeout_s``: seconds without a tick after which the provider in
    use counts as stalled (None: never). ``breaker``: each provider's circuit breaker.
    ``budget``: a request budget each subscription draws on, shared with every source that
    names it (across worker processes only when it has a ``path``). ``give_up_after``:
    consecutive failed attempts without a tick (stalls aside) before the source fails (None:
    never). ``on_end``: what the end
    of a provider's stream means: ``"stop"`` (the source ends, as a finite replay does) or
    ``"failover"`` (a disconnect). ``prefetch``: records buffered between provider and source.
    """

    providers: Sequence[ProviderConfig]
    symbols: tuple[str, ...] | None = None
    batch: int = 1024
    linger_s: float = 0.005
    lateness_ns: int = 0
    dedupe_horizon_ns: int | None = None
    max_ids: int = 1_000_000
    stall_timeout_s: float | None = 10.0
    breaker: Breaker = field(default_factory=Breaker)
    budget: RateBudget | None = None
    give_up_after: int | None = 20
    on_end: str = "stop"
    prefetch: int = 1024
    timing: Timing = REAL_TIME

    output_type = Tick

    def __post_init__(self) -> None:
        providers: Any = self.providers
        if not isinstance(providers, list | tuple):
            providers = (providers,)
        object.__setattr__(self, "providers", tuple(providers))
        if self.symbols is not None:
            symbols = (self.symbols,) if isinstance(self.symbols, str) else self.symbols
            object.__setattr__(self, "symbols", tuple(symbols))
        problems = []
        for field_name in ("batch", "lateness_ns", "dedupe_horizon_ns", "max_ids", "prefetch"):
            value = getattr(self, field_name)
            if not (value is None and field_name == "dedupe_horizon_ns") and not is_number(value):
                problems.append(f"{field_name} must be a number, got {value!r}")
        if problems:  # the comparisons below would fail on these
            raise DagError(f"invalid ProviderSource: {'; '.join(problems)}")
        names = [getattr(p, "name", None) for p in self.providers]
        if not names:
            problems.append("it needs at least one provider")
        for p, name in zip(self.providers, names, strict=True):
            if not isinstance(name, str) or not callable(getattr(p, "build", None)):
                problems.append(f"{p!r} is not a provider config (a name and build(timing))")
        dupes = sorted({n for n in names if names.count(n) > 1 and isinstance(n, str)})
        if dupes:
            problems.append(f"provider names must be distinct, got {dupes} more than once")
        if self.batch < 1:
            problems.append(f"batch must be >= 1, got {self.batch}")
        if not (self.linger_s >= 0 and math.isfinite(self.linger_s)):
            problems.append(f"linger_s must be >= 0 seconds, got {self.linger_s!r}")
        if self.lateness_ns < 0:
            problems.append(f"lateness_ns must be >= 0, got {self.lateness_ns}")
        if self.dedupe_horizon_ns is not None and self.dedupe_horizon_ns < 0:
            problems.append(f"dedupe_horizon_ns must be >= 0, got {self.dedupe_horizon_ns}")
        if self.max_ids < 1:
            problems.append(f"max_ids must be >= 1, got {self.max_ids}")
        if self.stall_timeout_s is not None and not self.stall_timeout_s > 0:
            problems.append(f"stall_timeout_s must be > 0 or None, got {self.stall_timeout_s!r}")
        if self.give_up_after is not None and self.give_up_after < 1:
            problems.append(f"give_up_after must be >= 1 or None, got {self.give_up_after}")
        if self.on_end not in ON_END:
            problems.append(f"on_end must be one of {ON_END}, got {self.on_end!r}")
        if self.prefetch < 1:
            problems.append(f"prefetch must be >= 1, got {self.prefetch}")
        if self.symbols is not None:
            if not self.symbols:  # an empty instrument list reads as all of them
                problems.append(
                    "symbols=() names none (a provider would send every symbol it has); name "
                    "at least one, or give symbols=None for everything"
                )
            odd = [s for s in self.symbols if not (isinstance(s, str) and s)]
            if odd:
                problems.append(f"symbols must be non-empty strings, got {odd!r}")
        if problems:
            raise DagError(f"invalid ProviderSource: {'; '.join(problems)}")

    @property
    def horizon_ns(self) -> int:
        """The event-time window of tick identities kept for dropping resent ticks."""
        if self.dedupe_horizon_ns is not None:
            return self.dedupe_horizon_ns
        return max(self.lateness_ns, 1_000_000_000)

    def parallelism_problem(self, parallelism: int) -> str:
        """Each replica needs symbols of its own: one with none would subscribe to no
        instruments, which a provider reads as all of them (every tick again, and those
        not asked for)."""
        if parallelism == 1:
            return ""
        if self.symbols is None:
            return (
                f"a ProviderSource with {parallelism} replicas needs symbols=(...) to share "
                "out; give the symbols, or use one replica"
            )
        distinct = len(set(self.symbols))
        if parallelism > distinct:
            return (
                f"a ProviderSource shares its {distinct} symbol(s) out over its replicas, so "
                f"{parallelism - distinct} of its {parallelism} would have none (and a "
                "provider reads no instruments as all of them): give it "
                f"parallelism={distinct} at most, or more symbols"
            )
        return ""

    def replica_symbols(self, replica: int, parallelism: int) -> list[str]:
        problem = self.parallelism_problem(parallelism)
        if problem:
            raise DagError(problem)
        return [] if self.symbols is None else sorted(set(self.symbols))[replica::parallelism]

    def build(self, ctx: Context) -> ProviderSourceLogic:
        return ProviderSourceLogic(self, ctx)


class ProviderSourceLogic(SourceLogic):
    """One replica of a ``ProviderSource``. ``router`` exists while ``batches()`` runs."""

    def __init__(self, config: ProviderSource, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.symbols = config.replica_symbols(ctx.replica, ctx.parallelism)
        self.timing = config.timing
        # Build every provider now: a bad reference fails the job before any tick moves.
        self.handles = [p.build(self.timing) for p in config.providers]
        self.router: FailoverRouter | None = None

    def batches(self) -> AsyncIterator[Batch | Watermark]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[Batch | Watermark]:
        cfg, ctx, timing = self.config, self.ctx, self.timing
        window = OverlapFilter(cfg.horizon_ns, cfg.max_ids)
        bucket = None if cfg.budget is None else cfg.budget.open(timing.now)
        router = self.router = FailoverRouter(
            FailoverRouter.members_of(self.handles, cfg.breaker, timing, ctx),
            self.symbols,
            ctx,
            timing,
            window=window,
            stall_timeout_s=cfg.stall_timeout_s,
            bucket=bucket,
            give_up_after=cfg.give_up_after,
            on_end=cfg.on_end,
            prefetch=cfg.prefetch,
        )
        size, linger, lateness = cfg.batch, cfg.linger_s, cfg.lateness_ns
        sent = None  # last watermark yielded
        evicted = 0
        try:
            more = True
            while more:
                out: list[Tick] = []
                more = await router.fill(out, size, linger, IDLE_S)
                if window.evicted != evicted:
                    ctx.count("dedupe_evicted", window.evicted - evicted)
                    evicted = window.evicted
                if out:
                    yield out
                    mark = window.high - lateness
                    if sent is None or mark > sent:
                        sent = mark
                        yield Watermark(mark)
                elif more:
                    yield out  # nothing came: an empty batch gives the worker its turn
        finally:
            await router.aclose()
