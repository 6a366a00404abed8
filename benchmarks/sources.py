"""What a source replica costs per item: an async source against the same source written
synchronously.

Usage::

    python -m benchmarks.sources          # a table
    python -m benchmarks.sources --json   # one JSON object per line

A job ``src -> out``: the source yields ``--items`` batches of ``--size`` ticks, the same
prebuilt batch every time (so the source's logic costs next to nothing), and
``operators.CountSink`` counts them. ``sync`` is a plain generator; ``async`` an async
generator that awaits ``asyncio.sleep(0)`` before each batch, as a provider's source
awaits its feed. Each variant runs ``--rounds`` times, alternating; a row is one run.

``cpu_us`` is the source worker's CPU per item (``time.process_time`` over its loop),
``logic_us`` the part inside the generator (for ``async``, the loop's iterations while it
awaits included), ``engine_us`` the rest: routing, batching, framing, the worker's checks
after each item. ``vs_sync`` is the row's ``cpu_us``
over the best ``sync`` row of the run. Small items are where a per-item cost shows:
market-data providers send many small messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from engine.dag import Dag
from engine.job import run
from engine.operator import Batch, Context, Source, SourceLogic
from engine.records import Tick
from operators import CountSink


@dataclass(frozen=True)
class Repeat(Source):
    """``items`` times the same batch of ``size`` ticks, from a sync or async generator."""

    items: int
    size: int
    is_async: bool

    output_type = Tick

    def build(self, ctx: Context) -> SourceLogic:
        return _RepeatLogic(self)


class _RepeatLogic(SourceLogic):
    def __init__(self, config: Repeat) -> None:
        self.config = config
        self.batch = [Tick(f"S{i % 100:04d}", i, 100.0, 1.0) for i in range(config.size)]

    def batches(self) -> Iterator[Batch] | AsyncIterator[Batch]:
        return self._async() if self.config.is_async else self._sync()

    def _sync(self) -> Iterator[Batch]:
        for _ in range(self.config.items):
            yield self.batch

    async def _async(self) -> AsyncIterator[Batch]:
        for _ in range(self.config.items):
            await asyncio.sleep(0)
            yield self.batch


def measure(items: int, size: int, is_async: bool) -> dict[str, Any]:
    dag = Dag("source-cost")
    dag.source("src", Repeat(items, size, is_async)).sink("out", CountSink())
    result = run(dag)
    received = sum(counts.records for counts in result.sinks["out"])
    if received != items * size:
        raise AssertionError(f"the sink counted {received} ticks, expected {items * size}")
    timing = result.nodes["src"].timing
    cpu_us = timing["cpu_s"] / items * 1e6
    logic_us = timing["logic_s"] / items * 1e6
    return {
        "source": "async" if is_async else "sync",
        "items": items,
        "size": size,
        "cpu_us": round(cpu_us, 2),
        "logic_us": round(logic_us, 2),
        "engine_us": round(cpu_us - logic_us, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sources",
        description="CPU per item of an async source replica against a sync one",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--items", type=int, default=50_000, help="batches per run")
    parser.add_argument("--size", type=int, default=10, help="ticks per batch")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant")
    args = parser.parse_args(argv)
    if args.items < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--items, --size and --rounds must be at least 1")
    rows = [
        measure(args.items, args.size, is_async)
        for _ in range(args.rounds)
        for is_async in (False, True)
    ]
    best_sync = min(r["cpu_us"] for r in rows if r["source"] == "sync")
    for row in rows:
        row["vs_sync"] = round(row["cpu_us"] / best_sync, 2)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(
        f"{'source':<8}{'items':>9}{'size':>10}{'cpu us':>13}{'logic us':>13}{'engine us':>13}"
        f"{'vs sync':>9}"
    )
    for r in rows:
        print(
            f"{r['source']:<8}{r['items']:>9,}{r['size']:>10,}{r['cpu_us']:>13.2f}"
            f"{r['logic_us']:>13.2f}{r['engine_us']:>13.2f}{r['vs_sync']:>8.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
