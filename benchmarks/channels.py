"""Throughput of one ringflow channel against the standard library's process queues.

Usage::

    python -m benchmarks.channels          # a table
    python -m benchmarks.channels --json   # one JSON object per line

Each case runs a producer in a spawned process and the consumer in this one, for about
``--duration`` seconds (default 1.5; the whole run takes under 20 s), and reports what the
consumer received per second, timed from its first frame to the end marker:

* ``ring``: ``engine.channel.Channel``, ``Writer.send`` / ``Reader.recv``;
* ``mp_queue``: ``multiprocessing.Queue(maxsize=SLOTS)`` (bounded like the ring, so neither
  side can run ahead of the other by more than ``SLOTS`` frames), ``put`` / ``get``;
* ``pipe``: ``multiprocessing.Pipe(duplex=False)``, ``send_bytes`` / ``recv_bytes``.

Payloads are opaque frames of 256 B and 64 KiB, and batches of 1,000 ``engine.records.Tick``
(``payload: "ticks"``): msgpack through ``engine.batch.MsgpackCodec`` on the ring, pickled by
``multiprocessing.Queue`` on the baseline; both sides encode and decode every batch, so those
two rows compare what a pipeline stage pays per record.

The ring's slots are 64 KiB + 8 bytes: a slot carries ``slot_size - 8`` payload bytes (the
8-byte slot header holds kind, flags and length), so a 64 KiB frame fills exactly one slot
instead of splitting over two. Eight slots: 512 KiB of shared memory per channel, the same
depth as the queue's ``maxsize``.

Rows for ``ring`` carry ``ratio_vs_mp_queue``: its frames per second over those of the
``mp_queue`` row with the same payload. Timings depend on the machine; compare rows of the
same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.reduction import ForkingPickler
from typing import Any

from benchmarks.common import running
from engine.batch import MsgpackCodec
from engine.channel import Channel, TxEnd
from engine.records import Tick
from engine.ring import SLOT_HEADER_SIZE, Kind

SLOTS = 8
SLOT_SIZE = 64 * 1024 + SLOT_HEADER_SIZE  # 65,544: a 64 KiB frame fills exactly one slot
FRAME_SIZES = (256, 64 * 1024)
TICKS_PER_BATCH = 1000
TIMEOUT_S = 10.0  # bound on any one wait; reached only if a producer is broken
JOIN_S = 10.0
T0 = 1_700_000_000_000_000_000


def _tick_batch() -> list[Tick]:
    return [
        Tick("AAPL", T0 + i * 1000, 187.0 + (i % 100) * 0.01, float(1 + i % 50))
        for i in range(TICKS_PER_BATCH)
    ]


# --- producers (run in a spawned process) ----------------------------------------------


def _ring_bytes(tx: TxEnd, frame_bytes: int, duration: float) -> None:
    payload = os.urandom(frame_bytes)
    with tx.open() as writer:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            writer.send(Kind.DATA, payload, timeout=TIMEOUT_S)
        writer.send(Kind.EOF, timeout=TIMEOUT_S)


def _ring_ticks(tx: TxEnd, duration: float) -> None:
    codec = MsgpackCodec(Tick)
    batch = _tick_batch()
    with tx.open() as writer:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            writer.send(Kind.DATA, codec.encode(batch), timeout=TIMEOUT_S)
        writer.send(Kind.EOF, timeout=TIMEOUT_S)


def _queue_bytes(queue: Queue[Any], frame_bytes: int, duration: float) -> None:
    payload = os.urandom(frame_bytes)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        queue.put(payload, timeout=TIMEOUT_S)
    queue.put(None, timeout=TIMEOUT_S)


def _queue_ticks(queue: Queue[Any], duration: float) -> None:
    batch = _tick_batch()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        queue.put(batch, timeout=TIMEOUT_S)
    queue.put(None, timeout=TIMEOUT_S)


def _pipe_bytes(conn: Connection, frame_bytes: int, duration: float) -> None:
    payload = os.urandom(frame_bytes)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        conn.send_bytes(payload)
    conn.send_bytes(b"")  # the end marker; every real frame is at least 256 bytes


# --- consumers (run here) --------------------------------------------------------------


@dataclass
class Received:
    frames: int
    nbytes: int
    records: int
    seconds: float


@contextlib.contextmanager
def _producer(ctx: SpawnContext, target: Callable[..., None], *args: Any) -> Iterator[SpawnProcess]:
    """Run ``target(*args)`` in a spawned process; kill it if measuring fails, else join it
    and check that it exited cleanly."""
    proc = ctx.Process(target=target, args=args, daemon=True)
    with running([proc], f"producer {target.__name__}", JOIN_S):
        yield proc


def bench_ring(ctx: SpawnContext, frame_bytes: int | None, duration: float) -> Received:
    """Frames of ``frame_bytes``, or tick batches decoded here when it is None.

    Byte frames are not copied out of the slot: the consumer sees a view and counts it.
    """
    codec = MsgpackCodec(Tick)
    target: Callable[..., None]
    args: tuple[Any, ...]
    if frame_bytes is None:
        target, args = _ring_ticks, (duration,)
    else:
        target, args = _ring_bytes, (frame_bytes, duration)
    with (
        Channel.create(slots=SLOTS, slot_size=SLOT_SIZE) as ch,
        ch.rx.open() as reader,
        _producer(ctx, target, ch.tx, *args),
    ):
        ch.close_ends()
        reader.recv(timeout=TIMEOUT_S)  # the first frame starts the clock
        started = time.perf_counter()
        frames = nbytes = records = 0
        while True:
            kind, payload = reader.recv(timeout=TIMEOUT_S)
            if kind == Kind.EOF:
                break
            frames += 1
            nbytes += len(payload)
            if frame_bytes is None:
                records += len(codec.decode(payload))
        seconds = time.perf_counter() - started
    return Received(frames, nbytes, records, seconds)


def bench_queue(ctx: SpawnContext, frame_bytes: int | None, duration: float) -> Received:
    """Frames of ``frame_bytes``, or tick batches (pickled by the queue) when it is None."""
    queue: Queue[Any] = ctx.Queue(maxsize=SLOTS)
    target: Callable[..., None]
    args: tuple[Any, ...]
    if frame_bytes is None:
        target, args = _queue_ticks, (duration,)
    else:
        target, args = _queue_bytes, (frame_bytes, duration)
    try:
        with _producer(ctx, target, queue, *args):
            queue.get(timeout=TIMEOUT_S)
            started = time.perf_counter()
            frames = nbytes = records = 0
            while (item := queue.get(timeout=TIMEOUT_S)) is not None:
                frames += 1
                if frame_bytes is None:
                    records += len(item)
                else:
                    nbytes += len(item)
            seconds = time.perf_counter() - started
    finally:
        queue.close()
        queue.join_thread()
    return Received(frames, nbytes, records, seconds)


def bench_pipe(ctx: SpawnContext, frame_bytes: int, duration: float) -> Received:
    receiver, sender = ctx.Pipe(duplex=False)
    with receiver, _producer(ctx, _pipe_bytes, sender, frame_bytes, duration):
        sender.close()  # the child holds the only writer now: its death reads as EOFError
        receiver.recv_bytes()
        started = time.perf_counter()
        frames = nbytes = 0
        while item := receiver.recv_bytes():
            frames += 1
            nbytes += len(item)
        seconds = time.perf_counter() - started
    return Received(frames, nbytes, 0, seconds)


# --- driver ----------------------------------------------------------------------------


def _row(transport: str, payload: str, got: Received, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "transport": transport,
        "payload": payload,
        "frame_bytes": round(got.nbytes / got.frames) if got.frames else 0,
        "frames": got.frames,
        "seconds": round(got.seconds, 3),
        "frames_per_s": round(got.frames / got.seconds, 1),
        "mb_per_s": round(got.nbytes / got.seconds / 1e6, 2),
    }
    if got.records:
        row["records_per_s"] = round(got.records / got.seconds)
    row.update(extra)
    return row


def run(duration: float, emit: Callable[[dict[str, Any]], None]) -> None:
    """Run every case in turn and ``emit`` one row per case as soon as it is measured."""
    ctx = multiprocessing.get_context("spawn")
    ring_config = {"slots": SLOTS, "slot_size": SLOT_SIZE}
    for frame_bytes in FRAME_SIZES:
        queue = bench_queue(ctx, frame_bytes, duration)
        emit(_row("mp_queue", "bytes", queue, maxsize=SLOTS))
        emit(_row("pipe", "bytes", bench_pipe(ctx, frame_bytes, duration)))
        ring = bench_ring(ctx, frame_bytes, duration)
        ratio = (ring.frames / ring.seconds) / (queue.frames / queue.seconds)
        emit(_row("ring", "bytes", ring, ratio_vs_mp_queue=round(ratio, 2), **ring_config))
    queue = bench_queue(ctx, None, duration)
    # The queue pickles each batch out of sight; its frame size is that of one pickle.
    queue.nbytes = queue.frames * len(ForkingPickler.dumps(_tick_batch()))
    emit(_row("mp_queue", "ticks", queue, maxsize=SLOTS))
    ring = bench_ring(ctx, None, duration)
    ratio = (ring.records / ring.seconds) / (queue.records / queue.seconds)
    emit(_row("ring", "ticks", ring, ratio_vs_mp_queue=round(ratio, 2), **ring_config))


# key, header, format (with its width)
_COLUMNS = [
    ("transport", "transport", "{:<9}"),
    ("payload", "payload", "{:<7}"),
    ("frame_bytes", "frame B", "{:>7}"),
    ("frames_per_s", "frames/s", "{:>10,.0f}"),
    ("mb_per_s", "MB/s", "{:>8,.1f}"),
    ("records_per_s", "records/s", "{:>11,.0f}"),
    ("ratio_vs_mp_queue", "vs mp_queue", "{:>11}"),
]


def _table_line(cells: list[str]) -> None:
    print("  ".join(cells).rstrip(), flush=True)


def _print_header() -> None:
    _table_line([fmt.replace(",.0f", "").replace(",.1f", "").format(h) for _, h, fmt in _COLUMNS])


def _print_row(row: dict[str, Any]) -> None:
    cells = []
    for key, _, fmt in _COLUMNS:
        value = row.get(key)
        blank = fmt.replace(",.0f", "").replace(",.1f", "").format("")
        cells.append(blank if value is None else fmt.format(value))
    _table_line(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.channels",
        description="Throughput of a ringflow channel vs multiprocessing.Queue and Pipe.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per case")
    args = parser.parse_args(argv)
    if args.json:
        run(args.duration, lambda row: print(json.dumps(row), flush=True))
    else:
        _print_header()
        run(args.duration, _print_row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
