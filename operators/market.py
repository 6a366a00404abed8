"""Market-data plumbing: ``Dedupe``, ``Throttle`` and ``Router``.

None of them loses a record without saying so: Dedupe counts what it drops
(``duplicates``), Throttle sends what exceeds its rate to a side output, Router sends every
record to exactly one output. Functions (keys, predicates) travel to workers by pickle, so
they must be module-level ``def``s, not lambdas or closures.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, cast

from engine.errors import DagError
from engine.operator import ANY_KEY, ONE_STATE, Batch, Context, Operator, OperatorLogic, PassesInput
from operators.basic import check_function, describe
from operators.durations import to_ns
from operators.keys import KeySpec, check_key, key_fields, key_getter

__all__ = ["Dedupe", "Router", "Throttle"]


def _side_name(name: Any, who: str) -> str:
    if not isinstance(name, str) or name in ("", "main"):
        raise DagError(f"{who} must name a side output other than 'main', got {name!r}")
    return name


@dataclass(frozen=True)
class Dedupe(PassesInput, Operator):
    """Drop records whose identity was already seen within ``horizon_ns`` of event time.

    The identity is ``key`` of the record (a field name, a tuple of field names, a function;
    None: the record itself, which must be hashable, as frozen msgspec Structs are). A record
    is a duplicate when an earlier record with the same identity was *kept* and their event
    times (``time`` field) differ by at most ``horizon_ns``; duplicates are dropped and
    counted as ``duplicates``.

    Memory is bounded: a kept time is forgotten once the watermark passes it plus the
    horizon (no later on-time record can be within the horizon of it), and when more than
    ``max_keys`` kept times are held after a batch, the identities kept longest ago are
    forgotten early and counted as ``dedupe_evicted`` (a duplicate of one of those would
    then pass, and be remembered in its place). A late record (behind the watermark) is
    checked against what is remembered but not remembered itself: what was forgotten can
    let a late record through, never make an on-time record look like a duplicate.

    State is per replica: with parallelism > 1 the input must be ``key_by`` fields of the
    identity (any field, for ``key=None``), so that duplicates meet; validation refuses
    another edge.
    """

    key: KeySpec | None
    horizon_ns: int | str
    time: str = "ts"
    max_keys: int = 1_000_000
    output_type: Any = None

    def __post_init__(self) -> None:
        if self.key is not None:
            check_key(self.key, "Dedupe")
        horizon = to_ns(self.horizon_ns, "Dedupe horizon_ns")
        if horizon < 0:
            raise DagError(f"Dedupe horizon_ns must not be negative, got {self.horizon_ns!r}")
        object.__setattr__(self, "horizon_ns", horizon)
        if not isinstance(self.time, str) or not self.time:
            raise DagError(f"Dedupe time must be a field name, got {self.time!r}")
        if isinstance(self.max_keys, bool) or not isinstance(self.max_keys, int):
            raise DagError(f"Dedupe max_keys must be an int, got {self.max_keys!r}")
        if self.max_keys < 1:
            raise DagError(f"Dedupe max_keys must be at least 1, got {self.max_keys}")

    def fields_read(self) -> tuple[str, ...]:
        return (*key_fields(self.key), self.time)

    def state_key(self) -> Any:
        return ANY_KEY if self.key is None else self.key

    def build(self, ctx: Context) -> OperatorLogic:
        return _DedupeLogic(self, ctx)


class _DedupeLogic(OperatorLogic):
    """Per identity, the event times of its kept records: an int for one (the usual case, an
    identity that includes the time), else a sorted list. Kept times of one identity are
    more than the horizon apart (a record within the horizon of one is not kept), so a new
    time is checked against its two neighbours in the list only."""

    def __init__(self, config: Dedupe, ctx: Context) -> None:
        self._ctx = ctx
        self._identity = None if config.key is None else key_getter(config.key)
        self._time = attrgetter(config.time)
        self._horizon = cast(int, config.horizon_ns)  # an int since __post_init__
        self._max_keys = config.max_keys
        # identity -> kept time(s), the most recently kept last; _held counts the times
        self._seen: OrderedDict[Any, Any] = OrderedDict()
        self._held = 0
        self._watermark: int | None = None

    def process(self, batch: Batch) -> Batch:
        identity, get_time, horizon, seen = self._identity, self._time, self._horizon, self._seen
        watermark = self._watermark
        kept = []
        duplicates = 0
        for record in batch:
            ident = record if identity is None else identity(record)
            t = get_time(record)
            prev = seen.get(ident)
            if prev is not None:
                if not isinstance(prev, list):
                    if -horizon <= t - prev <= horizon:
                        duplicates += 1
                        continue
                else:
                    i = bisect_left(prev, t - horizon)
                    if i < len(prev) and prev[i] <= t + horizon:
                        duplicates += 1
                        continue
            kept.append(record)
            if watermark is None or t >= watermark:  # late: checked, not remembered
                self._remember(ident, prev, t)
        if duplicates:
            self._ctx.count("duplicates", duplicates)
        if self._held > self._max_keys:
            evicted = 0
            while self._held > self._max_keys:
                self._held -= _count(seen.popitem(last=False)[1])
                evicted += 1
            self._ctx.count("dedupe_evicted", evicted)
        return kept

    def _remember(self, ident: Any, prev: Any, t: Any) -> None:
        seen = self._seen
        self._held += 1
        if prev is None:
            seen[ident] = t
            return
        if not isinstance(prev, list):
            seen[ident] = [prev, t] if prev < t else [t, prev]
        else:
            insort(prev, t)
            if self._watermark is not None:  # drop what no on-time record can match
                gone = min(bisect_left(prev, self._watermark - self._horizon), len(prev) - 1)
                del prev[:gone]
                self._held -= gone
        seen.move_to_end(ident)

    def on_watermark(self, watermark: int) -> Batch:
        self._watermark = watermark
        seen, horizon = self._seen, self._horizon
        # Most recently kept last, so close to event-time order; an identity stuck behind a
        # newer one waits for a later watermark (or the max_keys cap). It is forgotten once
        # the watermark has passed its newest kept time plus the horizon.
        while seen:
            ident, times = next(iter(seen.items()))
            newest = times[-1] if isinstance(times, list) else times
            if newest + horizon >= watermark:
                break
            del seen[ident]
            self._held -= _count(times)
        return []


def _count(times: Any) -> int:
    """How many kept times an identity's entry holds (an int, or a list of them)."""
    return len(times) if isinstance(times, list) else 1


