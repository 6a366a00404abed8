"""OHLCV + VWAP tumbling bars in a plain dict of accumulators: the loop a user writes by hand.

The baselines (``single_process``, ``mp_queue``, ``ray``) aggregate with this class, so the
comparison with ringflow is engine against engine on the same semantics as
``WindowAggregate(Tumbling(size), OHLCV())``:

* a tick belongs to the window ``[ts - ts % size, + size)``; it is late (counted, not
  aggregated) when that window's end is ``<=`` the watermark at the time it arrives;
* open / close are the prices of the earliest / latest tick by event time, ties going to
  the earlier / later arrival; high, low; volume = sum(size); vwap = sum(price * size) /
  volume, summed in arrival order; count;
* ``advance(watermark)`` emits every window whose end is ``<=`` the watermark,
  ``finish()`` every window still open.

Emitted bars are folded into a ``Digest`` (the benchmark's sink) as they fire. The loop is
written out inline, with no call per tick, as the fastest plain-Python version would be:
the floor a single core sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.checksum import Digest

MIN_WATERMARK = -(2**63)
# Accumulator layout: [open_ts, open, high, low, close_ts, close, volume, pv, count].


class HandBars:
    """Open windows ``{start: {symbol: accumulator}}`` and the watermark of one worker."""

    def __init__(self, size_ns: int, digest: Digest | None = None) -> None:
        self.size = size_ns
        self.windows: dict[int, dict[str, list[Any]]] = {}
        self.watermark = MIN_WATERMARK
        self.digest = Digest() if digest is None else digest
        self.late = 0
        self.ticks = 0

    def add_ticks(self, ticks: list[Any]) -> None:
        """Aggregate ``engine.records.Tick`` objects (attribute access)."""
        size, windows = self.size, self.windows
        late_start = self.watermark - size
        current = None
        bucket: dict[str, list[Any]] = {}
        late = 0
        for tick in ticks:
            ts = tick.ts
            start = ts - ts % size
            if start <= late_start:
                late += 1
                continue
            if start != current:
                current = start
                found = windows.get(start)
                if found is None:
                    found = windows[start] = {}
                bucket = found
            p = tick.price
            acc = bucket.get(tick.symbol)
            if acc is None:
                s = tick.size
                bucket[tick.symbol] = [ts, p, p, p, ts, p, s, p * s, 1]
                continue
            if ts < acc[0]:
                acc[0] = ts
                acc[1] = p
            if ts >= acc[4]:
                acc[4] = ts
                acc[5] = p
            if p > acc[2]:
                acc[2] = p
            elif p < acc[3]:  # high >= low, so a new high cannot be a new low
                acc[3] = p
            s = tick.size
            acc[6] += s
            acc[7] += p * s
            acc[8] += 1
        self.late += late
        self.ticks += len(ticks)

    def add_rows(
        self, rows: Iterable[tuple[str, int, float, float]], count: int | None = None
    ) -> None:
        """Aggregate ``(symbol, ts, price, size)`` tuples (a list, or ``zip`` over the
        columns of a ``Columns`` batch, with its ``count``): the same loop by unpacking."""
        size, windows = self.size, self.windows
        late_start = self.watermark - size
        current = None
        bucket: dict[str, list[Any]] = {}
        late = 0
        for symbol, ts, p, s in rows:
            start = ts - ts % size
            if start <= late_start:
                late += 1
                continue
            if start != current:
                current = start
                found = windows.get(start)
                if found is None:
                    found = windows[start] = {}
                bucket = found
            acc = bucket.get(symbol)
            if acc is None:
                bucket[symbol] = [ts, p, p, p, ts, p, s, p * s, 1]
                continue
            if ts < acc[0]:
                acc[0] = ts
                acc[1] = p
            if ts >= acc[4]:
                acc[4] = ts
                acc[5] = p
            if p > acc[2]:
                acc[2] = p
            elif p < acc[3]:
                acc[3] = p
            acc[6] += s
            acc[7] += p * s
            acc[8] += 1
        self.late += late
        self.ticks += len(rows) if count is None else count  # type: ignore[arg-type]

    def advance(self, watermark: int) -> None:
        """Move the watermark forward and emit the windows it closes."""
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        size = self.size
        due = [start for start in self.windows if start + size <= watermark]
        for start in sorted(due):
            self._emit(start)

    def finish(self) -> Digest:
        """End of input: emit every open window; returns the digest."""
        for start in sorted(self.windows):
            self._emit(start)
        return self.digest

    def _emit(self, start: int) -> None:
        end = start + self.size
        add = self.digest.add
        for symbol, a in self.windows.pop(start).items():
            volume = a[6]
            vwap = a[7] / volume if volume else float("nan")
            add(symbol, start, end, a[1], a[2], a[3], a[5], volume, vwap, a[8])
