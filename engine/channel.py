"""Single-producer single-consumer channels between processes, with credit-based flow control.

A channel is a ``Ring`` of K slots plus two pipes:

* the **doorbell** pipe, producer -> consumer: one byte per slot published;
* the **credit** pipe, consumer -> producer: one byte per slot released.

One slot is one credit. The producer starts with K credits, spends one per slot it fills and
blocks (in ``poll``, not spinning) when it has none; the consumer hands credits back as it
releases slots. Memory per channel is K x slot size, whatever the load.

Why pipes and not flags in shared memory: Python has no memory fence, so "write the slot, then
set a flag" in shared memory gives no ordering another core must respect, and "set waiting,
then re-check" can lose a wake-up. Here every hand-over crosses a syscall: the producer writes
the slot, then ``write``\\ s the doorbell; the consumer ``read``\\ s the doorbell, then reads the
slot. The kernel's pipe lock orders the two (release on write, acquire on read), the same for
credits in the other direction, so a slot is never read before it is written nor overwritten
before it is released, and a waiter sleeping in ``poll`` cannot miss a byte. Frames are batches
of thousands of records, so one syscall per frame is cheap; credits go back in groups.

The pipes also carry liveness: when a process dies, SIGKILL included, the kernel closes its pipe
ends, so the survivor sees end-of-file (consumer) or a broken pipe (producer) at once and raises
``ChannelClosed`` instead of hanging. For that to work, each pipe end must live in exactly one
process: the owner hands ``tx`` and ``rx`` to the two processes and then calls ``close_ends``.

Ownership: ``Channel.create`` (the owner, normally the coordinator) creates the segment and the
pipes and is the only one to ``unlink`` the segment. ``TxEnd`` and ``RxEnd`` pickle as the
segment's name and sizes plus their two pipe descriptors (passed the way ``multiprocessing``
passes connections); the receiving process opens them with ``open()``.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

from engine.errors import ChannelClosed, ChannelError, ChannelTimeout, FrameTooLarge
from engine.ring import (
    C_BYTES,
    C_IDLE_NS,
    C_SLOTS,
    C_STATE,
    FLAG_MORE,
    MIN_SLOT_SIZE,
    P_BLOCKED_NS,
    P_BYTES,
    P_SLOTS,
    P_STATE,
    Kind,
    Ring,
)

DEFAULT_SLOTS = 8
DEFAULT_SLOT_SIZE = 128 * 1024  # the job default too (engine.coordinator.Settings)
WAIT_SLICE_S = 0.25  # longest single sleep; callers get control back this often while blocked
WAIT_SLICE_NS = int(WAIT_SLICE_S * 1e9)
MAX_SLOTS = 4096  # credits and doorbells are bytes in pipes; keep them far below pipe capacity
_names = itertools.count()
_ONES = b"\x01" * 4096


def _nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return r, w


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of a channel's counters, readable from any process that maps it."""

    slots: int
    slot_size: int
    sent_slots: int
    sent_bytes: int
    backpressured_ns: int
    taken_slots: int
    taken_bytes: int
    idle_ns: int

    @property
    def in_use(self) -> int:
        """Slots published and not yet released: the credits the producer is missing.
        Within [0, slots]: the counters are read while both ends move."""
        return max(0, min(self.slots, self.sent_slots - self.taken_slots))


def read_stats(ring: Ring) -> ChannelStats:
    """The channel's counters as both ends left them a moment ago. The consumer's are read
    first: the producer's count, read after, is never below it (a reader paused between
    the two reads once saw the consumer pass the producer's older count)."""
    c = ring.counters
    taken, taken_bytes, idle_ns = c[C_SLOTS], c[C_BYTES], c[C_IDLE_NS]
    return ChannelStats(
        ring.slots,
        ring.slot_size,
        c[P_SLOTS],
        c[P_BYTES],
        c[P_BLOCKED_NS],
        taken,
        taken_bytes,
        idle_ns,
    )


