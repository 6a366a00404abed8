"""The ``bars`` job: ticks in, OHLCV + VWAP bars out, the main job of ringflow.

    python -m engine bars INPUT.csv --output BARS.csv [--window 1s] [--lateness 2s]
        [--replicas N] [--readers N] [--late-output LATE.csv] [--dead-letter BAD.csv]
        [--metrics-port P]
    python -m engine bars --generate 1000000 --output BARS.csv ...

The DAG: a tick source (a CSV file, or the synthetic generator) -> key-hash on symbol ->
``WindowAggregate(Tumbling(window), OHLCV())`` with N replicas -> a bar file sink; late
ticks go to their own file (by default the output's name with ``.late.csv`` for its
extension: ``bars.csv`` -> ``bars.late.csv``), so none is lost. Bars of one
aggregation replica come in (window_end, symbol) order; replicas interleave in the file.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from engine.batch import DEFAULT_LINGER_S
from engine.dag import Dag
from engine.errors import DagError

DEFAULT_REPLICAS = max(1, min(4, (os.cpu_count() or 2) - 1))


def default_late_path(output: str) -> str:
    stem, _ = os.path.splitext(output)
    return f"{stem}.late.csv"


def bars_dag(
    output: str,
    *,
    input: str | None = None,
    generate: int | None = None,
    symbols: int = 1000,
    disorder: str | int = "0s",
    seed: int = 0,
    window: str | int = "1s",
    lateness: str | int = "2s",
    replicas: int = DEFAULT_REPLICAS,
    readers: int = 1,
    late_output: str | None = None,
    dead_letter: str | None = None,
) -> Dag:
    """Build the bars DAG (see the module docstring). Exactly one of input / generate."""
    from operators import OHLCV, Tumbling, WindowAggregate
    from operators.durations import to_ns
    from operators.sinks import CsvBars, CsvTicksSink, JsonLinesBars
    from operators.sources import CsvTicks, Generator

    if (input is None) == (generate is None):
        raise DagError("bars: give an input CSV file or --generate COUNT (exactly one)")
    lateness_ns = to_ns(lateness, "bars: --lateness")
    for what, path in (
        ("--output", output),
        ("--late-output", late_output),
        ("--dead-letter", dead_letter),
    ):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise DagError(f"bars: {what} {path!r}: folder {folder!r} does not exist; create it")
    dag = Dag("bars")
    if input is not None:
        if not os.path.exists(input):
            raise DagError(f"bars: input file {input!r} does not exist")
        source: Any = CsvTicks(input, lateness_ns=lateness_ns, dead_letter=dead_letter)
    else:
        if dead_letter is not None:
            raise DagError("bars: --dead-letter applies to CSV input, not --generate")
        disorder_ns = to_ns(disorder, "bars: --disorder")
        source = Generator(
            symbols=symbols,
            count=generate,
            seed=seed,
            disorder_ns=disorder_ns,
            lateness_ns=lateness_ns,
        )
    ticks = dag.source("ticks", source, parallelism=readers)
    bars = ticks.key_by("symbol").apply(
        "bars", WindowAggregate(Tumbling(to_ns(window, "bars: --window")), OHLCV()), replicas
    )
    sink = JsonLinesBars(output) if output.endswith((".jsonl", ".ndjson")) else CsvBars(output)
    bars.sink("output", sink)
    bars.side("late").sink("late", CsvTicksSink(late_output or default_late_path(output)))
    return dag


def summary(result: Any) -> str:
    ticks = result.nodes["ticks"].records_out
    bars = result.nodes["output"].records_in
    late = result.counter("late")
    bad = result.counter("bad_rows")
    rate = ticks / result.seconds if result.seconds else 0.0
    state = "stopped early" if result.stopped else "done"
    return (
        f"bars {state}: ticks in {ticks:,}, bars out {bars:,}, late {late:,}, "
        f"bad rows {bad:,}, {result.seconds:.2f} s, {rate:,.0f} ticks/s"
    )


def _cmd_bars(args: argparse.Namespace) -> int:
    from engine.cli import engine_settings, execute

    dag = bars_dag(
        args.output,
        input=args.input,
        generate=args.generate,
        symbols=args.symbols,
        disorder=args.disorder,
        seed=args.seed,
        window=args.window,
        lateness=args.lateness,
        replicas=args.replicas,
        readers=args.readers,
        late_output=args.late_output,
        dead_letter=args.dead_letter,
    )
    result = execute(dag, engine_settings(args), quiet=args.quiet)
    print(summary(result))
    written = f"bars written to {args.output}; late ticks to "
    written += args.late_output or default_late_path(args.output)
    if args.dead_letter is not None:
        dead = dag.node("ticks").config.declared_files(args.readers).writes
        written += f"; bad rows to {', '.join(dead)}"
    print(written)
    return 0


def add_bars_command(sub: Any) -> None:
    bars = sub.add_parser(
        "bars",
        help="aggregate ticks into OHLCV+VWAP bars (the main job)",
        description="Aggregate a tick CSV (symbol,ts,price,size; ts in integer ns; header "
        "required) or a generated tick stream into OHLCV+VWAP bars per symbol and event-time "
        "window, with N aggregation replicas behind a key-hash edge on symbol. Bar CSV "
        "header: symbol,window_start,window_end,open,high,low,close,volume,vwap,count. "
        "Durations: 500ms, 1s, 5m, 1h.",
    )
    bars.add_argument("input", nargs="?", help="tick CSV file (omit with --generate)")
    bars.add_argument("--output", required=True, help="bar file (.csv, or .jsonl for JSON lines)")
    bars.add_argument(
        "--generate",
        type=int,
        metavar="COUNT",
        help="aggregate COUNT synthetic ticks instead of a file",
    )
    bars.add_argument("--symbols", type=int, default=1000, help="symbols to generate")
    bars.add_argument(
        "--disorder",
        default="0s",
        help="generated ticks arrive up to this much out of event-time order",
    )
    bars.add_argument("--seed", type=int, default=0, help="generator seed")
    bars.add_argument("--window", default="1s", help="tumbling window length (default 1s)")
    bars.add_argument(
        "--lateness",
        default="2s",
        help="bounded out-of-orderness: watermark = max event time - lateness",
    )
    bars.add_argument(
        "--replicas",
        type=int,
        default=DEFAULT_REPLICAS,
        help=f"aggregation replicas (default {DEFAULT_REPLICAS})",
    )
    bars.add_argument(
        "--readers",
        type=int,
        default=1,
        help="source replicas; for a CSV each reads its own byte range, so "
        "watermarks follow each range (docs/ARCHITECTURE.md)",
    )
    bars.add_argument("--late-output", help="late ticks, CSV (default: OUTPUT's stem + .late.csv)")
    bars.add_argument(
        "--dead-letter",
        help="bad input rows go here and the job goes on; with --readers N, one file per "
        "reader, BAD.<r>.csv (default: the first bad row stops the job with file:line: reason)",
    )
    bars.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    bars.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER_S,
        help="longest wait of a record in a partial batch, seconds",
    )
    from engine.cli import add_setting_argument

    add_setting_argument(bars)
    bars.add_argument("--quiet", action="store_true", help="no progress lines")
    bars.set_defaults(handler=_cmd_bars)
