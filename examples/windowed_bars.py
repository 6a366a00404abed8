"""Event-time bars from a disordered tick stream, with late ticks kept aside.

Generated ticks arrive out of order (up to ``disorder`` behind) and a few arrive very late;
the job keys them by symbol, folds them into tumbling ``window`` OHLCV+VWAP bars on
``replicas`` replicas and writes the bars to ``path``; ticks that arrive after their window
fired go to ``late_path`` (by default ``<path stem>.late.csv``) in the format ``CsvTicks``
reads back. Every tick ends up in exactly one bar or in the late file.

    python -m examples.windowed_bars [--count N] [--output bars.csv]
    python -m engine run examples.windowed_bars:build --param path=bars.csv
"""

from __future__ import annotations

import argparse
import os

from engine import Dag, run
from operators import OHLCV, CsvBars, CsvTicksSink, Generator, Tumbling, WindowAggregate
from operators.durations import to_ns


def late_path_for(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.late{ext or '.csv'}"


def build(
    path: str = "bars.csv",
    late_path: str | None = None,
    count: int = 200_000,
    symbols: int = 100,
    replicas: int = 2,
    window: str | int = "1s",
    disorder: str | int = "50ms",
    late_fraction: float = 0.001,
    seed: int = 0,
) -> Dag:
    """Ticks 1 ms apart in event time (so 1,000 per second over ``symbols`` symbols), in
    batches of 100, with ``disorder`` jitter and ``late_fraction`` of them a second late."""
    source = Generator(
        symbols=symbols,
        count=count,
        seed=seed,
        step_ns=1_000_000,
        batch=100,
        disorder_ns=to_ns(disorder, "disorder"),
        late_fraction=late_fraction,
    )
    dag = Dag("windowed_bars")
    ticks = dag.source("ticks", source)
    bars = ticks.key_by("symbol").apply(
        "bars", WindowAggregate(Tumbling(window), OHLCV()), replicas
    )
    bars.sink("out", CsvBars(path))
    bars.side("late").sink("late", CsvTicksSink(late_path or late_path_for(path)))
    return dag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.windowed_bars", description=__doc__)
    parser.add_argument("--count", type=int, default=200_000, help="ticks to generate")
    parser.add_argument("--output", default="bars.csv", help="bars CSV file")
    parser.add_argument("--replicas", type=int, default=2, help="window operator replicas")
    args = parser.parse_args(argv)
    result = run(build(path=args.output, count=args.count, replicas=args.replicas))
    print(result.summary())
    written = result.sinks["out"][0]
    late = result.sinks["late"][0]
    print(f"{written.records} bars in {written.path}, {late.records} late ticks in {late.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
