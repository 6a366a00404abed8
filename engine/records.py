"""The market-data records ringflow ships with: ticks in, bars out.

Both are msgspec Structs encoded as arrays (``array_like``), so a batch of them is a compact
msgpack array of arrays; ``gc=False`` because they hold no references to other objects.
Event times are integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import msgspec


class Tick(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One trade: symbol, event time (ns), price and size."""

    symbol: str
    ts: int
    price: float
    size: float


class Bar(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One OHLCV bar of a symbol over the event-time window [window_start, window_end)."""

    symbol: str
    window_start: int
    window_end: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    count: int
