"""Dictionary encoding of string columns on a channel.

A Columns batch's string columns (a tick's symbol, a venue, a side) hold few distinct
values, repeated row after row. Sent as they are, every row is a string the consumer
builds and frees again, and whose hash the first dictionary downstream (the window's
``{symbol: accumulator}``) computes again. A channel's encoder instead keeps a table of
the strings it has sent, and a string column travels as the strings new to the table plus
a 2-byte index per row (``StrDict``); the consumer's decoder keeps the same table and
hands out the table's own str objects. The tables follow the frames in order, which a
channel keeps (one producer, one consumer, no loss).

A table holds at most ``MAX_ENTRIES`` strings. A column whose table would pass that
(order ids, say: every value new) goes as it is from then on, so memory stays bounded
and a column that does not repeat costs no lookups.

The loops are C (``engine._strings``, built with the package where a compiler is found);
``encode`` and ``take`` below are the same routines in Python, the reference the tests
hold the C against. Without the extension a channel sends string columns as they are:
the Python loop would cost more than it saves.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

import msgspec

try:
    from engine import _strings

    NATIVE = True
except ImportError:  # built without a C compiler: strings go as they are
    NATIVE = False

MAX_ENTRIES = 16_384  # strings per table: at most a few MiB per channel and column


class StrDict(msgspec.Struct, frozen=True):
    """A dictionary-encoded string column: ``table`` names the encoder's table (random, so a
    frame from another channel's cannot pass for this one's), ``base`` entries are in it
    before this frame (0: the encoder started it), ``new`` are added, ``idx`` is 2 bytes
    per row, little-endian."""

    table: int
    base: int
    new: list[str]
    idx: bytes


def encode(
    column: Sequence[Any], ids: dict[str, int], limit: int
) -> tuple[list[str], bytes] | None:
    """``(new, indices)`` for ``column`` against the table ``ids`` (updated), or None with
    ``ids`` unchanged when the column is not a list or tuple of exact str or the table would
    pass ``limit`` (the Python version of ``engine._strings.encode``)."""
    if type(column) not in (list, tuple):
        return None
    new: list[str] = []
    indices = array("H")
    for s in column:
        if type(s) is not str:
            break
        index = ids.get(s)
        if index is None:
            index = len(ids)
            if index >= limit:
                break
            ids[s] = index
            new.append(s)
        elif not 0 <= index < limit:
            for added in new:
                del ids[added]
            raise ValueError(f"encode: ids maps a string to {index}, outside [0, {limit})")
        indices.append(index)
    else:
        if sys.byteorder == "big":  # pragma: no cover - the wire is little-endian
            indices.byteswap()
        return new, indices.tobytes()
    for added in new:
        del ids[added]
    return None


def take(table: list[str], indices: bytes) -> list[str]:
    """The rows ``table[i]`` for each 2-byte little-endian ``i`` in ``indices`` (the Python
    version of ``engine._strings.take``)."""
    if len(indices) % 2:
        raise ValueError(f"take: {len(indices)} bytes of indices, not a multiple of 2")
    rows = array("H")
    rows.frombytes(indices)
    if sys.byteorder == "big":  # pragma: no cover
        rows.byteswap()
    if rows and max(rows) >= len(table):
        raise ValueError(f"take: index {max(rows)} in a table of {len(table)} strings")
    return list(map(table.__getitem__, rows))


if NATIVE:
    native_encode = _strings.encode
    native_take = _strings.take
