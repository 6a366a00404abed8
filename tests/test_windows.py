"""Event-time windows and aggregations, checked against a brute-force reference model.

Every test drives operator logic in-process: ``config.build(Context(node="w"))``, then
``process`` / ``on_watermark`` / ``on_eof`` by hand, as a source would (watermark = max
event time seen - lateness, after every batch).
"""

from __future__ import annotations

import itertools
import math
import pickle
import random
from collections import defaultdict
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators
from engine.batch import MIN_WATERMARK
from engine.errors import DagError
from engine.operator import Context
from engine.records import Bar, Tick
from operators import (
    OHLCV,
    Aggregation,
    Count,
    Session,
    Sliding,
    Tumbling,
    Vwap,
    WindowAggregate,
    WindowValue,
    parse_duration,
)

SECOND = 1_000_000_000
T0 = 1_700_000_000_000_000_000  # a real epoch-ns time: ints beyond 2**60

# ---------------------------------------------------------------------------------------
# Driving logic as the engine would


def drive(config: Any, steps: list[Any]) -> tuple[list[list[Any]], list[Any], dict[str, int]]:
    """Run ``steps`` (lists of records, or ints for watermarks) then EOF through a fresh
    replica. Returns the output of each watermark and of EOF (last), the late records and
    the counters."""
    ctx = Context(node="w")
    logic = config.build(ctx)
    fired: list[list[Any]] = []
    for step in steps:
        if isinstance(step, int):
            fired.append(logic.on_watermark(step))
        else:
            assert logic.process(step) == []
    fired.append(logic.on_eof())
    assert logic.on_eof() == [], "EOF must free every window"
    return fired, ctx.side.get("late", []), ctx.counters


def as_source(ticks: list[Tick], cuts: list[int], lateness: int) -> list[Any]:
    """Batches cut at ``cuts``, each followed by watermark = max ts seen - lateness."""
    steps: list[Any] = []
    high = MIN_WATERMARK
    bounds = [0, *cuts, len(ticks)]
    for lo, hi in itertools.pairwise(bounds):
        batch = ticks[lo:hi]
        if not batch:
            continue
        high = max(high, *(t.ts for t in batch))
        steps += [batch, high - lateness]
    return steps


# ---------------------------------------------------------------------------------------
# The reference model: per-record rules, no incremental state


def bar(key: Any, start: int, end: int, ticks: list[Tick]) -> Bar:
    """OHLCV of ``ticks`` (in arrival order), summing in arrival order."""
    first = min(range(len(ticks)), key=lambda i: (ticks[i].ts, i))
    last = max(range(len(ticks)), key=lambda i: (ticks[i].ts, i))
    volume = pv = 0.0
    for t in ticks:
        volume += t.size
        pv += t.price * t.size
    return Bar(
        key,
        start,
        end,
        ticks[first].price,
        max(t.price for t in ticks),
        min(t.price for t in ticks),
        ticks[last].price,
        volume,
        pv / volume if volume else math.nan,
        len(ticks),
    )


