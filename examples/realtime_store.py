"""A realtime-style job: a paced tick stream -> bars -> a slow store, with backpressure.

Ticks are replayed at ``rate`` ticks per second (their event times 1/rate apart, so event
time keeps pace with the wall clock), folded into ``window`` OHLCV bars, and written to an
in-repo store (``operators.memstore.MemoryStore``) whose write queue drains ``store_rate``
bars per second, slower than bars arrive. When the queue reaches ``high_watermark`` the store
sink pauses until it is back to ``low_watermark``; while it pauses it takes no input, so the
channels fill and the bars node, then the source, are backpressured. ``main()`` serves the
Prometheus metrics and prints the pause and backpressure figures from a scrape every half
second:

    python -m examples.realtime_store [--count N] [--store-rate R] [--metrics-port P]

``build`` takes the same knobs (``python -m engine run examples.realtime_store:build``);
``gate`` (a file path) holds the store back until the file exists, for a deterministic test.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import urllib.request
from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engine import Dag, JobResult, launch
from operators import OHLCV, Generator, Tumbling, WindowAggregate
from operators.memstore import MemoryStore
from operators.store import StoreSink

# The engine settings main() runs with: few credits per channel, so a paused sink holds the
# upstream back after a few batches rather than after megabytes.
SETTINGS: dict[str, Any] = {"slots": 2}
WATCHED = (
    "ringflow_sink_pauses_total",
    "ringflow_sink_paused_seconds_total",
    "ringflow_sink_queue_depth",
    "ringflow_backpressured_seconds_total",
    "ringflow_backpressured_ratio",
)


def build(
    count: int = 40_000,
    symbols: int = 200,
    rate: float | None = 20_000.0,
    window: str | int = "100ms",
    store_rate: float | None = 1_000.0,
    capacity: int = 1_000,
    high_watermark: int = 500,
    low_watermark: int = 100,
    path: str | None = None,
    gate: str | None = None,
    seed: int = 0,
) -> Dag:
    """``rate=None`` replays as fast as possible (event times 50 us apart);
    ``store_rate=None`` drains the store as fast as it can; ``path`` also writes the stored
    bars as JSON lines."""
    step_ns = 50_000 if rate is None else max(1, int(1e9 / rate))
    ticks = Generator(symbols=symbols, count=count, rate=rate, seed=seed, step_ns=step_ns)
    store = MemoryStore(capacity=capacity, rate=store_rate, path=path, gate=gate)
    dag = Dag("realtime_store")
    bars = (
        dag.source("ticks", ticks)
        .key_by("symbol")
        # The generator's ticks come in order, so none is late; one would be counted.
        .apply("bars", WindowAggregate(Tumbling(window), OHLCV(), late_output=None))
    )
    bars.sink("store", StoreSink(store, high_watermark, low_watermark))
    return dag


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for the metrics server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int, names: Iterable[str] = WATCHED) -> dict[tuple[str, str], float]:
    """The samples named ``names`` from the job's metrics, as ``{(name, node): value}``
    (summed over replicas); empty if the server does not answer (not up yet, or gone)."""
    wanted = set(names)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode("utf-8")
    except OSError:
        return {}
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = (sample.name, sample.labels.get("node", ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def describe(samples: dict[tuple[str, str], float], sink: str = "store") -> str:
    """One line: the sink's pauses, paused time and queue depth, and which nodes are
    backpressured and how much."""
    if not samples:
        return "(no metrics yet)"
    pauses = samples.get(("ringflow_sink_pauses_total", sink), 0.0)
    paused = samples.get(("ringflow_sink_paused_seconds_total", sink), 0.0)
    depth = samples.get(("ringflow_sink_queue_depth", sink), 0.0)
    held = ", ".join(
        f"{node} {value:.1f}s ({samples.get(('ringflow_backpressured_ratio', node), 0.0):.0%})"
        for (name, node), value in sorted(samples.items())
        if name == "ringflow_backpressured_seconds_total"
    )
    return (
        f"{sink}: pauses={pauses:.0f} paused={paused:.2f}s queue_depth={depth:.0f} | "
        f"backpressured: {held}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.realtime_store", description=__doc__)
    parser.add_argument("--count", type=int, default=40_000, help="ticks to replay")
    parser.add_argument("--rate", type=float, default=20_000.0, help="ticks per second")
    parser.add_argument("--store-rate", type=float, default=1_000.0, help="bars per second")
    parser.add_argument("--output", default=None, help="also write stored bars as JSON lines")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    port = args.metrics_port or free_port()
    dag = build(count=args.count, rate=args.rate, store_rate=args.store_rate, path=args.output)
    print(f"metrics at http://127.0.0.1:{port}/metrics")
    result: JobResult | None = None
    with launch(dag, metrics_port=port, **SETTINGS) as job:
        while result is None:
            with contextlib.suppress(TimeoutError):
                result = job.wait(timeout=0.5)
            if result is None:
                print(describe(scrape(port)), flush=True)
    print(result.summary())
    stored = result.sinks["store"][0]
    print(
        f"store: {stored.records} bars submitted, {stored.store.stored} stored, {stored.pauses} "
        f"pauses for {stored.paused_s:.2f} s, deepest queue {stored.max_queue_depth}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
