"""Where a tick's CPU goes, measured piece by piece in this process.

The job's node timings (``benchmarks.engines.overhead``) split each worker's CPU into its
logic and the engine's share. This module times the known parts of that share in
isolation, on the same generator batches, so the rest (framing, ring and doorbell system
calls, the worker loop, watermarks) can be told apart and has a number:

* ``generate``: ``GeneratorLogic`` (the source's logic);
* ``split``: the key-hash splitter (mmh3, cached per symbol) into ``replicas`` groups;
* ``encode`` / ``decode``: the typed msgpack codec over those groups, one per channel as in
  a worker (string columns dictionary-encoded, ``engine.strings``);
* ``aggregate``: ``WindowAggregate(Tumbling, OHLCV)`` over the decoded groups, watermarks
  included (the bars node's logic);
* ``hand_aggregate``: ``benchmarks.handroll.HandBars`` over the same (the baselines' loop).

CPU time (``time.thread_time``), microseconds per tick, best of ``repeat`` passes over
``ticks`` ticks (the least disturbed by a busy machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import KEY_GROUPS, Workload
from benchmarks.handroll import HandBars
from engine.batch import MsgpackCodec
from engine.columns import Columns
from engine.operator import Context, Watermark
from engine.records import Tick
from operators import OHLCV, Tumbling, WindowAggregate
from operators.generator import GeneratorLogic
from partitioning import KeyHash


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best


def breakdown(work: Workload, replicas: int, repeat: int = 3) -> dict[str, Any]:
    def generate() -> list[Any]:
        return list(GeneratorLogic(work.generator(), Context("breakdown")).batches())

    items = generate()
    batches = [b for b in items if not isinstance(b, Watermark)]
    ticks = sum(len(b) for b in batches)
    splitter = KeyHash("symbol", KEY_GROUPS).build(replicas, 0)
    groups = [list(splitter.split(b)) for b in batches]  # (replica, group) pairs

    def encode_all() -> list[list[tuple[int, bytes]]]:
        # One codec per channel, as in a worker: string columns go dictionary-encoded.
        codecs = [MsgpackCodec(Tick, dictionary=True) for _ in range(replicas)]
        return [[(r, codecs[r].encode(g)) for r, g in gs] for gs in groups]

    frames = encode_all()
    empty = Columns.from_rows(Tick, [])
    mine: list[Any] = [dict(gs).get(0, empty) for gs in groups]  # replica 0's share
    share = sum(len(g) for g in mine) or 1

    def split() -> None:
        for b in batches:
            splitter.split(b)

    def encode() -> None:
        encode_all()

    def decode() -> None:
        codecs = [MsgpackCodec(Tick) for _ in range(replicas)]  # each channel's, in order
        for fs in frames:
            for r, f in fs:
                codecs[r].decode(f)

    def aggregate() -> None:
        logic = WindowAggregate(Tumbling(work.window_ns), OHLCV()).build(Context("bars"))
        wm = iter(i.ts for i in items if isinstance(i, Watermark))
        for g in mine:
            logic.process(g)
            logic.on_watermark(next(wm))
        logic.on_eof()

    def hand_aggregate() -> None:
        bars = HandBars(work.window_ns)
        wm = iter(i.ts for i in items if isinstance(i, Watermark))
        for g in mine:
            bars.add_rows(zip(*g.data, strict=True), len(g))
            bars.advance(next(wm))
        bars.finish()

    def per_tick(seconds: float, n: int = ticks) -> float:
        return round(seconds / n * 1e6, 3)

    return {
        "bench": "breakdown",
        "replicas": replicas,
        "ticks": ticks,
        "generate_us": per_tick(_best(generate, repeat)),
        "split_us": per_tick(_best(split, repeat)),
        "encode_us": per_tick(_best(encode, repeat)),
        "decode_us": per_tick(_best(decode, repeat)),
        "aggregate_us": per_tick(_best(aggregate, repeat), share),
        "hand_aggregate_us": per_tick(_best(hand_aggregate, repeat), share),
    }
