"""Provider sources: the replay provider, circuit breakers, request budgets, failover with
overlap dedupe, and the source adapter inline and across processes.

Time is virtual throughout (``VirtualTime``): stalls, cooldowns, budget waits and pacing
take no real time, and outcomes do not depend on the machine's load. Forbidden outcomes:
a tick lost or emitted twice across a failover, a watermark going back, a bar that differs
from the run where nothing failed, a state change not logged or not counted.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import pickle
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators.providers as providers
from engine import Dag, run
from engine.errors import DagError
from engine.operator import Context, Watermark
from engine.records import Tick
from engine.runtime_async import AsyncRunner
from engine.testing import run_inline
from examples import providers_failover
from operators import OHLCV, Generator, Tumbling, WindowAggregate, generate
from operators.providers import (
    REAL_TIME,
    Breaker,
    BreakerState,
    Fail,
    OverlapFilter,
    ProviderError,
    ProviderFailure,
    ProviderRef,
    ProviderRegistry,
    ProvidersExhausted,
    ProviderSource,
    RateBudget,
    Replay,
    Stall,
    VirtualTime,
    core_protocol,
    to_tick,
)
from operators.providers.overlap import DUPLICATE, PASS, STALE
from operators.sinks import Collect

WAIT = 60.0  # bound on a multi-process run
GEN = Generator(symbols=8, count=4000, seed=7, disorder_ns=50_000, step_ns=250_000)
LATENESS = 50_000
REFERENCE = generate(GEN)

# --- helpers ---------------------------------------------------------------------------


def drain(source, ctx=None):
    """Run one replica of a source to its end: (ticks, watermarks, items, ctx, logic)."""
    ctx = ctx or Context(node="ticks")
    logic = source.build(ctx)
    runner = AsyncRunner()
    items = logic.batches()
    out = []
    try:
        while True:
            try:
                out.append(runner(anext(items)))
            except StopAsyncIteration:
                break
    finally:
        runner(items.aclose())
        runner.close()
    ticks = [t for item in out if isinstance(item, list) for t in item]
    marks = [item.ts for item in out if isinstance(item, Watermark)]
    return ticks, marks, out, ctx, logic


def source(*replays, **options):
    options.setdefault("lateness_ns", LATENESS)
    options.setdefault("timing", VirtualTime("test"))
    options.setdefault("stall_timeout_s", 1.0)
    options.setdefault("batch", 256)
    return ProviderSource(replays, **options)


def check_watermarks(marks, ticks):
    assert marks == sorted(set(marks)), "watermarks must strictly increase"
    assert marks[-1] == max(t.ts for t in ticks) - LATENESS


def bars_dag(src, name="bars"):
    dag = Dag(name)
    bars = (
        dag.source("ticks", src)
        .key_by("symbol")
        .apply("bars", WindowAggregate(Tumbling("100ms"), OHLCV()), 2)
    )
    bars.sink("out", Collect())
    bars.side("late").sink("late", Collect())
    return dag


def bars_of(result):
    return sorted(result.collected("out"), key=lambda b: (b.symbol, b.window_start))


def lines(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- the public surface ----------------------------------------------------------------


def test_public_names_are_pinned():
    assert set(providers.__all__) == {
        "REAL_TIME",
        "Breaker",
        "BreakerState",
        "CircuitBreaker",
        "Fail",
        "FailoverRouter",
        "MarketDataProvider",
        "OverlapFilter",
        "ProviderError",
        "ProviderFailure",
        "ProviderHandle",
        "ProviderRef",
        "ProviderRegistry",
        "ProviderSource",
        "ProvidersExhausted",
        "RateBudget",
        "RealTime",
        "Replay",
        "ReplayProvider",
        "Stall",
        "Timing",
        "TokenBucket",
        "VirtualTime",
        "core_protocol",
        "to_tick",
    }
    for name in providers.__all__:
        assert getattr(providers, name) is not None


def test_configs_pickle_and_clocks_pickle_by_name():
    clock = VirtualTime("pickled")
    config = source(Replay("a", GEN, faults=(Fail(3), Stall(5, 1.0))), timing=clock)
    copy = pickle.loads(pickle.dumps(config))
    assert copy.providers == config.providers
    assert copy.timing is clock  # same process: the one clock of that name
    assert pickle.loads(pickle.dumps(REAL_TIME)) is REAL_TIME


def test_bad_configs_are_refused_with_reasons():
    with pytest.raises(DagError, match="at least one provider"):
        ProviderSource(())
    with pytest.raises(DagError, match=r"distinct, got \['a'\]"):
        ProviderSource((Replay("a", GEN), Replay("a", GEN)))
    with pytest.raises(DagError, match="on_end must be one of"):
        ProviderSource(Replay("a", GEN), on_end="retry")
    with pytest.raises(DagError, match="lateness_ns must be a number, got '1s'"):
        ProviderSource(Replay("a", GEN), lateness_ns=cast(Any, "1s"))  # a TypeError before
    with pytest.raises(DagError, match="speed must be > 0"):
        Replay("a", GEN, speed=0)
    with pytest.raises(DagError, match="finite count"):
        Replay("a", Generator(count=None))
    with pytest.raises(DagError, match="failures must be at least 1"):
        Breaker(failures=0)
    with pytest.raises(DagError, match="rate must be > 0"):
        RateBudget("b", rate=0)
    with pytest.raises(DagError, match="needs symbols"):
        source(Replay("a", GEN)).build(Context("ticks", 0, 2))
    with pytest.raises(DagError, match=r"symbols=\(\) names none .* symbols=None for everything"):
        ProviderSource(Replay("a", GEN), symbols=())  # it read as every symbol
    with pytest.raises(DagError, match=r"symbols must be non-empty strings, got \[''\]"):
        ProviderSource(Replay("a", GEN), symbols=("S0", ""))


@pytest.mark.parametrize(
    "symbols,parallelism,message",
    [
        (None, 2, r"a ProviderSource with 2 replicas needs symbols=\(\.\.\.\) to share out"),
        (("S0",), 2, r"its 1 symbol\(s\) out .* 1 of its 2 would have none .* parallelism=1"),
        (("S0", "S1", "S0"), 3, r"its 2 symbol\(s\) .* parallelism=2 at most, or more symbols"),
    ],
)
def test_a_replica_without_symbols_of_its_own_is_refused_before_start(
    symbols, parallelism, message
):
    """A replica with no symbols would subscribe to no instruments, which providers read as
    all of them: every tick again, and symbols nobody asked for."""
    dag = Dag("shares")
    config = source(Replay("a", GEN), symbols=symbols)
    dag.source("ticks", config, parallelism=parallelism).sink("out", Collect())
    with pytest.raises(DagError, match=f"node 'ticks': .*{message}"):
        dag.validate()
    dag = Dag("shares")
    dag.source("ticks", config, parallelism=parallelism - 1).sink("out", Collect())
    dag.validate()


# --- provider records ------------------------------------------------------------------


@dataclass
class CoreTrade:
    """Shaped like market_data_core.Trade: a datetime and a Decimal."""

    symbol: str
    ts: datetime
    price: Decimal
    size: int


@dataclass
class CoreQuote:
    symbol: str
    timestamp: datetime
    last: Decimal | None
    volume: int


def test_to_tick_converts_trades_and_quotes():
    at = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ns = 1704164645678901000
    assert to_tick(CoreTrade("A", at, Decimal("1.25"), 3)) == Tick("A", ns, 1.25, 3.0)
    naive = at.replace(tzinfo=None)  # naive means UTC
    assert to_tick(CoreTrade("A", naive, Decimal("1.25"), 3)).ts == ns
    shifted = at.astimezone(timezone(timedelta(hours=5)))
    assert to_tick(CoreTrade("A", shifted, Decimal("1.25"), 3)).ts == ns
    assert to_tick(CoreQuote("A", at, Decimal("2"), 7)) == Tick("A", ns, 2.0, 7.0)
    assert to_tick(CoreQuote("A", at, None, 7)) is None
    tick = Tick("B", 5, 1.0, 1.0)
    assert to_tick(tick) is tick


class FakeCoreProvider:
    """An external provider: an async context manager with an async generator stream."""

    events: list[str] = []

    def __init__(self, count: int, start: str = "2024-01-02T00:00:00+00:00") -> None:
        self.count = count
        self.start = datetime.fromisoformat(start)

    async def __aenter__(self):
        self.events.append("enter")
        return self

    async def __aexit__(self, *exc):
        self.events.append("exit")

    async def stream_trades(self, instruments):
        symbols = [getattr(i, "symbol", i) for i in instruments]
        self.events.append(f"subscribe {symbols}")
        for k in range(self.count):
            symbol = symbols[k % len(symbols)]
            yield CoreTrade(symbol, self.start + timedelta(microseconds=k), Decimal(k), 1)

    async def close(self):
        self.events.append("close")


@dataclass(frozen=True)
class Instrument:
    symbol: str


def test_external_provider_through_a_module_attr_reference():
    FakeCoreProvider.events.clear()
    ref = ProviderRef(
        "core",
        f"{__name__}:FakeCoreProvider",
        {"count": 50},
        instrument=f"{__name__}:Instrument",
    )
    ticks, marks, *_ = drain(source(ref, symbols=("X", "Y"), lateness_ns=0))
    assert len(ticks) == 50
    assert ticks[0] == Tick("X", 1704153600000000000, 0.0, 1.0)
    assert {t.symbol for t in ticks} == {"X", "Y"}
    assert marks[-1] == ticks[-1].ts
    assert FakeCoreProvider.events == ["enter", "subscribe ['X', 'Y']", "exit", "close"]
    assert isinstance(FakeCoreProvider(1), providers.MarketDataProvider)


def test_missing_optional_packages_are_named_with_the_fix():
    if importlib.util.find_spec("market_data_ibkr") is None:
        with pytest.raises(ProviderError, match="pip install market-data-ibkr"):
            ProviderRef("ibkr", "market_data_ibkr:IBKRProvider").build(REAL_TIME)
    if importlib.util.find_spec("market_data_core") is None:
        assert core_protocol() is None
    else:  # pragma: no cover - only with the optional package
        assert core_protocol() is not None
    with pytest.raises(ProviderError, match="has no 'Nope'"):
        ProviderRef("x", "operators.providers:Nope").build(REAL_TIME)
    with pytest.raises(ProviderError, match="no stream_trades"):
        ProviderRef("x", "builtins:object").build(REAL_TIME)


def test_registry_names_sources():
    registry = ProviderRegistry.of(Replay("a", GEN)).add(Replay("b", GEN))
    registry = registry.add_ref("c", f"{__name__}:FakeCoreProvider", count=3)
    assert registry.names() == ("a", "b", "c") and "b" in registry and len(registry) == 3
    src = registry.source("b", "a", symbols=("S0001",))
    assert [p.name for p in src.providers] == ["b", "a"]
    assert [p.name for p in registry.source().providers] == ["a", "b", "c"]
    with pytest.raises(DagError, match=r"no provider named 'z'.*'a', 'b', 'c'"):
        registry.source("z")
    with pytest.raises(DagError, match="registered twice"):
        registry.add(Replay("a", GEN))
    assert pickle.loads(pickle.dumps(registry)) == registry


# --- circuit breaker -------------------------------------------------------------------


def test_breaker_state_machine_on_a_fake_clock(caplog):
    caplog.set_level(logging.INFO)
    clock = VirtualTime("breaker")
    ctx = Context("ticks")
    breaker = Breaker(failures=3, cooldown_s=10.0).build("feed", clock.now, ctx)
    gauge = "breaker_state:feed"
    assert breaker.allow() and ctx.gauges[gauge] == 0
    breaker.record_failure("x")
    breaker.record_failure("x")
    breaker.record_success()  # resets the consecutive count
    for _ in range(3):
        assert breaker.state is BreakerState.CLOSED
        breaker.record_failure("boom")
    assert breaker.state is BreakerState.OPEN and ctx.gauges[gauge] == 2
    assert not breaker.allow() and breaker.retry_in() == 10.0
    clock.advance(9.5)
    assert not breaker.allow() and breaker.retry_in() == 0.5
    clock.advance(0.5)
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN and ctx.gauges[gauge] == 1
    assert not breaker.allow(), "one probe at a time"
    breaker.record_failure("probe boom")
    assert breaker.state is BreakerState.OPEN and breaker.retry_in() == 10.0
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and ctx.gauges[gauge] == 0
    assert ctx.counters == {
        "breaker_opens:feed": 2,
        "breaker_half_opens:feed": 2,
        "breaker_closes:feed": 1,
    }
    logged = lines(caplog, "circuit breaker")
    assert len(logged) == 5 and all("provider 'feed'" in line for line in logged)
    assert "closed -> open (3 consecutive failures, last: boom" in logged[0]
    assert "half_open -> open (probe failed: probe boom" in logged[2]


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.floats(0.0, 6.0)),
            st.tuples(st.sampled_from(["allow", "success", "failure"]), st.just(0.0)),
        ),
        max_size=40,
    )
)
def test_breaker_matches_a_reference_model(ops):
    clock = VirtualTime("breaker-model")
    ctx = Context("ticks")
    breaker = Breaker(failures=2, cooldown_s=5.0).build("p", clock.now, ctx)
    # Reference: state, consecutive failures, when it opened, probe out.
    state, fails, opened, probing = "closed", 0, 0.0, False
    for op, dt in ops:
        if op == "advance":
            clock.advance(dt)
            continue
        now = clock.now()
        if op == "allow":
            if state == "open" and now >= opened + 5.0:
                state = "half_open"
            expected = state == "closed" or (state == "half_open" and not probing)
            if state == "half_open" and expected:
                probing = True
            assert breaker.allow() == expected
        elif op == "success":
            fails = 0
            if state != "closed":
                state, probing = "closed", False
            breaker.record_success()
        else:
            if state == "closed":
                fails += 1
                if fails >= 2:
                    state, fails, opened, probing = "open", 0, now, False
            elif state == "half_open":
                state, opened, probing = "open", now, False
            breaker.record_failure("f")
        assert breaker.state.name.lower() == state


# --- request budgets -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "file"])
def test_budget_is_shared_by_its_holders(where, tmp_path):
    clock = VirtualTime(f"budget-{where}")
    path = str(tmp_path / "budget") if where == "file" else None
    budget = RateBudget(f"shared-{where}", rate=2.0, burst=2, path=path)
    a, b = budget.open(clock.now), budget.open(clock.now)
    assert [a.reserve(), b.reserve()] == [0.0, 0.0]  # the burst
    assert a.reserve() == 0.5  # debt: each waiter queues behind the last
    assert b.reserve() == 1.0
    clock.advance(1.0)
    assert a.reserve() == 0.5
    clock.advance(10.0)  # refills up to the burst only
    assert [b.reserve(), a.reserve(), b.reserve()] == [0.0, 0.0, 0.5]


def test_budget_names_must_agree_within_a_process():
    clock = VirtualTime("budget-clash")
    held = RateBudget("clash", rate=1.0).open(clock.now)
    with pytest.raises(DagError, match="same rate and burst"):
        RateBudget("clash", rate=2.0).open(clock.now)
    del held


def test_rate_budget_holds_two_sources_inline(caplog):
    caplog.set_level(logging.INFO)
    clock = VirtualTime("two-sources")
    budget = RateBudget("two-sources", rate=0.5, burst=1)
    dag = Dag("budget")
    for name, symbol in (("left", "S0001"), ("right", "S0002")):
        replay = Replay(f"{name}-feed", GEN)
        dag.source(name, source(replay, symbols=(symbol,), budget=budget, timing=clock)).sink(
            f"{name}-out", Collect()
        )
    result = run_inline(dag)
    waits = {
        name: result.nodes[name].counters.get(f"rate_limit_waits:{name}-feed", 0)
        for name in ("left", "right")
    }
    assert sorted(waits.values()) == [0, 1], "the second subscription waits for the first"
    assert clock.now() >= 2.0  # 1 / rate
    assert len(lines(caplog, "waits 2.000 s for the request budget 'two-sources'")) == 1
    for name, symbol in (("left", "S0001"), ("right", "S0002")):
        assert result.collected(f"{name}-out") == [t for t in REFERENCE if t.symbol == symbol]


# --- the replay provider ---------------------------------------------------------------


def test_replay_paces_by_event_time_and_backfills_on_subscribe():
    clock = VirtualTime("pacing")
    ticks = tuple(Tick("A", 1_000_000_000 * k, float(k), 1.0) for k in range(10))
    replay = Replay("r", ticks, speed=2.0, backfill_s=1.0).provider(clock)

    async def take(n):
        seen = []
        async for tick in replay.stream_trades(["A"]):
            seen.append((tick.price, clock.now()))
            if len(seen) == n:
                break
        return seen

    runner = AsyncRunner()
    try:
        # Tick k is published at k / 2 s.
        assert runner(take(3)) == [(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)]
        clock.advance(2.0)  # now 3.0: backfill from 2.0 on, i.e. ticks 4, 5, 6 at once
        assert runner(take(4)) == [(4.0, 3.0), (5.0, 3.0), (6.0, 3.0), (7.0, 3.5)]
    finally:
        runner.close()


def test_replay_obeys_its_control_file(tmp_path):
    control = tmp_path / "control"
    clock = VirtualTime("control")
    replay = Replay("r", GEN, control=str(control), poll_s=0.5).provider(clock)
    runner = AsyncRunner()

    async def scenario():
        stream = replay.stream_trades([])
        assert await anext(stream) == REFERENCE[0]
        control.write_text("stall\n")
        pending = asyncio.ensure_future(anext(stream))
        await clock.sleep(5.0)
        assert not pending.done(), "a stalled replay sends nothing"
        control.write_text("run")
        assert await pending == REFERENCE[1]
        control.write_text("fail")
        with pytest.raises(ProviderFailure, match="says fail"):
            await anext(stream)
        with pytest.raises(ProviderFailure, match="is down"):
            await anext(replay.stream_trades([]))
        control.write_text("run")
        assert await anext(replay.stream_trades([])) == REFERENCE[0]
        control.write_text("explode")
        with pytest.raises(DagError, match="write one of"):
            await anext(replay.stream_trades([]))

    try:
        runner(scenario())
    finally:
        runner.close()


# --- failover --------------------------------------------------------------------------


def test_failover_on_failure_loses_and_repeats_nothing(caplog):
    caplog.set_level(logging.INFO)
    primary = Replay("primary", GEN, faults=(Fail(1500, down_s=None),))
    ticks, marks, _, ctx, _ = drain(source(primary, Replay("backup", GEN)))
    assert ticks == REFERENCE
    check_watermarks(marks, ticks)
    assert ctx.counters["failovers"] == 1
    assert ctx.counters["provider_failures:primary"] == 1
    assert ctx.counters["duplicates"] == 1500  # the backup resent the primary's 1500
    assert ctx.gauges["provider_active:primary"] == 0
    failover = lines(caplog, "failing over")
    assert failover == [
        "source 'ticks' replica 0: failing over from provider 'primary' to 'backup' (failed: "
        "ProviderFailure: replay provider 'primary': injected failure at tick 1500)"
    ]


def test_failover_on_stall_by_the_stall_timeout():
    clock = VirtualTime("stall")
    primary = Replay("primary", GEN, speed=1.0, faults=(Stall(1000),))
    backup = Replay("backup", GEN, speed=1.0, backfill_s=3.0)
    ticks, marks, _, ctx, _ = drain(source(primary, backup, timing=clock, stall_timeout_s=2.0))
    assert ticks == REFERENCE
    check_watermarks(marks, ticks)
    assert ctx.counters["provider_stalls:primary"] == 1
    assert ctx.counters["failovers"] == 1
    assert "provider_failures:primary" not in ctx.counters
    # The stall at 0.25 s is noticed at 2.25 s; by then the backup has published the rest
    # of its 1 s of event time, and sends it at once.
    assert 2.25 <= clock.now() < 2.3


def test_breaker_opens_waits_and_probes_a_single_provider(caplog):
    caplog.set_level(logging.INFO)
    only = Replay("only", GEN, faults=(Fail(300, down_s=2.5),))
    config = source(only, breaker=Breaker(failures=2, cooldown_s=1.0))
    ticks, marks, _, ctx, _ = drain(config)
    assert ticks == REFERENCE
    check_watermarks(marks, ticks)
    # fail at 300 (1), resubscribe refused (2: open), probes at 1 s and 2 s refused, at 3 s ok.
    assert ctx.counters["provider_failures:only"] == 4
    assert ctx.counters["resubscribes:only"] == 4
    assert ctx.counters["breaker_opens:only"] == 3
    assert ctx.counters["breaker_half_opens:only"] == 3
    assert ctx.counters["breaker_closes:only"] == 1
    assert ctx.counters["all_open_waits"] == 3
    assert ctx.gauges["breaker_state:only"] == BreakerState.CLOSED
    assert "failovers" not in ctx.counters
    transitions = [line for line in lines(caplog, "circuit breaker") if "->" in line]
    assert len(transitions) == 7
    assert len(lines(caplog, "every provider's circuit breaker is open")) == 3


def test_gives_up_naming_every_provider():
    dead = Fail(0, down_s=None)
    config = source(
        Replay("a", GEN, faults=(dead,)),
        Replay("b", GEN, faults=(dead,)),
        give_up_after=5,
        breaker=Breaker(failures=1, cooldown_s=1.0),
    )
    expected = "gave up after 5 consecutive failed provider attempts"
    with pytest.raises(ProvidersExhausted, match=expected) as info:
        drain(config)
    assert "'a': breaker open" in str(info.value) and "'b': breaker open" in str(info.value)


def test_stalls_do_not_exhaust_the_source(tmp_path):
    """A quiet provider is not a broken one: stalls fail over but never give up."""
    control = tmp_path / "control"
    control.write_text("stall")
    quiet = Replay("quiet", GEN, control=str(control))
    logic = source(quiet, give_up_after=2, stall_timeout_s=1.0).build(Context("ticks"))
    runner = AsyncRunner()
    items = logic.batches()
    try:
        for _ in range(400):  # bounded: about 20 idle steps per stall
            assert runner(anext(items)) == []
            if logic.ctx.counters.get("provider_stalls:quiet", 0) >= 3:
                break
        assert logic.ctx.counters["provider_stalls:quiet"] == 3
        assert logic.ctx.counters["resubscribes:quiet"] == 3
        control.write_text("run")
        first = runner(anext(items))
        assert first == REFERENCE[: len(first)] and first
    finally:
        runner(items.aclose())
        runner.close()


def test_source_stops_pulling_when_downstream_does():
    replay = Replay("r", GEN)
    config = source(replay, batch=32, prefetch=64)
    logic = config.build(Context("ticks"))
    provider = logic.handles[0].provider
    runner = AsyncRunner()
    items = logic.batches()
    try:
        first = runner(anext(items))
        assert len(first) == 32
        for _ in range(200):  # the loop runs, but nobody asks for the next batch
            runner(asyncio.sleep(0))
        # At most one batch taken, one queue of prefetch and the record in the pump's hand.
        assert provider.delivered <= 32 + 64 + 1
    finally:
        runner(items.aclose())
        runner.close()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=5),
)
def test_overlap_filter_equals_the_stream_without_switches(n, seed, cuts):
    """Reference model: restarts anywhere at or before the current position (back to the
    start of the history) give exactly the stream without restarts."""
    gen = Generator(symbols=3, count=n, seed=seed, disorder_ns=40_000, step_ns=10_000)
    base = generate(gen)
    window = OverlapFilter(horizon_ns=40_000)
    out, highs = [], []
    pos = 0
    for stop_at, back in sorted(cuts):
        stop = max(pos, int(stop_at * n))
        for tick in base[pos:stop]:
            if window.admit(tick) == PASS:
                out.append(tick)
            highs.append(window.high)
        window.switch()
        pos = int(back * stop)  # the new provider restarts at or before where we were
    for tick in base[pos:]:
        if window.admit(tick) == PASS:
            out.append(tick)
        highs.append(window.high)
    assert out == base
    assert highs == sorted(highs)


def test_overlap_filter_verdicts():
    window = OverlapFilter(horizon_ns=10)
    assert window.admit(Tick("A", 100, 1.0, 1.0)) == PASS
    assert window.admit(Tick("A", 100, 1.0, 1.0)) == DUPLICATE
    assert window.admit(Tick("A", 100, 1.0, 2.0)) == PASS  # another trade at that time
    assert window.admit(Tick("A", 50, 1.0, 1.0)) == PASS  # late, outside a catch-up
    window.switch()
    assert window.catching_up
    assert window.admit(Tick("A", 50, 1.0, 1.0)) == STALE
    assert window.admit(Tick("A", 95, 1.0, 1.0)) == PASS  # new, within the window
    assert window.admit(Tick("A", 101, 1.0, 1.0)) == PASS and not window.catching_up
    capped = OverlapFilter(horizon_ns=1_000, max_ids=2)
    for ts in (1, 2, 3):
        capped.admit(Tick("A", ts, 1.0, 1.0))
    assert capped.evicted == 1


# --- bars: inline and across processes -------------------------------------------------


def _bars_source(clock_name, faults=(), backup_faults=(), **options):
    primary = Replay("primary", GEN, speed=4.0, faults=faults)
    backup = Replay("backup", GEN, speed=4.0, backfill_s=1.0, faults=backup_faults)
    return source(primary, backup, timing=VirtualTime(clock_name), **options)


def test_bars_inline_with_failures_equal_a_run_without():
    clean = run_inline(bars_dag(_bars_source("inline-clean")))
    # The primary fails (down for 0.5 s), the backup takes over, then stalls for good; the
    # source goes back to the primary, up again by then.
    failed = run_inline(
        bars_dag(_bars_source("inline-failed", (Fail(1200, down_s=0.5),), (Stall(2600),)))
    )
    assert bars_of(failed) == bars_of(clean)
    # ... and both equal the bars of the same ticks straight from the engine's Generator.
    assert bars_of(clean) == bars_of(run_inline(bars_dag(GEN)))
    counters = failed.nodes["ticks"].counters
    assert counters["provider_failures:primary"] == 1
    assert counters["provider_stalls:backup"] == 1
    assert counters["failovers"] == 2
    assert "failovers" not in clean.nodes["ticks"].counters
    assert failed.nodes["ticks"].records_out == len(REFERENCE)


def test_bars_across_processes_with_a_failure_equal_a_run_without():
    clean = run_inline(bars_dag(_bars_source("mp-clean")))
    faults = (Fail(2000, down_s=None),)
    failed = run(bars_dag(_bars_source("mp-failed", faults)), timeout=WAIT)
    assert bars_of(failed) == bars_of(clean)
    counters = failed.nodes["ticks"].counters
    assert counters["failovers"] == 1
    assert counters["provider_failures:primary"] == 1
    assert counters["subscriptions:backup"] == 1
    assert failed.nodes["ticks"].records_out == len(REFERENCE)


def test_replicas_share_out_the_symbols():
    symbols = tuple(f"S{k:04d}" for k in range(8))
    config = source(Replay("a", GEN), Replay("b", GEN), symbols=symbols)
    dag = Dag("replicas")
    dag.source("ticks", config, 3).rebalance().sink("out", Collect())
    result = run_inline(dag)
    assert sorted(result.collected("out"), key=REFERENCE.index) == REFERENCE


def test_example_builds_and_its_bars_survive_the_failure():
    small = {"count": 4000, "symbols": 5, "clock": "virtual", "speed": 20.0}
    clean = run_inline(providers_failover.build(fail_at=None, **small))
    failed = run_inline(providers_failover.build(fail_at=1500, **small))
    assert bars_of(failed) == bars_of(clean) and bars_of(clean)
    assert failed.nodes["ticks"].counters["failovers"] == 1


def _drained_within(src, seconds=30.0):
    """``drain(src)`` in a thread, bounded: None if it did not end in ``seconds``."""
    done: list = []
    thread = threading.Thread(target=lambda: done.append(drain(src)), daemon=True)
    thread.start()
    thread.join(seconds)
    return done[0] if done else None


def test_a_stall_is_detected_when_the_waits_sum_to_a_hair_below_the_timeout():
    """On virtual time the router's waits are sums of float differences: one summed to
    1 ulp under the stall timeout, and the 1e-16 s left never moved the clock (found by an
    audit: one anext() spun for ever). Paced replay, silent for good at tick 50."""
    gen = Generator(symbols=5, count=3000, seed=5, disorder_ns=50_000, step_ns=250_000)
    replay = Replay("r", gen, speed=1.0, faults=(Stall(50, None),))
    drained = _drained_within(source(replay, timing=VirtualTime("hair")))
    assert drained is not None, "the source never ended"
    ticks, _, _, ctx, _ = drained
    assert ctx.counters["provider_stalls:r"] == 1
    assert sorted(ticks, key=lambda t: (t.ts, t.symbol)) == sorted(
        generate(gen), key=lambda t: (t.ts, t.symbol)
    )


class CancelledUnder:
    """A provider whose stream raises CancelledError of its own (a connection task
    cancelled under it), after five ticks."""

    async def stream_trades(self, instruments):
        for i in range(5):
            yield Tick("A", i, 1.0, 1.0)
        raise asyncio.CancelledError()


def test_a_stream_that_raises_cancelled_error_is_a_failure_and_fails_over():
    backup = Replay("backup", tuple(Tick("A", i, 1.0, 1.0) for i in range(10)))
    src = source(ProviderRef("flaky", CancelledUnder), backup, stall_timeout_s=None)
    drained = _drained_within(src)
    assert drained is not None, "the source waited for ever on the failed stream"
    ticks, _, _, ctx, _ = drained
    assert ctx.counters["provider_failures:flaky"] == 1 and ctx.counters["failovers"] == 1
    assert [t.ts for t in ticks] == list(range(10))


class Stubborn:
    """Five ticks, then waits for ever, swallowing its cancellation."""

    async def stream_trades(self, instruments):
        for i in range(5):
            yield Tick("A", i, 1.0, 1.0)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass


# Left behind, its stream is finalized unfinished when the loop closes: Python reports that.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_provider_that_swallows_its_cancellation_is_left_behind_with_a_warning(
    monkeypatch, caplog
):
    monkeypatch.setattr("operators.providers.failover.CLOSE_TIMEOUT_S", 0.2)
    ctx = Context(node="ticks")
    src = source(ProviderRef("p", Stubborn), stall_timeout_s=None, timing=REAL_TIME, batch=5)
    logic = src.build(ctx)
    runner = AsyncRunner()
    items = logic.batches()
    try:
        first = runner(anext(items))
        assert [t.ts for t in first] == list(range(5))
        with caplog.at_level(logging.WARNING):
            runner(items.aclose())  # the stop: the router drops the subscription
    finally:
        runner.close()
        del items, logic
        gc.collect()  # the left-behind stream is finalized here, inside this test
    assert ctx.counters["abandoned:p"] == 1
    assert lines(caplog, "provider 'p' went on after its cancellation")