@dataclass(frozen=True)
class Throttle(PassesInput, Operator):
    """Pass at most ``max_records`` per key per interval of processing time.

    Intervals are ``interval_ns`` long and aligned to the clock's zero (``ctx.clock() //
    interval_ns``); the clock is read once per batch. Records over the limit are counted as
    ``throttled`` and sent, in arrival order, to the side output ``side_output`` (with
    ``side_output=None``, only counted: dropped by choice). ``key``:
    a field name, a tuple of field names, a function, or None for one limit over all records.
    Memory: one count per key seen in the current interval.

    Counts are per replica: with parallelism > 1 the input must be ``key_by`` fields of the
    key, and ``key=None`` (one limit) needs parallelism 1; validation refuses otherwise.
    """

    key: KeySpec | None
    max_records: int
    interval_ns: int | str
    side_output: str | None = "throttled"
    output_type: Any = None

    def __post_init__(self) -> None:
        if self.key is not None:
            check_key(self.key, "Throttle")
        if isinstance(self.max_records, bool) or not isinstance(self.max_records, int):
            raise DagError(f"Throttle max_records must be an int, got {self.max_records!r}")
        if self.max_records < 0:
            raise DagError(f"Throttle max_records must not be negative, got {self.max_records}")
        interval = to_ns(self.interval_ns, "Throttle interval_ns")
        if interval <= 0:
            raise DagError(f"Throttle interval_ns must be positive, got {self.interval_ns!r}")
        object.__setattr__(self, "interval_ns", interval)
        side = self.side_output
        if side is not None:
            _side_name(side, "Throttle side_output")
        object.__setattr__(self, "side_outputs", () if side is None else (side,))
        object.__setattr__(self, "side_types", {} if side is None else {side: self.output_type})

    def without_side(self, output: str) -> str:
        return "pass side_output=None to drop the records over the limit (still counted)"

    def fields_read(self) -> tuple[str, ...]:
        return key_fields(self.key)

    def state_key(self) -> Any:
        return ONE_STATE if self.key is None else self.key

    def build(self, ctx: Context) -> OperatorLogic:
        return _ThrottleLogic(self, ctx)


