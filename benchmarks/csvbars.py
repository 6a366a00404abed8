"""The bars job from a CSV file: ringflow's ``CsvTicks`` against a plain ``csv.reader`` loop.

Usage::

    python -m benchmarks.csvbars                  # a table
    python -m benchmarks.csvbars --json           # one JSON object per line
    python -m benchmarks.csvbars --ticks 10000000 --readers 1,4,8 --replicas 1,8

The workload's ticks (``benchmarks.common.Workload``: the generator's, 1,000 symbols, 1 s
windows) are written once to a CSV file in a temporary directory (``repr`` floats, so the
file holds exactly the generator's values; not timed), then, alternating, ``--rounds``
times each:

* ``single_process``: one plain Python process reading the file with ``csv.reader``,
  converting each row with ``int`` and ``float``, ``--batch`` rows at a time into
  ``benchmarks.handroll.HandBars`` with a watermark of the newest time read minus the
  lateness after each batch, as ``CsvTicks`` does: the loop a user writes by hand;
* ``ringflow_csv``: ``CsvTicks`` with ``P`` readers (each reads its own byte ranges of the
  file) -> key_by symbol -> ``WindowAggregate(Tumbling(1 s), OHLCV())`` x ``R`` -> a digest
  sink per replica, for every ``P`` in ``--readers`` and ``R`` in ``--replicas``.

``seconds`` is timed as in the throughput section (``benchmarks.engines``): for ringflow from
the first reader asking for its first batch to the last sink's end of input. Every run's bars
must have the single-process run's checksum, from every tick of the file, or the run stops
(exit status 3). The summary gives each configuration's best round over the best
``single_process`` round.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import ChecksumMismatch, Workload, machine
from benchmarks.engines import run_ringflow, single_process_row
from benchmarks.handroll import HandBars
from operators.generator import generate
from operators.sources import CsvTicks


def write_ticks(work: Workload, path: str) -> int:
    """The workload's ticks as a tick CSV at ``path``; how many."""
    ticks = generate(work.generator())
    with open(path, "w", encoding="utf-8") as f:
        f.write("symbol,ts,price,size\n")
        f.writelines(f"{t.symbol},{t.ts},{t.price!r},{t.size!r}\n" for t in ticks)
    return len(ticks)


def run_single_process(work: Workload, path: str) -> dict[str, Any]:
    started = time.perf_counter()
    cpu = time.process_time()
    bars = HandBars(work.window_ns)
    high = -(2**63)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)  # the header
        while chunk := list(itertools.islice(reader, work.batch)):
            rows = [(s, int(t), float(p), float(z)) for s, t, p, z in chunk]
            bars.add_rows(rows, len(rows))
            high = max(high, max(row[1] for row in rows))
            bars.advance(high - work.lateness_ns)
    bars.finish()
    return single_process_row(bars, time.perf_counter() - started, time.process_time() - cpu)


def run_csv(work: Workload, path: str, readers: int, replicas: int) -> dict[str, Any]:
    source = CsvTicks(path, lateness_ns=work.lateness_ns, batch=work.batch)
    row, _ = run_ringflow(work, replicas, readers, source=source, engine="ringflow_csv")
    return row


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configuration's best round over the best ``single_process`` round."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["engine"], row["sources"], row["replicas"])
        if key not in best or row["ticks_per_s"] > best[key]["ticks_per_s"]:
            best[key] = row
    floor = best[("single_process", 1, 1)]["ticks_per_s"]
    return [
        {
            "bench": "csv_summary",
            "engine": engine,
            "readers": sources,
            "replicas": replicas,
            "best_ticks_per_s": row["ticks_per_s"],
            "vs_single_process": round(row["ticks_per_s"] / floor, 2),
            "rounds": [
                r["ticks_per_s"]
                for r in rows
                if (r["engine"], r["sources"], r["replicas"]) == (engine, sources, replicas)
            ],
        }
        for (engine, sources, replicas), row in best.items()
    ]


def rounds(
    args: argparse.Namespace, work: Workload, path: str, count: int, show: Callable[..., None]
) -> list[dict[str, Any]]:
    """Every configuration ``args.rounds`` times, alternating; each row checked against the
    first (``single_process``): the same bars from every tick of the file."""
    rows: list[dict[str, Any]] = []
    runs: list[Callable[[], dict[str, Any]]] = [functools.partial(run_single_process, work, path)]
    runs += [
        functools.partial(run_csv, work, path, p, r) for p in args.readers for r in args.replicas
    ]
    for _ in range(args.rounds):
        for run in runs:
            row = run()
            rows.append(row)
            show(row)
            reference = rows[0]
            if row["checksum"] != reference["checksum"] or row["ticks"] != count:
                raise ChecksumMismatch(
                    f"CHECKSUM MISMATCH: {row['engine']} with P={row['sources']}, "
                    f"R={row['replicas']} produced bars {row['checksum']} from {row['ticks']} "
                    f"ticks, single_process {reference['checksum']} from {count}: its numbers "
                    "are void"
                )
    return rows


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.csvbars", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--ticks", type=int, default=2_000_000, help="ticks in the file")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration")
    parser.add_argument("--readers", type=numbers, default=[1, 2], help="CSV reader replicas")
    parser.add_argument("--replicas", type=numbers, default=[1, 2], help="bars replicas")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = parser.parse_args(argv)
    if min(args.ticks, args.rounds, *args.readers, *args.replicas, 1) < 1 or not (
        args.readers and args.replicas
    ):
        parser.error("--ticks, --rounds, --readers and --replicas take numbers >= 1")
    work = Workload(ticks=args.ticks)

    def show(row: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print("  ".join(f"{k}={v}" for k, v in row.items() if k != "bench"), flush=True)

    show(machine("benchmarks.csvbars"))
    with tempfile.TemporaryDirectory(prefix="ringflow-csvbars-") as tmp:
        path = os.path.join(tmp, "ticks.csv")
        count = write_ticks(work, path)
        show({"bench": "csv_file", "ticks": count, "bytes": os.path.getsize(path)})
        try:
            rows = rounds(args, work, path, count, show)
        except ChecksumMismatch as exc:
            print(f"\n!!! {exc}", file=sys.stderr, flush=True)
            return 3
    for row in summary(rows):
        show(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