def geometry_problems(slots: int, slot_size: int) -> list[str]:
    """What is wrong with a channel of ``slots`` slots of ``slot_size`` bytes; [] if nothing
    (also what ``engine.launch`` checks its settings with, before anything starts)."""
    problems = []
    if not 1 <= slots <= MAX_SLOTS:
        problems.append(f"slots must be 1..{MAX_SLOTS}, got {slots}")
    if slot_size < MIN_SLOT_SIZE or slot_size % 8:
        problems.append(
            f"slot_size must be a multiple of 8 and >= {MIN_SLOT_SIZE}, got {slot_size}"
        )
    return problems


class Channel:
    """The owner's handle on one channel: its segment and both pipes.

    Typical use: ``ch = Channel.create()``; pass ``ch.tx`` to the producer process and
    ``ch.rx`` to the consumer; once both processes have started, ``ch.close_ends()``; when the
    job is over, ``ch.unlink()``. The owner keeps its mapping to read ``stats()``.
    """

    def __init__(self, name: str, slots: int, slot_size: int) -> None:
        problems = geometry_problems(slots, slot_size)
        if problems:
            raise ChannelError(f"channel {name!r}: {'; '.join(problems)}")
        self.name = name
        self.ring = Ring.create(name, slots, slot_size)
        try:
            doorbell_r, doorbell_w = _nonblocking_pipe()
            credit_r, credit_w = _nonblocking_pipe()
        except OSError:
            self.ring.close()
            self.ring.unlink()
            raise
        self.tx = TxEnd(name, slots, slot_size, doorbell_w, credit_r)
        self.rx = RxEnd(name, slots, slot_size, doorbell_r, credit_w)

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        slots: int = DEFAULT_SLOTS,
        slot_size: int = DEFAULT_SLOT_SIZE,
    ) -> Channel:
        if name is None:
            name = f"ringflow-{os.getpid()}-{next(_names)}"
        return cls(name, slots, slot_size)

    @property
    def slots(self) -> int:
        return self.ring.slots

    @property
    def slot_size(self) -> int:
        return self.ring.slot_size

    def stats(self) -> ChannelStats:
        return read_stats(self.ring)

    def close_ends(self) -> None:
        """Close the owner's copies of the pipe ends, after both peers have them."""
        self.tx.discard()
        self.rx.discard()

    def unlink(self) -> None:
        """Close the pipe ends still here, unmap, and remove the segment's name."""
        self.close_ends()
        self.ring.close()
        self.ring.unlink()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlink()


def _rebuild_end(cls: type[_End], name: str, slots: int, slot_size: int, a: Any, b: Any) -> _End:
    return cls(name, slots, slot_size, a.detach(), b.detach())


class _End:
    """One side's share of a channel: segment name and sizes, and two pipe descriptors."""

    def __init__(self, name: str, slots: int, slot_size: int, fd_a: int, fd_b: int) -> None:
        self.name = name
        self.slots = slots
        self.slot_size = slot_size
        self._fds = [fd_a, fd_b]

    def __reduce__(self) -> tuple[Any, ...]:
        a, b = self._fds
        if a < 0:
            raise ChannelError(f"channel {self.name!r}: this end was already opened or closed")
        return (
            _rebuild_end,
            (
                type(self),
                self.name,
                self.slots,
                self.slot_size,
                reduction.DupFd(a),
                reduction.DupFd(b),
            ),
        )

    def take_fds(self) -> tuple[int, int]:
        a, b = self._fds
        if a < 0:
            raise ChannelError(f"channel {self.name!r}: this end was already opened or closed")
        self._fds = [-1, -1]
        return a, b

    def discard(self) -> None:
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds = [-1, -1]


class TxEnd(_End):
    """The producer's end: doorbell write side, credit read side."""

    def open(self, *, on_wait: Callable[[], None] | None = None) -> Writer:
        return Writer(self, on_wait=on_wait)


class RxEnd(_End):
    """The consumer's end: doorbell read side, credit write side."""

    def open(self) -> Reader:
        return Reader(self)


