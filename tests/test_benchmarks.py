"""Smoke tests of ``python -m benchmarks``: the engines agree on the bars, the rows have the
promised schema, a disagreement fails loudly. Nothing here asserts on speed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import uvloop

from benchmarks import __main__ as cli
from benchmarks import chart, csvbars, latency, mpqueue, noise, sources
from benchmarks.checksum import Digest, bar_hash, combine
from benchmarks.common import Workload
from benchmarks.engines import bars_dag, run_single_process
from benchmarks.handroll import HandBars, fold_tick
from benchmarks.probes import BEHIND, LATE, STARTED, ClockTicks, Timed, behind_ns, late_ns
from engine.operator import Context, Watermark
from engine.records import Tick
from engine.testing import run_inline
from operators.generator import generate

SCALING_KEYS = ["engine", "replicas", "ticks", "seconds", "ticks_per_s", "checksum"]


def test_digest_is_order_free_and_counts_every_bar():
    bars = [("S0001", 0, 10, 1.0, 2.0, 0.5, 1.5, 10.0, 1.25, 3), ("S0002", 0, 10, *[1.0] * 6, 1)]
    forward, backward, twice = Digest(), Digest(), Digest()
    for b in bars:
        forward.add(*b)
    for b in reversed(bars):
        backward.add(*b)
    for b in bars + bars[:1]:
        twice.add(*b)
    assert forward.checksum() == backward.checksum()
    assert forward.checksum() != twice.checksum()
    assert combine([(1, bar_hash(*bars[0])), (1, bar_hash(*bars[1]))]) == forward


def test_hand_rolled_bars_equal_the_engines_window_operator():
    work = Workload(ticks=30_000, symbols=50)
    hand = HandBars(work.window_ns)
    ticks = generate(work.generator())
    hand.add_rows([(t.symbol, t.ts, t.price, t.size) for t in ticks], len(ticks))
    engine = run_inline(bars_dag(work, replicas=2, sources=2))
    parts = engine.sinks["digest"]
    assert combine([(p.bars, p.total) for p in parts]) == hand.finish()


def test_fold_tick_is_the_hand_loop_one_tick_at_a_time():
    # bytewax folds through fold_tick, the other baselines through the inline loop: the
    # two copies of the update must not drift apart (bytewax is not installed in CI).
    work = Workload(ticks=5_000, symbols=20, seed=3)
    ticks = generate(work.generator())
    hand = HandBars(work.window_ns)
    hand.add_rows([(t.symbol, t.ts, t.price, t.size) for t in ticks], len(ticks))
    folded: dict[int, dict[str, list]] = {}
    for t in ticks:
        bucket = folded.setdefault(t.ts - t.ts % work.window_ns, {})
        bucket[t.symbol] = fold_tick(bucket.get(t.symbol, []), t.ts, t.price, t.size)
    assert folded == hand.windows


def test_engines_agree_and_rows_have_the_schema(tmp_path, capsys):
    argv = ["--ticks", "50000", "--rounds", "2", "--replicas", "1", "--only", "throughput"]
    argv += ["--json"]
    argv += ["--engines", "single_process,ringflow,mp_queue", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scaling = [r for r in rows if r.get("bench") == "throughput"]
    assert {r["engine"] for r in scaling} == {"single_process", "ringflow", "mp_queue"}
    assert len({r["checksum"] for r in scaling}) == 1
    for row in scaling:
        assert list(row)[1:7] == SCALING_KEYS
        assert row["ticks"] == 50_000
    written = [json.loads(line) for line in (tmp_path / "scaling.jsonl").read_text().splitlines()]
    assert [list(r)[:6] for r in written] == [SCALING_KEYS] * len(scaling)
    assert (tmp_path / "scaling.svg").read_text().startswith("<svg")
    assert any(r.get("bench") == "overhead" for r in rows)


def test_a_checksum_mismatch_fails_the_run(tmp_path, monkeypatch, capsys):
    def wrong(work, replicas):
        row = run_single_process(work)
        return {**row, "engine": "mp_queue", "checksum": "0:0000000000000000"}

    monkeypatch.setattr(mpqueue, "run_mp_queue", wrong)
    argv = ["--ticks", "5000", "--replicas", "1", "--only", "throughput"]
    argv += ["--engines", "single_process,mp_queue", "--out", str(tmp_path)]
    assert cli.main(argv) == 3
    assert "CHECKSUM MISMATCH: mp_queue" in capsys.readouterr().err


def test_source_counts_tried_are_those_not_above_r():
    assert cli._sources_for(8, [1, 4, 6, 8, 12]) == [1, 4, 6, 8]
    assert cli._sources_for(1, [1, 4]) == [1]
    assert cli._sources_for(2, [4, 6]) == [4]  # none fits: the smallest chosen
    assert cli._sources_for(4, None) == [1, 2, 4]


def test_overhead_rows_report_how_busy_each_node_was(tmp_path, capsys):
    argv = ["--ticks", "20000", "--rounds", "1", "--replicas", "2", "--sources", "2"]
    argv += ["--only", "throughput", "--engines", "single_process,ringflow", "--slots", "4"]
    assert cli.main([*argv, "--json", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [ringflow] = [r for r in rows if r.get("engine") == "ringflow" and r["bench"] == "throughput"]
    [overhead] = [r for r in rows if r.get("bench") == "overhead"]
    assert (ringflow["replicas"], ringflow["sources"], ringflow["slots"]) == (2, 2, 4)
    for node in ("ticks", "bars", "digest"):
        assert overhead[f"{node}_busy_pct"] > 0 and overhead[f"{node}_blocked_pct"] >= 0


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["--only", "speed"])


def test_the_source_batch_size_is_every_engines_and_recorded(tmp_path, capsys):
    argv = ["--ticks", "20000", "--rounds", "1", "--replicas", "2", "--sources", "2"]
    argv += ["--only", "throughput", "--engines", "single_process,ringflow", "--batch", "5000"]
    assert cli.main([*argv, "--json", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [r for r in rows if r["bench"] == "throughput"]
    [ringflow] = [r for r in runs if r["engine"] == "ringflow"]
    assert ringflow["batch"] == 5000
    assert len({r["checksum"] for r in runs}) == 1


def test_ratios_are_also_reported_round_by_round(tmp_path, capsys):
    argv = ["--ticks", "20000", "--rounds", "2", "--replicas", "1", "--sources", "1"]
    argv += ["--only", "throughput", "--engines", "single_process,ringflow"]
    assert cli.main([*argv, "--json", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [r for r in rows if r["bench"] == "throughput"]
    assert sorted((r["engine"], r["round"]) for r in runs) == [
        ("ringflow", 0),
        ("ringflow", 1),
        ("single_process", 0),
        ("single_process", 1),
    ]
    [per_round] = [r for r in rows if r["bench"] == "ratio" and r["replicas"] == "per_round"]
    rate = {(r["engine"], r["round"]): r["ticks_per_s"] for r in runs}
    want = [round(rate["ringflow", k] / rate["single_process", k], 2) for k in (0, 1)]
    assert per_round["ringflow_vs_single_process"] == want
    assert per_round["ringflow_vs_single_process_median"] == round(sum(want) / 2, 2)
    assert "ringflow_vs_mp_queue" not in per_round  # not run: no ratio
    names = [r["name"] for r in rows if r["bench"] == "target"]
    assert "ringflow_vs_single_process, median round" in names


def test_a_source_batch_below_one_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--batch", "0"])
    assert "--batch: must be at least 1, got 0" in capsys.readouterr().err


def test_a_channel_depth_below_one_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--slots", "0"])
    assert "--slots: must be at least 1, got 0" in capsys.readouterr().err


def test_latency_rows_count_window_closes():
    # Shape only: latencies on a loaded machine are what they are.
    row = latency.run_latency("bars", rate=20_000, linger=0.002, seconds=2.5, replicas=1)
    assert row["closes"] >= 1
    assert row["samples"] >= row["closes"]  # every close brought at least one bar
    assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["close_p50_ms"] <= row["close_max_ms"] == row["max_ms"]
    assert row["overloaded"] is (row["source_late_ms"] > latency.OVERLOAD_MS)
    assert row["source_behind_ms"] >= 0 and row["source_late_ms"] >= 0


@pytest.mark.parametrize("hold_after", ["first", "last"])
def test_a_paced_source_held_back_counts_how_far_it_fell_behind(hold_after):
    # The consumer holds the source for 50 ms after a batch, as backpressure would. After
    # the first, the next wake-up is at least that far behind the schedule; after the
    # last, the source finishes at least that late (lower bounds, so no timing
    # assumption). Either way the rate holds: every tick owed is made.
    ctx = Context("ticks", replica=0, parallelism=1)
    source = ClockTicks(rate=20_000, seconds=0.1)

    async def consume() -> int:
        made = 0
        k = 0
        async for batch in source.build(ctx).batches():
            made += len(batch)
            if (hold_after == "first" and k == 0) or (hold_after == "last" and made == 2_000):
                time.sleep(0.05)  # the consumer does not ask for the next batch meanwhile
            k += 1
        return made

    assert asyncio.run(consume()) == 2_000
    assert ctx.counters[f"{BEHIND}0"] >= (50_000_000 if hold_after == "first" else 0)
    assert ctx.counters[f"{LATE}0"] >= (50_000_000 if hold_after == "last" else 0)
    assert behind_ns(ctx.counters) == ctx.counters[f"{BEHIND}0"]
    assert late_ns(ctx.counters) == ctx.counters[f"{LATE}0"]
    assert behind_ns({}) == late_ns({}) == 0  # an unpaced source says nothing


def test_a_paced_source_makes_at_most_one_batch_per_interval():
    # Its wake-ups are the interval's boundaries, so a 0.1 s schedule at 1 ms is at most
    # 101 batches however the loop is scheduled (a late wake-up makes a larger batch),
    # not one batch per sleep the system's timer allows.
    ctx = Context("ticks", replica=0, parallelism=1)
    source = ClockTicks(rate=20_000, seconds=0.1, interval=0.001)

    async def consume() -> list[list[Tick]]:
        return [batch async for batch in source.build(ctx).batches()]

    loop = uvloop.new_event_loop()  # the workers' loop, whose timers count milliseconds
    try:
        batches = loop.run_until_complete(consume())
    finally:
        loop.close()
    assert sum(len(b) for b in batches) == 2_000
    assert len(batches) <= 101
    assert all(len({t.ts for t in b}) == 1 for b in batches)  # stamped at creation


@pytest.mark.parametrize("rate", [None, 20_000.0], ids=["sync", "async"])
def test_timed_starts_the_clock_at_the_first_batch_not_when_built(rate):
    # A worker builds its source and asks for its iterator before the job's go: the
    # measured interval must not include that wait.
    ctx = Context("ticks", replica=0, parallelism=1)
    items = Timed(ClockTicks(rate=rate, seconds=0.01, count=100)).build(ctx).batches()
    assert f"{STARTED}0" not in ctx.counters
    before = time.monotonic_ns()
    if rate is None:
        next(items)
    else:
        asyncio.run(anext(items))
    assert ctx.counters[f"{STARTED}0"] >= before


def test_an_overloaded_latency_run_is_not_counted_against_or_for_the_target(capsys):
    report = cli.Report(as_json=False)
    # A stall the source recovered from (behind, not late) is in the latencies: judged.
    for pipeline, late, p99 in (("ticks", 2.0, 30.0), ("bars", 6_000.0, 5.0)):
        report.rows.append(
            {
                "bench": "latency",
                "pipeline": pipeline,
                "linger_ms": cli.LINGERS[0] * 1e3,
                "p99_ms": p99,
                "source_behind_ms": 200.0,
                "source_late_ms": late,
                "overloaded": late > latency.OVERLOAD_MS,
            }
        )
    cli.targets(report)
    out = capsys.readouterr().out
    assert "p99 ticks (default linger): 30.0 (target <= 10 ms): MISSED" in out
    assert "p99 bars (default linger): 5.0 (target <= 10 ms): not measured (overloaded" in out


def test_latency_replicas_below_one_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--latency-replicas", "0"])
    assert "--latency-replicas: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("parallelism", [1, 3])
def test_unpaced_clock_ticks_make_exactly_their_count(parallelism):
    made = []
    for replica in range(parallelism):
        ctx = Context("ticks", replica=replica, parallelism=parallelism)
        source = ClockTicks(rate=None, seconds=0.0, count=10_000, batch=700, watermarks=True)
        items = list(source.build(ctx).batches())
        batches = [i for i in items if not isinstance(i, Watermark)]
        assert all(len(b) <= 700 for b in batches)
        assert len(batches) == sum(isinstance(i, Watermark) for i in items)
        made += [t for b in batches for t in b]
    assert len(made) == 10_000
    assert len({t.symbol for t in made}) == 1000


def test_half_load_is_half_the_median_maximum_so_one_high_reading_does_not_set_it():
    maxima = [{"ticks_per_s": r} for r in (1_500_000, 2_250_000, 1_470_000)]
    assert latency.half_load(maxima) == 750_000
    assert latency.half_load(maxima[:1]) == 750_000


def test_each_latency_pipeline_has_its_own_maximum():
    top = latency.maximum("ticks", replicas=1, ticks=20_000, linger=0.002)
    assert (top["pipeline"], top["ticks"]) == ("ticks", 20_000)
    assert top["seconds"] > 0
    assert top["ticks_per_s"] == pytest.approx(20_000 / top["seconds"], rel=0.01)  # rounding


def test_a_long_subtitle_is_set_smaller_to_stay_inside_the_picture():
    rows = [
        {"engine": "ringflow", "replicas": r, "ticks_per_s": 1000 * r, "sources": 1} for r in (1, 2)
    ]
    short = chart.scaling_svg(rows, "title", "2 CPUs")
    long = chart.scaling_svg(rows, "title", "x" * 200)
    assert '<text x="80" y="38" fill="#555">2 CPUs</text>' in short
    size = float(long.split('y="38" fill="#555" font-size="')[1].split('"')[0])
    assert 200 * 0.55 * size <= chart.WIDTH - chart.LEFT - 10 < 200 * 0.55 * 12


def test_the_targets_are_the_issues_for_the_machines_size():
    assert cli.ratio_targets(2) == {"ringflow_vs_single_process": 1.2, "ringflow_vs_mp_queue": 2.0}
    assert cli.ratio_targets(8) == cli.ratio_targets(2)
    assert cli.ratio_targets(16) == {
        "ringflow_vs_single_process": 8.0,
        "ringflow_efficiency": 0.7,
    }


def test_efficiency_is_ringflow_at_r_over_r_times_its_one_replica_rate(monkeypatch, capsys):
    monkeypatch.setattr(cli, "usable_cpus", lambda: 16)
    rows = [
        {"engine": engine, "replicas": r, "ticks_per_s": rate, "round": 0}
        for engine, r, rate in (
            ("single_process", 1, 1_000_000),
            ("ringflow", 1, 1_500_000),
            ("ringflow", 8, 9_000_000),  # two source counts: the best one counts
            ("ringflow", 8, 10_800_000),
            ("mp_queue", 8, 900_000),
        )
    ]
    report = cli.Report(as_json=False)
    cli._ratios(rows, [1, 8], report)
    ratios = {r["replicas"]: r for r in report.rows}
    assert ratios[1]["ringflow_efficiency"] is None
    assert ratios[8]["ringflow_efficiency"] == 0.9  # 10.8 M / (8 x 1.5 M)
    assert ratios["best"]["ringflow_vs_single_process"] == 10.8
    cli.targets(report)
    out = capsys.readouterr().out
    assert "R=8: single_process 10.8x, mp_queue 12.0x; efficiency 90%" in out
    assert "ringflow / single_process 10.8x (target >= 8.0x)" in out
    assert "ringflow_vs_single_process: 10.8 (target >= 8.0): met" in out
    assert "ringflow_efficiency at R=8: 0.9 (target >= 0.7): met" in out
    assert "ringflow_vs_mp_queue:" not in out  # no mp_queue target on 16 cores


def test_efficiency_without_a_one_replica_run_is_not_measured(monkeypatch, capsys):
    monkeypatch.setattr(cli, "usable_cpus", lambda: 16)
    rows = [
        {"engine": "ringflow", "replicas": 8, "ticks_per_s": 9_000_000, "round": 0},
    ]
    report = cli.Report(as_json=False)
    cli._ratios(rows, [8], report)
    assert report.rows[0]["ringflow_efficiency"] is None
    cli.targets(report)
    out = capsys.readouterr().out
    assert "each engine at its best R" not in out  # no baseline ran: nothing to say
    assert "ringflow_efficiency at R=8: None (target >= 0.7): not measured (needs R=1" in out


def test_the_source_cost_benchmark_runs_both_sources_and_counts_every_tick(capsys):
    assert sources.main(["--json", "--items", "30", "--size", "4", "--rounds", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == ["sync", "async"]
    for row in rows:
        assert (row["items"], row["size"]) == (30, 4)
        assert row["cpu_us"] > 0 and row["engine_us"] == pytest.approx(
            row["cpu_us"] - row["logic_us"], abs=0.02
        )
    assert rows[0]["vs_sync"] == 1.0
    with pytest.raises(SystemExit):
        sources.main(["--items", "0"])


def test_the_csv_benchmark_gets_the_same_bars_from_the_file_on_every_side(capsys):
    argv = ["--json", "--ticks", "20000", "--rounds", "1", "--readers", "1,2", "--replicas", "1"]
    assert csvbars.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [r for r in rows if "checksum" in r]
    assert [(r["engine"], r["sources"]) for r in runs] == [
        ("single_process", 1),
        ("ringflow_csv", 1),
        ("ringflow_csv", 2),
    ]
    assert {r["checksum"] for r in runs} == {runs[0]["checksum"]}
    assert {r["ticks"] for r in runs} == {20_000}
    summary = [r for r in rows if r.get("bench") == "csv_summary"]
    assert summary[0]["engine"] == "single_process" and summary[0]["vs_single_process"] == 1.0
    with pytest.raises(SystemExit):
        csvbars.main(["--readers", "0"])


def test_the_csv_benchmark_stops_on_bars_that_differ(monkeypatch, capsys):
    real = csvbars.run_csv

    def wrong(*args):
        return {**real(*args), "checksum": "0:0000000000000000"}

    monkeypatch.setattr(csvbars, "run_csv", wrong)
    argv = ["--ticks", "5000", "--rounds", "1", "--readers", "1", "--replicas", "1"]
    assert csvbars.main(argv) == 3
    assert "CHECKSUM MISMATCH: ringflow_csv" in capsys.readouterr().err


def test_noise_counts_the_windows_a_fixed_loop_ran_slowly():
    steady = [(i * 1e-4, 1e-4) for i in range(1000)]  # 0.1 s of 100 us chunks
    assert noise.stalls(steady)["slow_windows"] == 0
    assert noise.stalls(steady)["windows"] == 5
    # 20 ms where every chunk took 4x: one window at 4x (by start time), the others steady
    slowed, t = [], 0.0
    for _ in range(1000):
        d = 4e-4 if 0.04 <= t < 0.06 else 1e-4
        slowed.append((t, d))
        t += d
    judged = noise.stalls(slowed)
    assert judged["slow_windows"] == 1 and 3.5 <= judged["worst_x"] <= 4.0  # (window edges)
    assert judged["longest_chunk_ms"] == 0.4
    assert noise.stalls([]) == {"chunks": 0, "windows": 0, "slow_windows": 0, "worst_x": 0.0}


def test_noise_measure_times_equal_chunks_on_its_clock():
    ticks = iter(range(10**9))

    def clock() -> float:  # every reading 40 us after the one before: a steady machine
        return next(ticks) * 40e-6

    row = noise.measure(0.01, clock=clock)
    assert row["bench"] == "machine_noise" and row["slow_windows"] == 0
    assert row["median_chunk_us"] == 40.0 and row["seconds"] >= 0.01
    assert "0 of 1 windows of 20 ms" in noise.describe(row)


def test_a_missed_latency_target_names_the_machines_noise(capsys):
    report = cli.Report(as_json=False)
    report.rows.append({"bench": "machine_noise", "slow_windows": 7})
    report.rows.append(
        {
            "bench": "latency",
            "pipeline": "bars",
            "linger_ms": cli.LINGERS[0] * 1e3,
            "p99_ms": 30.0,
            "overloaded": False,
        }
    )
    cli.targets(report)
    assert "MISSED (the machine alone ran 7 20 ms windows at half speed" in capsys.readouterr().out
