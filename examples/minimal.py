"""The smallest useful job: generated ticks -> keep block trades -> notional -> count.

python -m examples.minimal [--count N]
python -m engine run examples.minimal:build --param count=100000
"""

from __future__ import annotations

import argparse

from engine import Dag, Tick, run
from operators import CountSink, Generator

BLOCK_SIZE = 1000.0  # shares: a trade at least this large is a block trade


def is_block(tick: Tick) -> bool:
    return tick.size >= BLOCK_SIZE


def notional(tick: Tick) -> tuple[str, float]:
    return tick.symbol, tick.price * tick.size


def build(count: int = 100_000, symbols: int = 100, seed: int = 0) -> Dag:
    """Ticks from ``Generator(count, symbols, seed)``; block trades' notionals, counted."""
    dag = Dag("minimal")
    ticks = dag.source("ticks", Generator(symbols=symbols, count=count, seed=seed))
    blocks = ticks.filter("blocks", is_block)
    blocks.map("notional", notional).sink("count", CountSink())
    return dag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.minimal", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000, help="ticks to generate")
    args = parser.parse_args(argv)
    result = run(build(count=args.count))
    print(result.summary())
    print(f"block trades: {result.sinks['count'][0].records}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
