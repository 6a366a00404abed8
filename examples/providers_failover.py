"""Two replay providers, the primary made to fail mid-run, into 100 ms OHLCV bars.

The primary replays a generated tick stream in real time (``speed`` times faster); at tick
``fail_at`` it fails, and stays down for ``down_s`` seconds. The source fails over to the
backup, which replays the same instruments (from the start of its history: the source drops
what the primary already sent), and the bars come out equal to those of a run where nothing
failed. ``main()`` runs both across processes and compares them::

    python -m examples.providers_failover
    python -m engine run examples.providers_failover:build --param fail_at=5000

``build(clock="virtual")`` runs on virtual time (as the tests do): same bars, no waiting.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from engine import Dag, run
from operators import OHLCV, Generator, Tumbling, WindowAggregate
from operators.providers import REAL_TIME, Breaker, Fail, ProviderSource, Replay, VirtualTime
from operators.sinks import Collect

__all__ = ["build", "main"]


def build(
    *,
    symbols: int = 20,
    count: int = 20_000,
    step_ns: int = 100_000,
    disorder_ns: int = 200_000,
    speed: float | None = 10.0,
    fail_at: int | None = 8_000,
    down_s: float | None = 5.0,
    window: str = "100ms",
    clock: str = "real",
    seed: int = 1,
) -> Dag:
    """The DAG: primary and backup replay providers -> ProviderSource -> bars -> Collect.

    ``fail_at=None`` gives the run where nothing fails. ``clock``: ``"real"`` or
    ``"virtual"``. ``speed=None`` replays as fast as the pipeline takes ticks.
    """
    if clock not in ("real", "virtual"):
        raise ValueError(f"clock must be 'real' or 'virtual', got {clock!r}")
    ticks = Generator(
        symbols=symbols, count=count, step_ns=step_ns, disorder_ns=disorder_ns, seed=seed
    )
    faults = () if fail_at is None else (Fail(fail_at, down_s=down_s),)
    primary = Replay("primary", ticks, speed=speed, faults=faults)
    backup = Replay("backup", ticks, speed=speed)
    source = ProviderSource(
        (primary, backup),
        lateness_ns=disorder_ns,
        stall_timeout_s=2.0,
        breaker=Breaker(failures=2, cooldown_s=10.0),
        timing=REAL_TIME if clock == "real" else VirtualTime("providers_failover"),
    )
    dag = Dag("providers_failover")
    bars = (
        dag.source("ticks", source)
        .key_by("symbol")
        .apply("bars", WindowAggregate(Tumbling(window), OHLCV()), 2)
    )
    bars.sink("out", Collect())
    bars.side("late").sink("late", Collect())  # ticks a failover delivered too late
    return dag


def bars_of(result: Any) -> list[Any]:
    return sorted(result.collected("out"), key=lambda b: (b.symbol, b.window_start))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--fail-at", type=int, default=8_000)
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--clock", choices=("real", "virtual"), default="real")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    common = {"count": args.count, "speed": args.speed, "clock": args.clock}
    failed = run(build(fail_at=args.fail_at, **common), timeout=300)
    clean = run(build(fail_at=None, **common), timeout=300)
    counters = failed.nodes["ticks"].counters
    same = bars_of(failed) == bars_of(clean)
    print(f"bars: {len(bars_of(failed))} with a failure, {len(bars_of(clean))} without")
    print(f"source counters with the failure: {dict(sorted(counters.items()))}")
    print("bars equal: " + ("yes" if same else "NO"))
    return 0 if same and counters.get("failovers", 0) >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
