"""Per-worker counters in one shared-memory block, written by workers, read by the coordinator.

One row of ``FIELDS`` int64 values per worker, a row per 128 bytes (two cache lines, one
writer each). Each value is written with one aligned 8-byte store through a ``memoryview``
cast, so a reader never sees a torn value. Workers write only their own row.

    ====  =================  ===============================================
    slot  field              meaning
    ====  =================  ===============================================
    0     heartbeat_ns       ``time.monotonic_ns()`` at the worker's last sign of life
    1     state              see ``State``
    2     pid                the worker's process id
    3     started_ns         monotonic ns when the worker began running
    4     records_in         records taken from inputs (sources: produced)
    5     records_out        records emitted to outputs
    6     bytes_out          encoded bytes sent
    7     idle_ns            time waiting for input
    8     backpressured_ns   time waiting for credit
    9     watermark          current watermark (ns since epoch)
    10    late               records counted late
    11    finished_ns        monotonic ns when the worker stopped running
    12    paused_ns          time a sink spent paused by its destination (a store's
                             queue above its high watermark)
    13    pauses             how many such pauses began
    14    queue_depth        the destination's queue depth, last reported
    15    logic_ns           CPU time inside the node's own logic (CPU minus this is the
                             engine's cost: decoding, partitioning, framing, channels)
    ====  =================  ===============================================
"""

from __future__ import annotations

import mmap
import os
from enum import IntEnum

from engine.batch import MIN_WATERMARK
from engine.ring import SHM_DIR

ROW_BYTES = 128
ROW = ROW_BYTES // 8
HEARTBEAT, STATE, PID, STARTED, RECORDS_IN, RECORDS_OUT, BYTES_OUT = range(7)
IDLE_NS, BACKPRESSURED_NS, WATERMARK, LATE, FINISHED = range(7, 12)
PAUSED_NS, PAUSES, QUEUE_DEPTH, LOGIC_NS = range(12, 16)


class State(IntEnum):
    STARTING = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3


class StatsBlock:
    """``rows`` rows of counters in ``/dev/shm/<name>``; the creator unlinks it."""

    def __init__(self, name: str, rows: int, *, create: bool) -> None:
        self.name = name
        self.rows = rows
        size = max(1, rows) * ROW_BYTES
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.values = memoryview(self._mmap).cast("q")
        if create:  # no watermark yet, rather than 0 (1970: a lag of decades in the metrics)
            for index in range(rows):
                self.values[index * ROW + WATERMARK] = MIN_WATERMARK

    def row(self, index: int) -> memoryview:
        """A writable view of one worker's row (index it with the field constants)."""
        return self.values[index * ROW : (index + 1) * ROW]

    def get(self, index: int, field: int) -> int:
        value: int = self.values[index * ROW + field]
        return value

    def unlink(self) -> None:
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        try:
            self.values.release()
            self._mmap.close()
        except BufferError:
            pass  # a row view is still held; the mapping goes when the process exits
