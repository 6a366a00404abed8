"""Dedupe, Throttle, Router and the per-record transforms, driven in-process with a manual
clock."""

from __future__ import annotations

import itertools
import pickle
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators
from engine.errors import DagError
from engine.operator import Context
from engine.records import Tick
from operators import Dedupe, Filter, FlatMap, Map, Router, Throttle

SECOND = 1_000_000_000


class ManualClock:
    """Processing time that moves only when a test says so."""

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def tick(ts: int, symbol: str = "AAPL", price: float = 1.0, size: float = 1.0) -> Tick:
    return Tick(symbol, ts, price, size)


# Module-level functions, as configs need (they pickle by name).
def is_big(t: Tick) -> bool:
    return t.size >= 100


def is_msft(t: Tick) -> bool:
    return t.symbol == "MSFT"


def doubled(t: Tick) -> Tick:
    return Tick(t.symbol, t.ts, t.price * 2, t.size)


def twice(t: Tick) -> list[Tick]:
    return [t, t]


def nothing_for_aapl(t: Tick) -> list[Tick]:
    return [] if t.symbol == "AAPL" else [t]


def trade_id(t: Tick) -> tuple[str, int]:
    return (t.symbol, t.ts)


# ---------------------------------------------------------------------------------------
# Dedupe


def test_dedupe_drops_repeats_within_the_horizon_and_counts_them() -> None:
    ctx = Context(node="d")
    logic = Dedupe(None, horizon_ns=10).build(ctx)
    a = tick(100)
    assert logic.process([a, tick(100), tick(101), a]) == [a, tick(101)]
    assert ctx.counters == {"duplicates": 2}
    assert logic.process([tick(100), tick(95)]) == [tick(95)]
    assert ctx.counters == {"duplicates": 3}


def test_dedupe_identity_from_fields_or_a_function() -> None:
    ticks = [tick(1, price=1.0), tick(1, price=2.0), tick(1, "MSFT"), tick(30, price=3.0)]
    keys: list[Any] = [("symbol", "ts"), trade_id]
    for key in keys:
        logic = Dedupe(key, horizon_ns="1s").build(Context(node="d"))
        assert logic.process(ticks) == [ticks[0], ticks[2], ticks[3]]
    # identity = symbol: a second AAPL within the horizon is a duplicate, one beyond is not
    logic = Dedupe("symbol", horizon_ns=10).build(Context(node="d"))
    assert logic.process(ticks) == [ticks[0], ticks[2], ticks[3]]
    assert logic.process([tick(35), tick(41)]) == [tick(41)]


def test_dedupe_forgets_identities_as_the_watermark_passes_their_horizon() -> None:
    ctx = Context(node="d")
    logic = Dedupe(None, horizon_ns=10).build(ctx)
    logic.process([tick(100), tick(105)])
    assert logic.on_watermark(110) == []
    assert logic.process([tick(100)]) == []  # 100 + 10 is not yet before the watermark
    logic.on_watermark(111)
    assert logic.process([tick(100)]) == [tick(100)]  # a late repeat, forgotten: passes
    assert logic.process([tick(105)]) == []


def test_dedupe_memory_is_capped() -> None:
    ctx = Context(node="d")
    logic = Dedupe(None, horizon_ns=SECOND, max_keys=3).build(ctx)
    logic.process([tick(t) for t in range(5)])
    assert ctx.counters == {"dedupe_evicted": 2}
    assert logic.process([tick(0), tick(4)]) == [tick(0)]  # 0 was evicted; 4 is remembered


def dedupe_reference(ticks: list[Tick], horizon: int) -> list[Tick]:
    """The docstring's rule: a duplicate is within the horizon of any *kept* record of its
    identity (here the symbol)."""
    kept: list[Tick] = []
    for t in ticks:
        if not any(k.symbol == t.symbol and abs(k.ts - t.ts) <= horizon for k in kept):
            kept.append(t)
    return kept


