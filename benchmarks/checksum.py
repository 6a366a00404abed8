"""One digest of a job's bars, computed the same way for every engine.

A bar is reduced to a canonical text line::

    symbol|window_start|window_end|open|high|low|close|volume|vwap|count

with floats by ``repr`` (exact), except ``vwap``, written to ``VWAP_DIGITS`` significant
digits: every engine sums ``price * size`` in each symbol's arrival order, which the
generator fixes, so the sums agree to the bit today; the rounding keeps the digest stable
should an engine ever add the same numbers in another order. The line is hashed with
BLAKE2b to 64 bits; the digest of a set of bars is their count and the sum of their hashes
modulo 2**64. A sum commutes, so replicas fold their own bars where they are and the
driver adds the parts, in any order, with no bar crossing a process boundary; a bar lost or
duplicated changes the sum.

``Digest.checksum()`` is the printable form, ``"<bars>:<sum as 16 hex digits>"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

MASK = (1 << 64) - 1
VWAP_DIGITS = 12


def bar_hash(
    symbol: str,
    window_start: int,
    window_end: int,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    vwap: float,
    count: int,
) -> int:
    """The 64-bit hash of one bar's canonical line (see the module docstring)."""
    line = (
        f"{symbol}|{window_start}|{window_end}|{open!r}|{high!r}|{low!r}|{close!r}|"
        f"{volume!r}|{vwap:.{VWAP_DIGITS}g}|{count}"
    )
    return int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little")


@dataclass
class Digest:
    """A running digest: ``bars`` folded so far and the sum of their hashes mod 2**64."""

    bars: int = 0
    total: int = 0

    def add(self, *fields: Any) -> None:
        """Fold one bar given as the ten fields of ``bar_hash``, in that order."""
        self.total = (self.total + bar_hash(*fields)) & MASK
        self.bars += 1

    def add_bar(self, bar: Any) -> None:
        """Fold an ``engine.records.Bar`` (or anything with the same attribute names)."""
        self.add(
            bar.symbol,
            bar.window_start,
            bar.window_end,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.vwap,
            bar.count,
        )

    def merge(self, other: Digest) -> Digest:
        """Add another part's bars to this digest; returns self."""
        self.bars += other.bars
        self.total = (self.total + other.total) & MASK
        return self

    def checksum(self) -> str:
        return f"{self.bars}:{self.total:016x}"


def combine(parts: list[tuple[int, int]]) -> Digest:
    """The digest of several parts given as ``(bars, total)`` pairs."""
    out = Digest()
    for bars, total in parts:
        out.merge(Digest(bars, total))
    return out
