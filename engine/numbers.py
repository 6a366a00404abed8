"""Numeric columns as raw 8-byte values on a channel.

A Columns batch's ``int`` and ``float`` columns (a tick's time, price and size) sent as
msgpack arrays cost the consumer a parse and a new Python object per row, freed again
once the window has read it: the largest part of decoding a batch. Packed, such a column
is one msgpack bin of 8 bytes per row (int64 or IEEE double, little-endian) and decodes
to an ``array.array`` ('q' or 'd') in one copy; the tumbling window's OHLCV kernel
(``operators/_ohlcv.c``) reads the values from it without an object per row. Any other
reader sees a sequence of the same ints and floats.

A column is packed only when every value is exactly of its field's type (an ``int``
within 64 bits, not a bool; a ``float``): anything else goes as msgpack, whose decoder
checks and converts it as it always has, so packing changes no value and lets nothing
through that the typed decoder would refuse.

``pack`` is C (``engine._numbers``, built with the package where a compiler is found);
``pack`` below is the same routine in Python, the reference the tests hold the C against.
Without the extension a channel sends numeric columns as msgpack: the Python check would
cost more than packing saves. Every decoder unpacks.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

try:
    from engine import _numbers

    NATIVE = sys.byteorder == "little"  # the C packs in the machine's order
except ImportError:  # built without a C compiler: numbers go as msgpack
    NATIVE = False

CODES: dict[Any, str] = {int: "q", float: "d"}
"""The packed code of each field type that packs."""

_INT64 = (-(2**63), 2**63 - 1)


def pack(column: Sequence[Any], code: str) -> bytes | None:
    """``column`` as 8-byte little-endian values (``code`` 'q' or 'd'), or None when it is
    not an exact list or tuple of exact ints within int64 ('q') or exact floats ('d')
    (the Python version of ``engine._numbers.pack``)."""
    if code not in ("q", "d"):
        raise ValueError("pack: code must be 'd' or 'q'")
    if type(column) not in (list, tuple):
        return None
    kind = float if code == "d" else int
    low, high = _INT64
    for value in column:
        if type(value) is not kind or (kind is int and not low <= value <= high):
            return None
    packed = array(code, column)
    if sys.byteorder == "big":  # pragma: no cover - the wire is little-endian
        packed.byteswap()
    return packed.tobytes()


def unpack(data: bytes, code: str) -> array[Any]:
    """The values of a packed column; ValueError unless its size is a multiple of 8."""
    if len(data) % 8:
        raise ValueError(f"a packed column of {len(data)} bytes, not a multiple of 8")
    values = array(code)
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


def wire(values: Any, code: str) -> Any:
    """What the encoder sends for a column of ``code``'s type: the packed bytes where it
    packs, a decoded column's array as its bytes (packed already), else the column as it
    is (msgpack). TypeError for bytes-like data, which the decoder would take for packed
    values."""
    if type(values) is array:
        if values.typecode == code and sys.byteorder == "little":
            return memoryview(values)
        return values.tolist()
    if NATIVE:
        packed = _numbers.pack(values, code)
        if packed is not None:
            return packed
    if isinstance(values, (bytes, bytearray, memoryview)):
        kind = "int" if code == "q" else "float"
        raise TypeError(f"a column of {kind} got {type(values).__name__}, not a sequence")
    return values
