"""File plumbing shared by the CSV sources and the file sinks.

* ``AtomicFile``: write a file through a temporary sibling and ``os.replace`` it into place on
  ``commit()``; ``abort()`` removes the temporary. A reader never sees a half-written file
  under the final name, and a failed job leaves no file that looks complete.
* Byte ranges: ``split_points`` cuts a file into ``n`` byte ranges; ``RangeReader`` yields the
  lines of one range, by the usual rule that a line belongs to the range holding its first
  byte. A reader that does not start at offset 0 skips to the first line start at or after
  its start; every reader reads past its end to finish its last line. The ranges' lines are
  then exactly the file's lines, each once.
* ``count_newlines``: how many lines end between two offsets (for line numbers in messages; it
  reads the prefix, so callers do it only when they need a line number).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import IO

from engine.tempfiles import temporary_path

__all__ = [
    "BAR_HEADER",
    "DEAD_LETTER_HEADER",
    "TICK_HEADER",
    "AtomicFile",
    "RangeReader",
    "count_newlines",
    "replica_path",
    "replica_paths",
    "split_points",
]

TICK_HEADER = "symbol,ts,price,size"
DEAD_LETTER_HEADER = ("line", "raw", "reason")
BAR_HEADER = "symbol,window_start,window_end,open,high,low,close,volume,vwap,count"
CHUNK = 1 << 20  # bytes per read: large enough that per-read overhead vanishes


class AtomicFile:
    """A text file written under a temporary name and renamed into place on ``commit()``.

    The temporary lives in the target's directory (``.<name>.<owner>.<token>.tmp``, see
    ``engine.tempfiles``) so the rename is atomic. ``owner`` is the job's id in a worker
    (``ctx.job``: the job's teardown can then find a temporary whose writer was killed),
    this process's pid by default. It is created with the process umask like any other
    file. Text is UTF-8 and newlines are written as given. Use from one thread of one
    process.
    """

    def __init__(self, path: str, owner: str = "") -> None:
        self.path = path
        self.temp = temporary_path(path, owner or str(os.getpid()))
        self.file: IO[str] | None = open(  # noqa: SIM115 - closed by commit() or abort()
            self.temp, "x", encoding="utf-8", newline="", buffering=CHUNK
        )

    def write(self, text: str) -> None:
        assert self.file is not None, "write() after commit() or abort()"
        self.file.write(text)

    def commit(self) -> None:
        """Flush, fsync and rename into place (replacing any file there). Until the rename
        is done, ``abort()`` still removes the temporary: a commit cut short (a failing
        flush, or the worker's SIGTERM arriving mid-way) leaves nothing behind."""
        file = self.file
        if file is None:
            raise ValueError(f"{self.path}: commit() after commit() or abort()")
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        os.replace(self.temp, self.path)
        self.file = None

    def abort(self) -> None:
        """Close and remove the temporary; the target is left as it was. Idempotent, and a
        no-op after ``commit()``."""
        file, self.file = self.file, None
        if file is not None:
            file.close()  # (a no-op if a cut-short commit closed it)
            try:
                os.unlink(self.temp)
            except FileNotFoundError:  # renamed into place just before the cut
                pass


def replica_path(path: str, replica: int, parallelism: int) -> str:
    """``path`` itself with one replica; ``name.<replica>.ext`` for each of several."""
    if parallelism == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.{replica}{ext}"


def replica_paths(path: str, parallelism: int) -> tuple[str, ...]:
    """Every replica's ``replica_path``."""
    return tuple(replica_path(path, r, parallelism) for r in range(parallelism))


def split_points(size: int, n: int) -> list[int]:
    """``n + 1`` offsets cutting ``size`` bytes into ``n`` near-equal ranges."""
    return [size * i // n for i in range(n + 1)]


def count_newlines(path: str, start: int, end: int) -> int:
    """The number of ``\n`` bytes in ``path`` between offsets ``start`` and ``end``."""
    count = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                break
            count += data.count(b"\n")
            left -= len(data)
    return count


class RangeReader:
    """The lines whose first byte lies in ``[start, end)`` of an open binary file.

    ``first`` is the offset of the first such line (``>= end`` when there is none).
    ``blocks()`` yields ``(offset, data)``: bytes holding whole lines, each ending in ``\\n``
    except the file's last line when the file does not end in one, and where they start.
    """

    def __init__(self, file: IO[bytes], start: int, end: int, chunk: int | None = None) -> None:
        self.file = file
        self.end = end
        self.chunk = CHUNK if chunk is None else chunk
        if start > 0:
            # The line holding byte start-1 belongs to an earlier range, even when it ends
            # right at start-1: then the line at start is the first one of ours.
            file.seek(start - 1)
            file.readline()
        else:
            file.seek(0)
        self.first = file.tell()

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        file, end, pos = self.file, self.end, self.first
        carry = b""
        while pos < end:
            data = file.read(min(self.chunk, end - pos))
            if not data:  # the file shrank under us: stop at its end
                break
            at = pos - len(carry)
            pos += len(data)
            if carry:
                data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut:
                yield at, data if cut == len(data) else data[:cut]
                carry = data[cut:]
            else:
                carry = data
        if carry:
            # The last line started before end; finish it, past end if need be.
            yield pos - len(carry), carry + file.readline()