class _ThrottleLogic(OperatorLogic):
    def __init__(self, config: Throttle, ctx: Context) -> None:
        self._ctx = ctx
        self._key = None if config.key is None else key_getter(config.key)
        self._max = config.max_records
        self._interval = cast(int, config.interval_ns)  # an int since __post_init__
        self._side = config.side_output
        self._current: int | None = None
        self._counts: dict[Any, int] = {}

    def process(self, batch: Batch) -> Batch:
        interval = self._ctx.clock() // self._interval
        if interval != self._current:
            self._current = interval
            self._counts.clear()
        counts, limit, get_key = self._counts, self._max, self._key
        passed: list[Any] = []
        over: list[Any] = []
        for record in batch:
            key = None if get_key is None else get_key(record)
            n = counts.get(key, 0)
            if n < limit:
                counts[key] = n + 1
                passed.append(record)
            else:
                over.append(record)
        if over:
            self._ctx.count("throttled", len(over))
            if self._side is not None:
                self._ctx.emit_side(self._side, over)
        return passed


@dataclass(frozen=True, repr=False)
class Router(PassesInput, Operator):
    """Send each record to the side output of the first route whose predicate holds.

    ``routes`` maps side-output names to predicates (module-level functions of a record),
    tried in order. A record no predicate accepts goes to the main output, or to the side
    output ``default`` when one is named (which may be one of the routes). Every record goes
    to exactly one output. Every output has the input's record type, or ``output_type``.
    """

    routes: Mapping[str, Callable[[Any], Any]]
    default: str | None = None
    output_type: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.routes, Mapping) or not self.routes:
            raise DagError(
                "Router routes must be a non-empty dict of side-output name -> predicate, "
                f"got {self.routes!r}"
            )
        routes = dict(self.routes)
        for name, predicate in routes.items():
            _side_name(name, "Router route name")
            check_function(predicate, f"Router route {name!r}")
        object.__setattr__(self, "routes", routes)
        sides = tuple(routes)
        if self.default is not None:
            _side_name(self.default, "Router default")
            if self.default not in routes:
                sides += (self.default,)
        object.__setattr__(self, "side_outputs", sides)
        object.__setattr__(self, "side_types", dict.fromkeys(sides, self.output_type))

    def without_side(self, output: str) -> str:
        if output not in self.routes:  # the default, a side output of its own
            return "leave default=None to send the records no route takes to the main output"
        if len(self.routes) == 1:
            return "to drop its records, use a Filter that keeps the others instead of the Router"
        return f"remove the route {output!r}" + (" and default" if output == self.default else "")

    def __hash__(self) -> int:
        return hash((tuple(self.routes.items()), self.default, self.output_type))

    def __repr__(self) -> str:
        routes = ", ".join(f"{name!r}: {describe(fn)}" for name, fn in self.routes.items())
        return f"Router({{{routes}}}, default={self.default!r})"

    def build(self, ctx: Context) -> OperatorLogic:
        return _RouterLogic(self, ctx)


class _RouterLogic(OperatorLogic):
    def __init__(self, config: Router, ctx: Context) -> None:
        self._ctx = ctx
        self._routes = list(config.routes.items())
        self._default = config.default

    def process(self, batch: Batch) -> Batch:
        routes = self._routes
        buckets: dict[str, list[Any]] = {name: [] for name, _ in routes}
        rest: list[Any] = []
        # Unrouted records go straight to their output, so every output keeps arrival order.
        fallback = rest if self._default is None else buckets.setdefault(self._default, [])
        for record in batch:
            for name, predicate in routes:
                if predicate(record):
                    buckets[name].append(record)
                    break
            else:
                fallback.append(record)
        for name, records in buckets.items():
            self._ctx.emit_side(name, records)
        return rest