class Writer:
    """Producer side of a channel. Not thread-safe; one process, one writer.

    ``send`` copies a frame into the next slot and rings the doorbell. A frame larger than a
    slot's capacity is split across consecutive slots (flag ``MORE`` on all but the last) unless
    ``split=False``, in which case ``FrameTooLarge`` is raised. Blocking for credit sleeps in
    ``poll``; every ``WAIT_SLICE_S`` it calls ``on_wait`` (heartbeats, stop requests: it may
    raise to abort) and, with a ``timeout``, gives up with ``ChannelTimeout``. If that happens
    in the middle of a split frame, the part already sent cannot be taken back: the writer
    refuses to send again (the consumer would glue the next frame onto the torn one).
    """

    def __init__(self, end: TxEnd, *, on_wait: Callable[[], None] | None = None) -> None:
        self.name = end.name
        self._doorbell, self._credit = end.take_fds()
        self.ring = Ring.attach(end.name, end.slots, end.slot_size)
        self.capacity = self.ring.capacity
        self._counters = self.ring.counters
        self._credits = end.slots
        self._seq = 0
        self._on_wait = on_wait
        self._last_on_wait = time.perf_counter_ns()
        self._poller = select.poll()
        self._poller.register(self._credit, select.POLLIN)
        self.closed = False
        self._torn = False  # a split frame was interrupted after some of its slots went out

    @property
    def credits(self) -> int:
        return self._credits

    def send(
        self,
        kind: int,
        payload: bytes | bytearray | memoryview = b"",
        *,
        trailer: bytes = b"",
        split: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Send ``payload`` followed by ``trailer`` as one frame (the trailer is written
        into the slot after the payload, so the two are never joined in memory first,
        unless the frame needs several slots)."""
        if self._torn:
            raise ChannelError(
                f"channel {self.name!r}: an earlier split frame was interrupted after part of it "
                "was sent, and the consumer cannot tell where it ends; close this writer"
            )
        n = len(payload) + len(trailer)
        if n <= self.capacity:
            self._acquire(timeout)
            self._publish(kind, 0, payload, trailer)
            return
        if trailer:
            payload = bytes(payload) + trailer
        if not split:
            raise FrameTooLarge(
                f"channel {self.name!r}: a {n}-byte frame does not fit a slot of "
                f"{self.capacity} payload bytes; raise slot_size or allow splitting"
            )
        view = memoryview(payload)
        cap = self.capacity
        for start in range(0, n, cap):
            try:
                self._acquire(timeout)
            except BaseException:
                self._torn = start > 0
                raise
            self._publish(kind, FLAG_MORE if start + cap < n else 0, view[start : start + cap])

    def _publish(
        self, kind: int, flags: int, payload: bytes | bytearray | memoryview, trailer: bytes = b""
    ) -> None:
        self.ring.write(self._seq, kind, flags, payload, trailer)
        self._seq += 1
        self._credits -= 1
        c = self._counters  # counted before the doorbell, so in_use never reads negative
        c[P_SLOTS] = self._seq
        c[P_BYTES] += len(payload) + len(trailer)
        try:
            os.write(self._doorbell, b"\x01")
        except BrokenPipeError:
            raise self._closed_error() from None

    def _acquire(self, timeout: float | None) -> None:
        if not self._credits and not self._refill():
            self._wait_credit(timeout)

    def _wait_credit(self, timeout: float | None) -> None:
        """Sleep until at least one credit comes back; the time counts as backpressured
        (added after every slice, so the counter moves while the producer is blocked).
        ``on_wait`` runs at least every ``WAIT_SLICE_S`` of waiting, also when credits keep
        trickling in, so a producer feeding a slow consumer still shows signs of life."""
        deadline = None if timeout is None else time.monotonic() + timeout
        counters = self._counters
        while True:
            wait = WAIT_SLICE_S
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            started = time.perf_counter_ns()
            ready = self._poller.poll(wait * 1000.0)
            now = time.perf_counter_ns()
            counters[P_BLOCKED_NS] += now - started
            if self._on_wait is not None and (
                not ready or now - self._last_on_wait >= WAIT_SLICE_NS
            ):
                self._last_on_wait = now
                self._on_wait()
            if ready and self._refill():
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout(
                    f"channel {self.name!r}: no credit from the consumer in {timeout} s"
                )

    def _refill(self) -> bool:
        try:
            got = os.read(self._credit, 4096)
        except BlockingIOError:
            return False
        if not got:
            raise self._closed_error()
        self._credits += len(got)
        return True

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"channel {self.name!r}: the consumer closed its end or died")

    def wait_drained(self, timeout: float | None = None) -> None:
        """Block until the consumer has released every slot (all K credits back)."""
        while self._credits < self.ring.slots:
            if not self._refill():
                self._wait_credit(timeout)

    def close(self) -> None:
        """Close this end; the consumer sees end-of-file once it has read what was sent."""
        if self.closed:
            return
        self.closed = True
        self._counters[P_STATE] = 1
        os.close(self._doorbell)
        os.close(self._credit)
        self._counters.release()
        self.ring.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reader:
    """Consumer side of a channel. Not thread-safe; one process, one reader.

    ``take`` returns the next whole frame as ``(kind, payload)`` and holds its slot until
    ``release`` (or the next ``take``); a single-slot payload is a view into shared memory valid
    only until then, a frame split over slots comes back reassembled as ``bytes``. ``recv``
    blocks for one frame; many readers are waited on together with ``InputGate``.
    """

    def __init__(self, end: RxEnd) -> None:
        self.name = end.name
        self._doorbell, self._credit = end.take_fds()
        self.ring = Ring.attach(end.name, end.slots, end.slot_size)
        self._counters = self.ring.counters
        self._seq = 0  # next slot to take
        self.available = 0  # slots announced by the doorbell and not yet taken
        self._held = 0  # slots taken, not yet released (0 or 1)
        self._held_bytes = 0
        self._owed = 0  # released slots whose credit has not gone back yet
        self._credit_batch = max(1, end.slots // 4)
        self._partial: bytearray | None = None
        self.eof = False  # an EOF frame was taken
        self.producer_gone = False  # the doorbell pipe reached end-of-file
        self.closed = False

    def fileno(self) -> int:
        return self._doorbell

    def pull(self) -> int:
        """Read the doorbell without blocking; returns how many slots became available."""
        try:
            got = os.read(self._doorbell, 65536)
        except BlockingIOError:
            return 0
        if not got:
            self.producer_gone = True
            return 0
        self.available += len(got)
        return len(got)

    def check_alive(self) -> None:
        """Raise ``ChannelClosed`` if the producer went away without sending EOF."""
        if self.producer_gone and not self.available and not self.eof:
            raise ChannelClosed(
                f"channel {self.name!r}: the producer closed its end or died without sending EOF"
            )

    def take(self) -> tuple[int, bytes | memoryview] | None:
        """The next whole frame, or None if it has not (fully) arrived yet."""
        if self._held:
            self.release()
        while self.available:
            kind, flags, payload = self.ring.read(self._seq)
            self._seq += 1
            self.available -= 1
            self._held = 1
            self._held_bytes = len(payload)
            if flags & FLAG_MORE:
                if self._partial is None:
                    self._partial = bytearray()
                self._partial += payload
                payload.release()
                self.release()
                continue
            if self._partial is not None:
                self._partial += payload
                payload.release()
                whole, self._partial = bytes(self._partial), None
                self.release()
                frame: tuple[int, bytes | memoryview] = (kind, whole)
            else:
                frame = (kind, payload)
            if kind == Kind.EOF:
                self.eof = True
            return frame
        self.check_alive()
        return None

    def release(self) -> None:
        """Give the held slot back to the producer."""
        if not self._held:
            return
        self._held = 0
        c = self._counters
        c[C_SLOTS] += 1
        c[C_BYTES] += self._held_bytes
        self._owed += 1
        if self._owed >= self._credit_batch or not self.available:
            self.flush_credits()

    def flush_credits(self) -> None:
        owed, self._owed = self._owed, 0
        if not owed or self.closed:
            return
        try:
            os.write(self._credit, _ONES[:owed])
        except BrokenPipeError:
            pass  # the producer is gone; the doorbell's end-of-file reports it

    def recv(self, timeout: float | None = None) -> tuple[int, bytes | memoryview]:
        """Block until a whole frame arrives; ``ChannelTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._doorbell, select.POLLIN)
        while True:
            frame = self.take()
            if frame is not None:
                return frame
            if self.pull():
                continue
            self.check_alive()
            if self.producer_gone:
                raise ChannelClosed(f"channel {self.name!r}: end of stream (EOF was taken)")
            wait = WAIT_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            started = time.perf_counter_ns()
            poller.poll(min(wait, WAIT_SLICE_S) * 1000.0)
            self._counters[C_IDLE_NS] += time.perf_counter_ns() - started
            if deadline is not None and time.monotonic() >= deadline and not self.pull():
                self.check_alive()
                raise ChannelTimeout(f"channel {self.name!r}: no frame within {timeout} s")

    def add_idle(self, ns: int) -> None:
        self._counters[C_IDLE_NS] += ns

    def close(self) -> None:
        """Close this end; a producer still sending gets ``ChannelClosed``."""
        if self.closed:
            return
        self.release()
        self.flush_credits()
        self.closed = True
        self._counters[C_STATE] = 1
        os.close(self._doorbell)
        os.close(self._credit)
        self._counters.release()
        self.ring.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InputGate:
    """Waits on many readers at once (epoll over their doorbells) and serves them fairly.

    ``next`` returns ``(index, kind, payload)`` from whichever input has a frame, taking one
    frame per ready input in turn, so a busy input delays another by at most one frame per
    round and never by more than its K slots. The slot is held until the next call or
    ``release``. An input whose producer sent EOF and closed is retired; ``done`` is true
    when all are. Time blocked with nothing to read is charged as idle to the gate
    (``idle_ns``) and to each input waited on.
    """

    def __init__(self, readers: list[Reader]) -> None:
        self.readers = readers
        self._epoll = select.epoll()
        self._by_fd: dict[int, int] = {}
        for i, reader in enumerate(readers):
            self._epoll.register(reader.fileno(), select.EPOLLIN)
            self._by_fd[reader.fileno()] = i
        self._live = set(range(len(readers)))
        self._cursor = 0
        self._held: Reader | None = None
        self.idle_ns = 0

    @property
    def done(self) -> bool:
        return not self._live

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None

    def next(self, timeout: float | None = None) -> tuple[int, int, bytes | memoryview] | None:
        """The next frame from any input, or None after ``timeout`` seconds (None: forever)."""
        self.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        readers = self.readers
        n = len(readers)
        while self._live:
            for _ in range(n):
                i = self._cursor
                self._cursor = i + 1 if i + 1 < n else 0
                reader = readers[i]
                if reader.available:
                    frame = reader.take()
                    if frame is not None:
                        self._held = reader
                        if frame[0] == Kind.EOF:
                            self._retire(i)
                        return i, frame[0], frame[1]
            if self._poll(0.0):
                continue
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            started = time.perf_counter_ns()
            self._poll(wait)
            waited = time.perf_counter_ns() - started
            self.idle_ns += waited
            for i in self._live:
                readers[i].add_idle(waited)
        return None

    def _poll(self, timeout: float | None) -> bool:
        try:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
            return False
        progressed = False
        for fd, _ in events:
            i = self._by_fd[fd]
            reader = self.readers[i]
            if reader.pull():
                progressed = True
            elif reader.producer_gone and not reader.available:
                if not reader.eof:
                    reader.check_alive()
                self._retire(i)
        return progressed

    def _retire(self, i: int) -> None:
        if i in self._live:
            self._live.discard(i)
            try:
                self._epoll.unregister(self.readers[i].fileno())
            except OSError as exc:  # pragma: no cover - already closed
                if exc.errno != errno.EBADF:
                    raise

    def close(self) -> None:
        self.release()
        self._epoll.close()