def test_dedupe_compares_with_every_kept_record_not_only_the_last() -> None:
    logic = Dedupe("symbol", horizon_ns=50).build(Context(node="d"))
    assert logic.process([tick(0), tick(100), tick(10)]) == [tick(0), tick(100)]
    assert logic.process([tick(60), tick(160), tick(40)]) == [tick(160)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=50),
    st.integers(0, 15),
    st.sets(st.integers(1, 49), max_size=8),
)
def test_dedupe_matches_a_reference_without_watermarks(
    raw: list[tuple[int, int]], horizon: int, cuts: set[int]
) -> None:
    ticks = [tick(ts, symbol=f"S{s}") for s, ts in raw]
    want = dedupe_reference(ticks, horizon)
    ctx = Context(node="d")
    logic = Dedupe("symbol", horizon).build(ctx)
    bounds = [0, *sorted(c for c in cuts if c < len(ticks)), len(ticks)]
    got = [r for lo, hi in itertools.pairwise(bounds) for r in logic.process(ticks[lo:hi])]
    assert got == want
    assert ctx.counters.get("duplicates", 0) == len(ticks) - len(want)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12), st.booleans()), max_size=60),
    st.integers(0, 15),
)
def test_dedupe_forgetting_never_changes_what_an_on_time_record_gets(
    raw: list[tuple[int, int, bool]], horizon: int
) -> None:
    """Records at or after the watermark (on time), the watermark rising as the stream's
    time does, a watermark after any record that asks: the same as never forgetting."""
    ctx = Context(node="d")
    logic = Dedupe("symbol", horizon).build(ctx)
    now, ticks, got = 0, [], []
    for symbol, step, mark in raw:
        now += step
        t = tick(now - step // 2, symbol=f"S{symbol}")  # a little behind the newest
        ticks.append(t)
        got += logic.process([t])
        if mark:
            logic.on_watermark(now - 6)  # every later record is at or after it
    assert got == dedupe_reference(ticks, horizon)


# ---------------------------------------------------------------------------------------
# Throttle


def test_throttle_limits_each_key_per_interval_and_sends_the_rest_aside() -> None:
    clock = ManualClock(5 * SECOND)
    ctx = Context(node="t", clock=clock)
    logic = Throttle("symbol", max_records=2, interval_ns="1s").build(ctx)
    batch = [tick(i, "AAPL" if i % 3 else "MSFT") for i in range(9)]
    passed = logic.process(batch)
    assert passed == [batch[0], batch[1], batch[2], batch[3]]  # MSFT 0, 3; AAPL 1, 2
    assert ctx.take_side() == {"throttled": batch[4:]}
    assert ctx.counters == {"throttled": 5}
    clock.now += SECOND // 2  # same interval: nothing more for either key
    assert logic.process([tick(10), tick(11, "MSFT")]) == []
    clock.now += SECOND // 2  # next interval: fresh counts
    assert logic.process([tick(12), tick(13), tick(14)]) == [tick(12), tick(13)]
    assert ctx.counters == {"throttled": 8}


def test_throttle_without_key_limits_the_whole_stream() -> None:
    ctx = Context(node="t", clock=ManualClock(0))
    logic = Throttle(None, 1, 10, side_output="excess").build(ctx)
    assert logic.process([tick(1, "A"), tick(2, "B")]) == [tick(1, "A")]
    assert ctx.side == {"excess": [tick(2, "B")]}


def test_throttle_of_zero_passes_nothing_and_loses_nothing() -> None:
    ctx = Context(node="t", clock=ManualClock(0))
    logic = Throttle("symbol", 0, 10).build(ctx)
    assert logic.process([tick(1), tick(2)]) == []
    assert ctx.side == {"throttled": [tick(1), tick(2)]}


def test_throttle_without_a_side_output_drops_what_is_over_the_limit_and_counts_it() -> None:
    throttle = Throttle("symbol", 1, 10, side_output=None)
    assert throttle.side_outputs == () and throttle.side_types == {}
    ctx = Context(node="t", clock=ManualClock(0))
    assert throttle.build(ctx).process([tick(1), tick(2), tick(3)]) == [tick(1)]
    assert ctx.side == {} and ctx.counters == {"throttled": 2}


# ---------------------------------------------------------------------------------------
# Router


def test_router_sends_each_record_to_the_first_matching_route_else_main() -> None:
    ctx = Context(node="r")
    logic = Router({"big": is_big, "msft": is_msft}).build(ctx)
    ticks = [tick(1, size=500), tick(2, "MSFT"), tick(3, "MSFT", size=100), tick(4)]
    assert logic.process(ticks) == [tick(4)]
    assert ctx.take_side() == {"big": [ticks[0], ticks[2]], "msft": [ticks[1]]}


def test_router_default_may_be_a_new_side_output_or_a_route() -> None:
    router = Router({"big": is_big}, default="rest")
    assert router.side_outputs == ("big", "rest")
    ctx = Context(node="r")
    assert router.build(ctx).process([tick(1), tick(2, size=100)]) == []
    assert ctx.side == {"big": [tick(2, size=100)], "rest": [tick(1)]}

    router = Router({"big": is_big, "msft": is_msft}, default="msft")
    assert router.side_outputs == ("big", "msft")
    ctx = Context(node="r")
    ticks = [tick(1), tick(2, "MSFT"), tick(3)]
    assert router.build(ctx).process(ticks) == []
    assert ctx.side == {"msft": ticks}  # in arrival order


# ---------------------------------------------------------------------------------------
# Map, Filter, FlatMap


def test_map_filter_flat_map() -> None:
    ctx = Context(node="m")
    ticks = [tick(1, size=100), tick(2, "MSFT")]
    assert Map(doubled).build(ctx).process(ticks) == [doubled(t) for t in ticks]
    assert Filter(is_big).build(ctx).process(ticks) == [ticks[0]]
    assert FlatMap(twice).build(ctx).process(ticks) == [ticks[0], ticks[0], ticks[1], ticks[1]]
    assert FlatMap(nothing_for_aapl).build(ctx).process(ticks) == [ticks[1]]


def test_transforms_name_their_functions_readably() -> None:
    assert repr(Map(doubled)).startswith("Map(<function doubled at test_market_ops.py:")
    assert "'big': <function is_big at test_market_ops.py:" in repr(Router({"big": is_big}))
    assert repr(Filter(len)) == "Filter(<builtin_function_or_method builtins.len>)"


# ---------------------------------------------------------------------------------------
# Configs


def test_configs_pickle_and_declare_their_outputs() -> None:
    configs: list[Any] = [
        Dedupe(None, "1s"),
        Dedupe(("symbol", "ts"), 10, max_keys=5, output_type=Tick),
        Dedupe(trade_id, 10),
        Throttle("symbol", 10, "1s", output_type=Tick),
        Router({"big": is_big, "msft": is_msft}, default="other", output_type=Tick),
        Map(doubled, output_type=Tick),
        Filter(is_big),
        FlatMap(twice),
    ]
    for config in configs:
        copy = pickle.loads(pickle.dumps(config))
        assert copy == config and hash(copy) == hash(config)
        assert copy.side_outputs == config.side_outputs
    assert configs[0].horizon_ns == SECOND
    assert configs[3].side_outputs == ("throttled",)
    assert configs[3].side_types == {"throttled": Tick}
    assert configs[4].side_types == dict.fromkeys(("big", "msft", "other"), Tick)
    assert configs[5].output_type is Tick and configs[6].output_type is None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Dedupe(None, -1), "Dedupe horizon_ns must not be negative"),
        (lambda: Dedupe(None, "soon"), "Dedupe horizon_ns: cannot read 'soon'"),
        (lambda: Dedupe(None, 10, max_keys=0), "Dedupe max_keys must be at least 1"),
        (lambda: Dedupe(cast(Any, 42), 10), "Dedupe key must be a field name"),
        (lambda: Throttle("symbol", -1, 10), "Throttle max_records must not be negative"),
        (lambda: Throttle("symbol", 1, 0), "Throttle interval_ns must be positive"),
        (lambda: Throttle("symbol", 1, 10, side_output="main"), "other than 'main'"),
        (lambda: Router({}), "Router routes must be a non-empty dict"),
        (lambda: Router({"main": is_big}), "Router route name must name a side output"),
        (lambda: Router({"big": cast(Any, 3)}), "Router route 'big' must be a function"),
        (lambda: Router({"big": is_big}, default=""), "Router default must name"),
        (lambda: Map(cast(Any, "upper")), "Map fn must be a function of one record"),
        (lambda: Filter(cast(Any, None)), "Filter fn must be a function"),
    ],
)
def test_bad_configs_are_refused_with_the_fix(make: Any, match: str) -> None:
    with pytest.raises(DagError, match=match):
        make()