def brute_windows(t: int, size: int, slide: int, offset: int) -> list[tuple[int, int]]:
    """Every window offset + k*slide + [0, size) holding t, by trying each k nearby."""
    ks = range((t - size - offset) // slide - 1, (t - offset) // slide + 2)
    starts = [offset + k * slide for k in ks]
    return [(s, s + size) for s in starts if s <= t < s + size]


def reference_fixed(steps: list[Any], size: int, slide: int, offset: int) -> Any:
    watermark = MIN_WATERMARK
    points: list[int] = []
    windows: dict[tuple[Any, int, int], list[Tick]] = defaultdict(list)
    late = []
    for step in steps:
        if isinstance(step, int):
            watermark = max(watermark, step)
            points.append(watermark)
            continue
        for tick in step:
            mine = brute_windows(tick.ts, size, slide, offset)
            if any(end <= watermark for _, end in mine):
                late.append(tick)
            for start, end in mine:
                if end > watermark:
                    windows[tick.symbol, start, end].append(tick)
    fired: list[list[Bar]] = [[] for _ in range(len(points) + 1)]
    for (key, start, end), ticks in windows.items():
        point = next((i for i, w in enumerate(points) if w >= end), len(points))
        fired[point].append(bar(key, start, end, ticks))
    return [sorted(f, key=lambda b: (b.window_end, b.symbol)) for f in fired], late


def components(ticks: list[Tick], gap: int) -> list[list[Tick]]:
    """Split ticks into sessions: sorted by time, cut where consecutive ts differ by >= gap.
    Each session keeps its ticks in arrival order."""
    order = sorted(range(len(ticks)), key=lambda i: ticks[i].ts)
    groups: list[list[int]] = []
    for i in order:
        if groups and ticks[i].ts - ticks[groups[-1][-1]].ts < gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [[ticks[i] for i in sorted(g)] for g in groups]


def reference_session(steps: list[Any], gap: int) -> Any:
    watermark = MIN_WATERMARK
    held: dict[str, list[Tick]] = defaultdict(list)  # accepted, not yet fired
    late = []
    fired: list[list[Bar]] = []

    def fire(limit: float) -> list[Bar]:
        out = []
        for key, ticks in held.items():
            keep = []
            for session in components(ticks, gap):
                end = max(t.ts for t in session) + gap
                if end <= limit:
                    out.append(bar(key, min(t.ts for t in session), end, session))
                else:
                    keep += session
            kept = {id(t) for t in keep}
            held[key] = [t for t in ticks if id(t) in kept]  # arrival order
        return sorted(out, key=lambda b: (b.window_end, b.symbol))

    for step in steps:
        if isinstance(step, int):
            watermark = max(watermark, step)
            fired.append(fire(watermark))
            continue
        for tick in step:
            ticks = [*held[tick.symbol], tick]
            (session,) = [s for s in components(ticks, gap) if any(t is tick for t in s)]
            if max(t.ts for t in session) + gap <= watermark:
                late.append(tick)
            else:
                held[tick.symbol].append(tick)
    fired.append(fire(math.inf))
    return fired, late


def same_bars(got: list[list[Bar]], want: list[list[Bar]], *, exact: bool = True) -> None:
    """Equal emission by emission; NaN equals NaN; with exact=False volume and vwap (summed
    in another order when sessions merge) only need to be close."""

    def fields(b: Bar) -> tuple[Any, ...]:
        values = [getattr(b, f) for f in b.__struct_fields__]
        return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)

    assert len(got) == len(want)
    for g_list, w_list in zip(got, want, strict=True):
        assert [type(b) for b in g_list] == [Bar] * len(g_list)
        if exact:
            assert [fields(b) for b in g_list] == [fields(b) for b in w_list]
            continue
        assert len(g_list) == len(w_list)
        for g, w in zip(g_list, w_list, strict=True):
            gf, wf = fields(g), fields(w)
            assert gf[:7] == wf[:7] and gf[9] == wf[9], (g, w)
            for a, b in zip(gf[7:9], wf[7:9], strict=True):
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9), (g, w)


# ---------------------------------------------------------------------------------------
# Property tests against the reference


# Each property test stays around a second: examples are small (streams() draws at most 60
# ticks and 20 cuts) and few. No deadline (timings vary under a loaded full run); a hang is
# caught by the bounded regression tests below instead.
PROPERTY = settings(max_examples=200, deadline=None)


@st.composite
def streams(draw: Any) -> tuple[list[Tick], list[int], int]:
    """Ticks over a few symbols, with disorder sometimes within, sometimes beyond, the
    lateness bound; equal timestamps and prices are common. Returns ticks, batch cuts and
    the lateness."""
    symbols = ["AAPL", "MSFT", "TSLA"][: draw(st.integers(1, 3))]
    base = draw(st.sampled_from([0, T0, -7_000]))
    lateness = draw(st.integers(0, 10))
    disorder = draw(st.sampled_from([0, lateness, lateness * 3 + 10, 50]))
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from(symbols),
                st.sampled_from([0, 0, 1, 2, 3, 7, 25]),
                st.integers(0, disorder),
                st.sampled_from([1.0, 1.25, 2.0, 3.5, 100.1]),
                st.sampled_from([0.0, 1.0, 3.0, 0.5, 250.0]),
            ),
            min_size=1,
            max_size=60,
        )
    )
    ticks, nominal = [], base
    for symbol, step, jitter, price, size in raw:
        nominal += step
        ticks.append(Tick(symbol, nominal - jitter, price, size))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(ticks) - 1, 1)), max_size=20)))
    return ticks, cuts, lateness


