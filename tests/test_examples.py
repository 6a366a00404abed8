"""Every example runs, with small parameters, and gives the result it promises."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time

import pytest

from engine import launch, run
from engine.testing import run_inline
from examples import minimal, realtime_store, windowed_bars
from operators import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WAIT = 60.0


def blocks_in(count: int) -> int:
    return sum(1 for t in generate(symbols=100, count=count) if minimal.is_block(t))


def test_minimal_counts_the_block_trades():
    result = run(minimal.build(count=5_000), timeout=WAIT)
    expected = blocks_in(5_000)
    assert expected > 0
    assert result.sinks["count"][0].records == expected
    assert result.nodes["ticks"].records_out == 5_000


def test_minimal_runs_from_the_command_line():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            "examples.minimal:build",
            "--param",
            "count=3000",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "job 'minimal' finished" in proc.stdout
    assert f"count: in={blocks_in(3_000)} out=0" in proc.stdout


def test_windowed_bars_puts_every_tick_in_a_bar_or_the_late_file(tmp_path):
    path = str(tmp_path / "bars.csv")
    dag = windowed_bars.build(path=path, count=20_000, symbols=50)
    result = run(dag, timeout=WAIT)
    with open(path) as f:
        bars = list(csv.DictReader(f))
    with open(windowed_bars.late_path_for(path)) as f:
        late = list(csv.DictReader(f))
    ticks = generate(dag.node("ticks").config)
    assert len(bars) == result.sinks["out"][0].records > 0
    assert 0 < len(late) == result.counter("late") <= result.counter("late_injected")
    assert sum(int(b["count"]) for b in bars) + len(late) == len(ticks)
    volume = sum(float(b["volume"]) for b in bars) + sum(float(t["size"]) for t in late)
    assert math.isclose(volume, sum(t.size for t in ticks), rel_tol=1e-12)
    assert {b["symbol"] for b in bars} == {t.symbol for t in ticks}


def test_realtime_store_pauses_shows_it_in_metrics_and_stores_every_bar(tmp_path):
    gate = tmp_path / "gate"
    params = {
        "count": 20_000,
        "symbols": 50,
        "rate": None,
        "store_rate": None,
        "capacity": 400,
        "high_watermark": 200,
        "low_watermark": 50,
    }
    dag = realtime_store.build(gate=str(gate), **params)
    port = realtime_store.free_port()
    job = launch(dag, metrics_port=port, heartbeat_timeout=WAIT, **realtime_store.SETTINGS)
    try:
        # The store drains nothing until the gate opens: the sink must pause, and say so.
        deadline = time.monotonic() + WAIT
        while True:
            seen = realtime_store.scrape(port)
            if seen.get(("ringflow_sink_paused_seconds_total", "store"), 0) > 0:
                break
            assert time.monotonic() < deadline, f"no pause in the metrics: {seen}"
            time.sleep(0.05)
        assert seen[("ringflow_sink_pauses_total", "store")] == 1
        assert seen[("ringflow_sink_queue_depth", "store")] >= 200
        assert "store: pauses=1" in realtime_store.describe(seen)
    finally:
        gate.touch()
    result = job.wait(WAIT)
    (stored,) = result.sinks["store"]
    assert stored.pauses >= 1 and stored.paused_s > 0
    assert stored.records == stored.store.stored == result.nodes["bars"].records_out > 0
    reference = run_inline(realtime_store.build(gate=str(gate), **params))
    assert stored.store.records == reference.sinks["store"][0].store.records


@pytest.mark.parametrize("module", [minimal, windowed_bars, realtime_store])
def test_every_example_has_build_and_main(module):
    assert callable(module.build) and callable(module.main)
    assert module.build().validate() is None