MARKET_NAMES = {"Dedupe", "Filter", "FlatMap", "Map", "Router", "Throttle"}


def test_public_names() -> None:
    assert set(operators.__all__) >= MARKET_NAMES
    for name in MARKET_NAMES:
        assert name in vars(operators)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 12), st.integers(0, 30), st.booleans()),
        max_size=60,
    ),
    st.integers(0, 15),
)
def test_dedupe_late_records_never_change_an_on_time_records_fate(
    raw: list[tuple[int, int, int, bool]], horizon: int
) -> None:
    """Late records (behind the watermark) mixed in: each on-time record is kept exactly
    when no remembered on-time kept record is within the horizon (late ones are checked,
    not remembered), whatever was forgotten."""
    logic = Dedupe("symbol", horizon).build(Context(node="d"))
    now, watermark = 0, None
    remembered: list[Tick] = []
    for symbol, step, back, mark in raw:
        now += step
        t = tick(now - back, symbol=f"S{symbol}")
        on_time = watermark is None or t.ts >= watermark
        got = logic.process([t])
        if on_time:
            want = not any(k.symbol == t.symbol and abs(k.ts - t.ts) <= horizon for k in remembered)
            assert got == ([t] if want else [])
            remembered += got
        if mark:
            watermark = max(watermark or 0, now - 6)
            logic.on_watermark(watermark)


def test_dedupe_caps_the_times_it_holds_not_only_the_identities() -> None:
    ctx = Context(node="d")
    logic = Dedupe("symbol", horizon_ns=0, max_keys=10).build(ctx)
    logic.process([tick(t) for t in range(1000, 0, -1)])  # one identity, 1,000 kept times
    assert ctx.counters["dedupe_evicted"] >= 1
    assert logic._held <= 10