@PROPERTY
@given(streams(), st.integers(1, 30), st.integers(-50, 50))
def test_tumbling_matches_reference(stream: Any, size: int, offset: int) -> None:
    ticks, cuts, lateness = stream
    steps = as_source(ticks, cuts, lateness)
    fired, late, counters = drive(WindowAggregate(Tumbling(size, offset), OHLCV()), steps)
    want, want_late = reference_fixed(steps, size, size, offset)
    same_bars(fired, want)
    assert late == want_late
    assert counters.get("late", 0) == len(want_late)


@PROPERTY
@given(streams(), st.integers(1, 30), st.data())
def test_sliding_matches_reference(stream: Any, size: int, data: Any) -> None:
    ticks, cuts, lateness = stream
    slide = data.draw(st.integers(1, size))
    offset = data.draw(st.integers(-50, 50))
    steps = as_source(ticks, cuts, lateness)
    fired, late, counters = drive(WindowAggregate(Sliding(size, slide, offset), OHLCV()), steps)
    want, want_late = reference_fixed(steps, size, slide, offset)
    same_bars(fired, want)
    assert late == want_late
    assert counters.get("late", 0) == len(want_late)


@PROPERTY
@given(streams(), st.integers(1, 20))
def test_session_matches_reference(stream: Any, gap: int) -> None:
    ticks, cuts, lateness = stream
    steps = as_source(ticks, cuts, lateness)
    fired, late, counters = drive(WindowAggregate(Session(gap), OHLCV()), steps)
    want, want_late = reference_session(steps, gap)
    same_bars(fired, want, exact=False)
    assert late == want_late
    assert counters.get("late", 0) == len(want_late)


ASSIGNERS = [Tumbling(7, 3), Sliding(9, 4, -2), Session(5)]


