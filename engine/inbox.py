"""Messages from a ``multiprocessing`` connection, read as far as they have arrived.

``Connection.recv`` reads a whole message or blocks until it can: on an event loop, a peer
frozen halfway through sending a large message (a sink's result) would block the loop,
its watchdog included, for as long as the peer stays frozen. ``Inbox`` reads whatever
bytes are there, hands on each message once it is whole and keeps the rest for the next
read, so the loop never waits on a sender. The framing is the one ``Connection.send``
writes on POSIX: a 4-byte big-endian signed size (or -1 and an 8-byte unsigned size, for
a message over 2 GiB), then the pickle.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

READ_SIZE = 1 << 20  # bytes a read asks for
_SHORT, _LONG = 4, 12  # header sizes: a 4-byte size, or -1 and an 8-byte size


class Inbox:
    """The receiving side of ``conn`` for an event loop (its descriptor is made
    non-blocking); call ``receive`` when the descriptor is readable."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn  # (kept: it owns the descriptor)
        self.fd = conn.fileno()
        self.last_read_ns = 0  # time.monotonic_ns() of the last read that got bytes
        self._buffer = bytearray()
        os.set_blocking(self.fd, False)

    @property
    def partial(self) -> int:
        """Bytes received of a message not yet whole."""
        return len(self._buffer)

    def receive(self, handle: Callable[[Any], None]) -> None:
        """Hand every message that is whole to ``handle``, in order; ``EOFError`` once the
        peer has closed (after the messages that came whole before it). A message that does
        not unpickle raises what ``pickle.loads`` raised, and is dropped; the whole ones
        behind it come with the next call."""
        self._hand_on(handle)  # those left behind by a message that raised
        while True:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                raise EOFError(f"peer closed with {self.partial} byte(s) of a message unread")
            self.last_read_ns = time.monotonic_ns()
            self._buffer += chunk
            self._hand_on(handle)

    def _hand_on(self, handle: Callable[[Any], None]) -> None:
        buffer = self._buffer
        while len(buffer) >= _SHORT:
            size, start = int.from_bytes(buffer[:_SHORT], "big", signed=True), _SHORT
            if size == -1:
                if len(buffer) < _LONG:
                    return
                size, start = int.from_bytes(buffer[_SHORT:_LONG], "big"), _LONG
            end = start + size
            if len(buffer) < end:
                return
            view = memoryview(buffer)
            data = view[start:end]  # (no copy of a large message)
            try:
                message = pickle.loads(data)
            finally:  # a message that cannot be read is dropped: the next one is whole
                data.release()
                view.release()
                del buffer[:end]
            handle(message)
