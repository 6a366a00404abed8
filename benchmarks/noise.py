"""How steadily this machine runs a fixed piece of work: the noise floor under latency.

Usage::

    python -m benchmarks.noise [--seconds 3] [--json]

One process, alone, runs the same pure-Python arithmetic (no allocation, no I/O, no
system call but the clock) in chunks of about 30 us for ``--seconds``, timing each chunk,
and reports how often the machine ran it slowly: the 20 ms windows whose chunks took more
than twice the median chunk time on average (``slow_windows``), the worst such slowdown
(``worst_x``) and the longest single chunk (``longest_chunk_ms``).

On a virtual machine the host can take a CPU away from the guest without the guest
counting it as stolen or as waiting: the process is "running", but slowly. A 100 ms
window's bars close in a few milliseconds of work, so such a stretch of 20-50 ms during a
latency run becomes that run's p99 (benchmarks/RESULTS.md, session 11, traced it). The
latency section runs this before and after its runs, so each report says whether the
machine was steady around them; on a quiet, dedicated machine ``slow_windows`` is 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

WINDOW_S = 0.02  # the length of the windows judged (a latency run's stalls were 20-60 ms)
SLOW = 2.0  # a window whose chunks ran this many times the median chunk time, or more


def _chunk(rounds: int) -> int:
    """The fixed work: integer arithmetic on small ints (no allocation)."""
    x = 1
    for _ in range(rounds):
        x = (x * 7 + 3) & 0xFFFF
    return x


def calibrate(target_s: float = 30e-6, clock: Callable[[], float] = time.perf_counter) -> int:
    """Rounds of ``_chunk`` that take about ``target_s`` here (the best of a few tries)."""
    rounds = 64
    while True:
        best = min(_timed(rounds, clock) for _ in range(5))
        if best >= target_s or rounds >= 1 << 20:
            return max(1, round(rounds * target_s / best)) if best > 0 else rounds
        rounds *= 2


def _timed(rounds: int, clock: Callable[[], float]) -> float:
    started = clock()
    _chunk(rounds)
    return clock() - started


def stalls(chunks: Sequence[tuple[float, float]], window_s: float = WINDOW_S) -> dict[str, Any]:
    """Judge ``(start, duration)`` chunks of equal work, in order: the windows of
    ``window_s`` (by start time) whose mean chunk took ``SLOW`` x the median or more."""
    if not chunks:
        return {"chunks": 0, "windows": 0, "slow_windows": 0, "worst_x": 0.0}
    median = statistics.median(d for _, d in chunks)
    windows = slow = 0
    worst = 0.0
    i = 0
    while i < len(chunks):
        j = i
        spent = 0.0
        while j < len(chunks) and chunks[j][0] - chunks[i][0] < window_s:
            spent += chunks[j][1]
            j += 1
        ratio = spent / ((j - i) * median) if median > 0 else 0.0
        windows += 1
        if ratio >= SLOW:
            slow += 1
        worst = max(worst, ratio)
        i = j
    return {
        "chunks": len(chunks),
        "windows": windows,
        "slow_windows": slow,
        "worst_x": round(worst, 1),
        "median_chunk_us": round(median * 1e6, 1),
        "longest_chunk_ms": round(max(d for _, d in chunks) * 1e3, 2),
    }


def measure(seconds: float, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Run the chunks for ``seconds`` and judge them (``stalls``); a ``machine_noise`` row."""
    rounds = calibrate(clock=clock)
    chunks: list[tuple[float, float]] = []
    started = clock()
    end = started + seconds
    now = started
    while now < end:
        _chunk(rounds)
        done = clock()
        chunks.append((now - started, done - now))
        now = done
    return {"bench": "machine_noise", "seconds": round(now - started, 3), **stalls(chunks)}


def describe(row: dict[str, Any]) -> str:
    """One line for a report."""
    return (
        f"machine noise: {row['slow_windows']} of {row['windows']} windows of "
        f"{WINDOW_S * 1e3:g} ms ran a fixed loop at half speed or worse (worst "
        f"{row['worst_x']:g}x, longest {row.get('longest_chunk_ms', 0):g} ms for a "
        f"{row.get('median_chunk_us', 0):g} us chunk), {row['seconds']:g} s alone"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.noise", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not args.seconds > 0:
        parser.error("--seconds must be > 0")
    row = measure(args.seconds)
    print(json.dumps(row) if args.json else describe(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