@settings(PROPERTY, max_examples=100)
@given(streams(), st.sampled_from(ASSIGNERS), st.data())
def test_batch_cuts_change_nothing_but_watermarks(stream: Any, assigner: Any, data: Any) -> None:
    """Cutting a batch in two without a watermark between the halves changes no output."""
    ticks, cuts, lateness = stream
    steps = as_source(ticks, cuts, lateness)
    recut: list[Any] = []
    for step in steps:
        if isinstance(step, int) or len(step) < 2:
            recut.append(step)
            continue
        inner = sorted(data.draw(st.sets(st.integers(1, len(step) - 1), max_size=3)))
        bounds = [0, *inner, len(step)]
        recut += [step[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    config = WindowAggregate(assigner, OHLCV())
    assert drive(config, recut) == drive(config, steps)


# ---------------------------------------------------------------------------------------
# Examples


def tick(ts: int, price: float = 1.0, size: float = 1.0, symbol: str = "AAPL") -> Tick:
    return Tick(symbol, ts, price, size)


def at_eof(config: Any, records: list[Any]) -> list[Any]:
    """What one batch then EOF (no watermark) produces."""
    return drive(config, [records])[0][-1]


def test_ohlcv_breaks_time_ties_by_arrival_order() -> None:
    ticks = [tick(5, 1.0), tick(3, 2.0), tick(3, 3.0), tick(7, 4.0), tick(7, 5.0), tick(4, 6.0)]
    (bars,) = at_eof(WindowAggregate(Tumbling(10), OHLCV()), ticks)
    assert (bars.open, bars.close, bars.high, bars.low) == (2.0, 5.0, 6.0, 1.0)
    assert (bars.window_start, bars.window_end, bars.count, bars.volume) == (0, 10, 6, 6.0)
    assert bars.vwap == pytest.approx(3.5)


def test_ohlcv_bar_over_real_times() -> None:
    ticks = [tick(T0 + 1, 10.0, 2.0), tick(T0 + SECOND - 1, 12.0, 1.0), tick(T0, 11.0, 1.0)]
    (b,) = at_eof(WindowAggregate(Tumbling("1s"), OHLCV()), ticks)
    assert b == Bar("AAPL", T0, T0 + SECOND, 11.0, 12.0, 10.0, 12.0, 4.0, 43.0 / 4.0, 3)


def test_zero_volume_bar_has_nan_vwap() -> None:
    (b,) = at_eof(WindowAggregate(Tumbling(10), OHLCV()), [tick(1, 2.0, 0.0)])
    assert b.volume == 0.0 and math.isnan(b.vwap)


def test_watermark_fires_windows_in_end_then_key_order_and_eof_fires_the_rest() -> None:
    ticks = [tick(25, symbol="B"), tick(3, symbol="C"), tick(12, symbol="A"), tick(5, symbol="A")]
    fired, late, _ = drive(WindowAggregate(Tumbling(10), Count()), [ticks, 20])
    assert fired == [
        [WindowValue("A", 0, 10, 1), WindowValue("C", 0, 10, 1), WindowValue("A", 10, 20, 1)],
        [WindowValue("B", 20, 30, 1)],
    ]
    assert late == []


def test_window_fires_when_watermark_reaches_its_end_not_before() -> None:
    fired, _, _ = drive(WindowAggregate(Tumbling(10), Count()), [[tick(0)], 9, 10])
    assert fired == [[], [WindowValue("AAPL", 0, 10, 1)], []]


def test_late_records_are_counted_and_sent_to_the_late_output_unchanged() -> None:
    config = WindowAggregate(Tumbling(10), OHLCV(), late_output="stragglers")
    ctx = Context(node="w")
    logic = config.build(ctx)
    logic.process([tick(1), tick(15)])
    assert [b.window_start for b in logic.on_watermark(10)] == [0]
    logic.process([tick(9, 7.0), tick(10, 8.0), tick(2, 9.0)])
    assert ctx.take_side() == {"stragglers": [tick(9, 7.0), tick(2, 9.0)]}
    assert ctx.counters == {"late": 2}
    (b,) = logic.on_eof()
    assert (b.window_start, b.count, b.open) == (10, 2, 8.0)


def test_sliding_record_that_missed_a_window_is_late_and_still_fills_open_ones() -> None:
    config = WindowAggregate(Sliding(10, 5), Count())
    fired, late, counters = drive(config, [[tick(12)], 12, [tick(11)]])
    # windows of 11 and 12: [5, 15) and [10, 20); [5, 15) has not fired at watermark 12
    assert late == [] and fired[0] == []
    fired, late, counters = drive(config, [[tick(12), tick(16)], 15, [tick(11)]])
    assert fired[0] == [WindowValue("AAPL", 5, 15, 1)]
    assert late == [tick(11)] and counters == {"late": 1}
    assert fired[1] == [WindowValue("AAPL", 10, 20, 3), WindowValue("AAPL", 15, 25, 1)]


def test_sliding_windows_cover_each_record_size_over_slide_times() -> None:
    config = WindowAggregate(Sliding("3s", "1s"), Count())
    fired, _, _ = drive(config, [[tick(T0 + 500_000_000)]])
    assert [(v.window_start - T0, v.value) for v in fired[-1]] == [
        (-2 * SECOND, 1),
        (-SECOND, 1),
        (0, 1),
    ]


def test_session_merges_when_a_record_bridges_two_sessions() -> None:
    config = WindowAggregate(Session(10), OHLCV())
    ticks = [tick(0, 1.0), tick(18, 2.0), tick(40, 5.0)]
    ctx = Context(node="w")
    logic = config.build(ctx)
    logic.process(ticks)  # sessions [0, 10), [18, 28), [40, 50)
    assert logic.on_watermark(5) == []
    logic.process([tick(9, 3.0)])  # 9 is within 10 of both 0 and 18
    assert logic.on_watermark(27) == []
    (first,) = logic.on_watermark(28)
    assert (first.window_start, first.window_end, first.count) == (0, 28, 3)
    assert (first.open, first.high, first.low, first.close) == (1.0, 3.0, 1.0, 2.0)
    (second,) = logic.on_eof()
    assert (second.window_start, second.window_end, second.count) == (40, 50, 1)


def test_session_record_touching_an_open_session_is_not_late() -> None:
    config = WindowAggregate(Session(10), Count())
    fired, late, _ = drive(config, [[tick(0), tick(8)], 12, [tick(1)], 17, 18])
    assert late == []
    assert fired == [[], [], [WindowValue("AAPL", 0, 18, 3)], []]
    fired, late, _ = drive(config, [[tick(0)], [tick(50)], 40, [tick(15)]])
    assert late == [tick(15)]


def test_session_state_stays_bounded_on_a_long_stream() -> None:
    """Regression: a key that always had an open session kept the heap entry of every session
    it ever had, and each watermark popped and pushed them all again, so the cost of a
    watermark grew with the length of the stream (quadratic in all: 18 s for 4000 records).
    Now the heap holds one entry per open session (plus merged-away ones not yet due) and a
    watermark touches only what is due; the old code fails this within a few records."""
    gap, lag = 10, 5
    logic = WindowAggregate(Session(gap), Count()).build(Context(node="w"))
    state: Any = logic
    fired: list[Any] = []
    for i in range(5000):
        t = i * 2 * gap  # every record starts a session; lag + 1 of them are open at a time
        logic.process([tick(t)])
        fired += logic.on_watermark(t - lag * 2 * gap)
        assert len(state._heap) <= lag + 1, i
        assert sum(map(len, state._sessions.values())) <= lag + 1, i
    fired += logic.on_eof()
    assert fired == [WindowValue("AAPL", i * 2 * gap, i * 2 * gap + gap, 1) for i in range(5000)]
    assert state._heap == [] and state._sessions == {}


def test_session_many_open_sessions_of_one_key_match_reference() -> None:
    """Many sessions of a key open at once (a gap much shorter than the lateness), records
    far out of order, sessions merging in the middle of the key's list: the case where a
    per-record scan of the key's sessions was quadratic."""
    rng = random.Random(20240611)
    ticks = [
        tick(rng.randrange(0, 6000), rng.choice([1.0, 2.0, 3.5]), 1.0, rng.choice("AB"))
        for _ in range(600)
    ]
    cuts = sorted(rng.sample(range(1, len(ticks)), 40))
    for gap, lateness in [(3, 5000), (7, 2000), (40, 300)]:
        steps = as_source(ticks, cuts, lateness)
        fired, late, counters = drive(WindowAggregate(Session(gap), OHLCV()), steps)
        want, want_late = reference_session(steps, gap)
        same_bars(fired, want, exact=False)
        assert late == want_late
        assert counters.get("late", 0) == len(want_late)


def test_session_records_filling_gaps_chain_merges_in_reverse() -> None:
    """Sessions [0, 5), [10, 15), ...; then records at 5, 15, ... (last first) each bridge
    two sessions, so they merge from the end of the key's list back to one session."""
    n = 2000
    config = WindowAggregate(Session(6), Count())
    fired, late, _ = drive(config, [[tick(10 * i) for i in range(n)], 0])
    assert fired[-1] == [WindowValue("AAPL", 10 * i, 10 * i + 6, 1) for i in range(n)]
    steps = [[tick(10 * i) for i in range(n)], 0, [tick(10 * i + 5) for i in reversed(range(n))]]
    fired, late, _ = drive(config, steps)
    assert late == [] and fired == [[], [WindowValue("AAPL", 0, 10 * n + 1, 2 * n)]]


def test_initial_watermark_comes_from_the_context() -> None:
    ctx = Context(node="w", watermark=100)
    logic = WindowAggregate(Tumbling(10), Count()).build(ctx)
    logic.process([tick(95), tick(105)])
    assert ctx.side == {"late": [tick(95)]}
    assert logic.on_watermark(50) == []  # the watermark does not go back
    assert logic.on_eof() == [WindowValue("AAPL", 100, 110, 1)]


def test_keys_may_be_functions_or_tuples_and_need_not_compare() -> None:
    ticks = [tick(1, symbol="A"), tick(2, symbol="B"), tick(3, symbol="A")]
    fired, _, _ = drive(WindowAggregate(Tumbling(10), Count(), key=first_letter), [ticks])
    assert fired[-1] == [WindowValue("A", 0, 10, 2), WindowValue("B", 0, 10, 1)]
    fired, _, _ = drive(WindowAggregate(Tumbling(10), Count(), key=("symbol", "size")), [ticks])
    assert [v.key for v in fired[-1]] == [("A", 1.0), ("B", 1.0)]
    fired, _, _ = drive(WindowAggregate(Tumbling(10), Count(), key=odd_or_name), [ticks])
    assert [v.key for v in fired[-1]] == [1, "B"]  # arrival order when keys do not compare


def first_letter(t: Tick) -> str:
    return t.symbol[0]


def odd_or_name(t: Tick) -> Any:
    return 1 if t.symbol == "A" else t.symbol


class LastPrice(Aggregation):
    """A user-written aggregation: the price of the latest record (ties: last to arrive)."""

    output_type = WindowValue

    def initial(self) -> Any:
        return None

    def add(self, acc: Any, record: Any) -> Any:
        return record if acc is None or record.ts >= acc.ts else acc

    def merge(self, a: Any, b: Any) -> Any:
        return b if b.ts >= a.ts else a

    def result(self, acc: Any, key: Any, start: int, end: int) -> WindowValue:
        return WindowValue(key, start, end, acc.price)


def test_count_vwap_and_user_aggregations() -> None:
    ticks = [tick(1, 10.0, 1.0), tick(3, 20.0, 3.0), tick(2, 30.0, 1.0)]
    for agg, value in [(Count(), 3), (Vwap(), 20.0), (LastPrice(), 20.0)]:
        for assigner in (Tumbling(10), Sliding(10, 10), Session(10)):
            fired, _, _ = drive(WindowAggregate(assigner, agg), [ticks])
            (result,) = fired[-1]
            assert result.value == value, (agg, assigner)


def test_ohlcv_with_other_field_names() -> None:
    agg = OHLCV(price="size", size="price")
    (b,) = at_eof(WindowAggregate(Tumbling(10), agg), [tick(1, 2.0, 5.0)])
    assert (b.open, b.volume) == (5.0, 2.0)
    assert pickle.loads(pickle.dumps(agg)) == agg


def test_configs_pickle_and_declare_their_types() -> None:
    configs: list[Any] = [
        Tumbling("1s", "250ms"),
        Sliding("1m", "10s"),
        Session("30s"),
        OHLCV(),
        Count(),
        Vwap(),
        WindowAggregate(Tumbling("1s"), OHLCV()),
        WindowAggregate(Session(5), Count(), key=first_letter, late_output="x", input_type=None),
        WindowAggregate(Sliding(10, 5), Vwap(), key=("symbol", "size")),
    ]
    for config in configs:
        copy = pickle.loads(pickle.dumps(config))
        assert copy == config and repr(copy) == repr(config)
    window = WindowAggregate(Tumbling("1s"), OHLCV())
    assert window.output_type is Bar
    assert window.side_outputs == ("late",) and window.side_types == {"late": None}
    assert window.passes_input("late") and not window.passes_input("main")
    assert configs[7].side_types == {"x": None}
    assert configs[8].output_type is WindowValue
    copy = pickle.loads(pickle.dumps(window))
    assert copy.output_type is Bar and copy.side_outputs == ("late",)


def test_assigners_normalise_durations_and_offsets() -> None:
    assert Tumbling("1s") == Tumbling(SECOND)
    assert Tumbling("1h", "90m").offset_ns == 30 * 60 * SECOND
    assert Sliding(10, 4, -1).offset_ns == 3
    assert Tumbling(10, 3).windows(2) == [(-7, 3)]
    assert Sliding(10, 4).windows(9) == [(0, 10), (4, 14), (8, 18)]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Tumbling(0), "Tumbling size_ns must be positive, got 0"),
        (lambda: Tumbling("1 fortnight"), "Tumbling size_ns: cannot read '1 fortnight'"),
        (lambda: Tumbling(cast(Any, 1.5)), "must be an int of nanoseconds or a duration string"),
        (lambda: Sliding(10, 20), r"slide_ns \(20\) is longer than size_ns \(10\)"),
        (lambda: Session("-1s"), "Session gap_ns must be positive"),
        (
            lambda: WindowAggregate(cast(Any, "1s"), OHLCV()),
            "assigner must be Tumbling, Sliding or Session",
        ),
        (
            lambda: WindowAggregate(Tumbling(1), cast(Any, object())),
            "lacks initial, add, merge, result",
        ),
        (
            lambda: WindowAggregate(Tumbling(1), Count(), key=cast(Any, 3)),
            "key must be a field name",
        ),
        (lambda: WindowAggregate(Tumbling(1), Count(), key="a.b"), "must be a field name"),
        (lambda: WindowAggregate(Tumbling(1), Count(), late_output="main"), "other than 'main'"),
        (lambda: OHLCV(price="not a field"), "OHLCV price must be a field name"),
    ],
)
def test_bad_configs_are_refused_with_the_fix(make: Any, match: str) -> None:
    with pytest.raises(DagError, match=match):
        make()


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("10ns", 10),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("500ms", 500_000_000),
        ("1s", SECOND),
        ("1.5s", 1_500_000_000),
        ("5m", 300 * SECOND),
        ("1h", 3600 * SECOND),
        ("1d", 86400 * SECOND),
        (" 2 s ", 2 * SECOND),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1", "write a number and a unit"),
        ("ms", "write a number and a unit"),
        ("1 sec", "write a number and a unit"),
        ("1.5ns", "not a whole number of nanoseconds"),
        (5, "must be a string"),
    ],
)
def test_parse_duration_refuses_bad_text(text: Any, match: str) -> None:
    with pytest.raises(DagError, match=match):
        parse_duration(text)


