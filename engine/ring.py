"""A ring of K fixed-size slots in one named POSIX shared-memory segment.

This module owns the memory half of a channel: the segment, its byte layout and the
counters in its header. It knows nothing about waiting; ``engine.channel`` adds the
doorbells and credits that say when a slot may be read or written.

Segment layout (integers are native-endian and naturally aligned; each process's
counters sit on a cache line of their own, so the producer and the consumer never
write the same line):

    ======  ====  ===============================  ==========
    offset  size  field                            written by
    ======  ====  ===============================  ==========
    0       4     magic ``b"RFCH"``                owner
    4       4     layout version (1)               owner
    8       4     K, number of slots               owner
    12      4     slot size in bytes               owner
    64      8     slots published                  producer
    72      8     payload bytes published          producer
    80      8     nanoseconds blocked on credit    producer
    88      8     producer state (0 open, 1 done)  producer
    128     8     slots released                   consumer
    136     8     payload bytes taken              consumer
    144     8     nanoseconds waiting for input    consumer
    152     8     consumer state (0 open, 1 done)  consumer
    256     K*S   slot i at ``256 + i * S``        producer
    ======  ====  ===============================  ==========

Slot layout:

    ======  ====  ==============================================
    offset  size  field
    ======  ====  ==============================================
    0       1     frame kind (see ``Kind``)
    1       1     flags; bit 0 ``MORE``: the frame goes on in the next slot
    2       2     reserved, zero
    4       4     payload length n (at most S - 8)
    8       n     payload
    ======  ====  ==============================================

Counters are 8-byte aligned and written through a ``memoryview`` cast to ``q``, which
stores each value with one machine store: a reader in another process sees the old or the
new value, never a torn mix (``struct.pack_into`` with a standard-size format writes byte by
byte, which is the tearing Prometheus's client ran into). Counters are statistics; no
correctness decision reads them. Slot contents are ordered by the channel's doorbell
syscalls, not by anything here.
"""

from __future__ import annotations

import mmap
import os
import struct
from enum import IntEnum

from engine.errors import ChannelClosed, ChannelError

MAGIC = b"RFCH"
VERSION = 1
HEADER_SIZE = 256
SLOT_HEADER = struct.Struct("=BBHI")  # kind, flags, reserved, payload length
SLOT_HEADER_SIZE = SLOT_HEADER.size
_GEOMETRY = struct.Struct("=4sIII")  # magic, version, slots, slot size
FLAG_MORE = 0x01
MIN_SLOT_SIZE = 64
SHM_DIR = "/dev/shm"

# Indexes into the header viewed as int64 (offset // 8).
P_SLOTS, P_BYTES, P_BLOCKED_NS, P_STATE = 8, 9, 10, 11
C_SLOTS, C_BYTES, C_IDLE_NS, C_STATE = 16, 17, 18, 19


class Kind(IntEnum):
    """What a frame carries."""

    DATA = 1  # a msgspec-encoded batch of records
    WATERMARK = 2  # an int64 event time in nanoseconds
    EOF = 3  # the producer will send nothing more
    BARRIER = 4  # reserved for checkpoint barriers
    DATA_WATERMARK = 5  # a DATA payload, then the int64 watermark that follows its records


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def segment_size(slots: int, slot_size: int) -> int:
    """Bytes of shared memory a ring of ``slots`` slots of ``slot_size`` bytes takes."""
    return HEADER_SIZE + slots * slot_size


class Ring:
    """K slots of S bytes in a shared-memory segment, mapped into this process.

    The owner calls ``Ring.create`` and later ``unlink``; every other process calls
    ``Ring.attach`` with the same name and geometry. ``close`` unmaps this process's view
    only. Slot ``i`` here means the slot at ``i % K``: callers count published slots upward
    forever and let the ring wrap.
    """

    def __init__(self, name: str, slots: int, slot_size: int, *, create: bool) -> None:
        if slots < 1:
            raise ChannelError(f"channel {name!r}: slots must be >= 1, got {slots}")
        if slot_size < MIN_SLOT_SIZE or slot_size % 8:
            raise ChannelError(
                f"channel {name!r}: slot_size must be a multiple of 8 and >= {MIN_SLOT_SIZE}, "
                f"got {slot_size}"
            )
        self.name = name
        self.slots = slots
        self.slot_size = slot_size
        self.capacity = slot_size - SLOT_HEADER_SIZE
        size = segment_size(slots, slot_size)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(segment_path(name), flags, 0o600)
        except FileExistsError:
            raise ChannelError(f"shared-memory segment {name!r} already exists") from None
        except FileNotFoundError:
            raise ChannelClosed(
                f"shared-memory segment {name!r} does not exist: its owner has not created it "
                "or has already unlinked it"
            ) from None
        try:
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size != size:
                raise ChannelError(
                    f"shared-memory segment {name!r} is {os.fstat(fd).st_size} bytes, expected "
                    f"{size} for {slots} slots of {slot_size} bytes"
                )
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)
        self.counters = self.buf[:HEADER_SIZE].cast("q")
        if create:
            _GEOMETRY.pack_into(self.buf, 0, MAGIC, VERSION, slots, slot_size)
        else:
            magic, version, got_slots, got_size = _GEOMETRY.unpack_from(self.buf, 0)
            if (magic, version, got_slots, got_size) != (MAGIC, VERSION, slots, slot_size):
                raise ChannelError(
                    f"shared-memory segment {name!r} has layout {magic!r} v{version} "
                    f"{got_slots}x{got_size}, expected {MAGIC!r} v{VERSION} {slots}x{slot_size}"
                )

    @classmethod
    def create(cls, name: str, slots: int, slot_size: int) -> Ring:
        return cls(name, slots, slot_size, create=True)

    @classmethod
    def attach(cls, name: str, slots: int, slot_size: int) -> Ring:
        return cls(name, slots, slot_size, create=False)

    def write(
        self,
        seq: int,
        kind: int,
        flags: int,
        payload: bytes | bytearray | memoryview,
        trailer: bytes = b"",
    ) -> None:
        """Fill slot ``seq % K``: payload and trailer (the frame's payload is the two, one
        after the other) first, then the header."""
        n, m = len(payload), len(trailer)
        start = HEADER_SIZE + (seq % self.slots) * self.slot_size + SLOT_HEADER_SIZE
        self.buf[start : start + n] = payload
        if m:
            self.buf[start + n : start + n + m] = trailer
        SLOT_HEADER.pack_into(self.buf, start - SLOT_HEADER_SIZE, kind, flags, 0, n + m)

    def read(self, seq: int) -> tuple[int, int, memoryview]:
        """Kind, flags and a view of the payload of slot ``seq % K`` (valid until released)."""
        off = HEADER_SIZE + (seq % self.slots) * self.slot_size
        kind, flags, _, n = SLOT_HEADER.unpack_from(self.buf, off)
        if n > self.capacity:
            raise ChannelError(f"channel {self.name!r}: slot {seq % self.slots} is corrupt")
        start = off + SLOT_HEADER_SIZE
        return kind, flags, self.buf[start : start + n]

    def close(self) -> None:
        """Unmap this process's view. If a payload view is still held somewhere (a traceback
        frame, say), the mapping stays until that view is garbage; this never raises."""
        if self._mmap.closed:
            return
        try:
            self.counters.release()
            self.buf.release()
            self._mmap.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        """Remove the segment's name (owner only). Mappings stay valid until closed."""
        try:
            os.unlink(segment_path(self.name))
        except FileNotFoundError:
            pass