WINDOW_NAMES = {
    "OHLCV",
    "Aggregation",
    "Count",
    "Session",
    "Sliding",
    "Tumbling",
    "Vwap",
    "WindowAggregate",
    "WindowValue",
    "parse_duration",
}


def test_public_names() -> None:
    assert set(operators.__all__) >= WINDOW_NAMES
    for name in operators.__all__:
        assert getattr(operators, name) is not None


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.one_of(st.text(max_size=2), st.integers(0, 3))),
        max_size=30,
    )
)
def test_fired_windows_come_by_end_then_key_or_else_by_type_then_key(
    pairs: list[tuple[int, Any]],
) -> None:
    fired = [(end, key, end - 1, i) for i, (end, key) in enumerate(pairs)]
    expected = []
    for end in sorted({f[0] for f in fired}):
        window = [f for f in fired if f[0] == end]
        try:
            expected += sorted(window, key=lambda f: f[1])
        except TypeError:  # ints and strs: by type name ('int' < 'str'), then key
            ints = sorted((f for f in window if isinstance(f[1], int)), key=lambda f: f[1])
            expected += ints + sorted(
                (f for f in window if isinstance(f[1], str)), key=lambda f: f[1]
            )
    assert operators.windows._in_order(fired) == expected


def test_keys_that_do_not_compare_even_by_type_come_by_repr():
    fired = [(5, ("K", "B"), 4, 0), (5, ("K", None), 4, 1), (5, 2, 4, 2)]
    assert operators.windows._in_order(fired) == [fired[2], fired[0], fired[1]]  # by repr


def int_or_symbol(t: Tick) -> Any:
    """1 for "A", the symbol otherwise: keys of two types, which do not compare."""
    return 1 if t.symbol == "A" else t.symbol


@pytest.mark.parametrize("assigner", [Session(10), Tumbling(15)], ids=["session", "tumbling"])
def test_keys_that_do_not_compare_come_in_one_order_whatever_the_watermarks(assigner):
    """By type name, then key: int 1 before str 'B', whether fired at the end of input or
    by watermarks (a session that grew is fired from a later heap entry)."""
    ticks = [Tick("B", 0, 1.0, 1.0), Tick("A", 0, 1.0, 1.0), Tick("A", 5, 1.0, 1.0)]
    ticks.append(Tick("B", 5, 1.0, 1.0))
    orders = []
    for marks in ([], [12, 15], [15]):
        logic = WindowAggregate(assigner, Count(), key=int_or_symbol).build(Context("w"))
        logic.process(ticks)
        out = [r for wm in marks for r in logic.on_watermark(wm)] + logic.on_eof()
        orders.append([(r.key, r.window_end) for r in out])
    assert orders[0] == orders[1] == orders[2] == [(1, 15), ("B", 15)]


def test_a_tuple_of_one_name_keys_by_that_field():
    """As keys.py says: a bar's symbol stays a str, as a typed edge needs it."""
    logic = WindowAggregate(Tumbling(10), OHLCV(), key=("symbol",)).build(Context("w"))
    logic.process([Tick("A", 1, 1.0, 1.0)])
    assert [r.symbol for r in logic.on_eof()] == ["A"]


def test_a_tuple_key_stays_a_tuple_across_a_channel() -> None:
    # msgpack has one array type: the key came back a list, which cannot key a dict.
    from engine.batch import codec_for

    codec = codec_for(WindowValue)
    values = [WindowValue(("A", "X"), 0, 10, 3), WindowValue("B", 0, 10, 4)]
    values += [WindowValue(7, 0, 10, 5), WindowValue(None, 0, 10, 6)]
    decoded = codec.decode(codec.encode(values))
    assert decoded == values and [type(v.key) for v in decoded] == [tuple, str, int, type(None)]
    assert {v.key: v.value for v in decoded} == {("A", "X"): 3, "B": 4, 7: 5, None: 6}
