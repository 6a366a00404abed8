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
the floor a single core sets. ``fold_tick`` is its update as a function and ``bar_fields``
its bar, for the bytewax baseline, which folds one tick per call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from benchmarks.checksum import Digest

MIN_WATERMARK = -(2**63)
# Accumulator layout: [open_ts, open, high, low, close_ts, close, volume, pv, count].


class HandBars:
    """Open windows ``{start: {symbol: accumulator}}`` and the watermark of one worker."""

    def __init__(self, size_ns: int) -> None:
        self.size = size_ns
        self.windows: dict[int, dict[str, list[Any]]] = {}
        self.watermark = MIN_WATERMARK
        self.digest = Digest()
        self.late = 0
        self.ticks = 0

    def add_rows(self, rows: Iterable[tuple[str, int, float, float]], count: int) -> None:
        """Aggregate ``count`` ``(symbol, ts, price, size)`` tuples (a list, or ``zip``
        over the columns of a ``Columns`` batch)."""
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
        self.ticks += count

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
        for symbol, acc in self.windows.pop(start).items():
            add(*bar_fields(symbol, start, end, acc))


def fold_tick(acc: list[Any], ts: int, p: float, s: float) -> list[Any]:
    """The loop's update of one accumulator, as a function, for engines that fold a tick
    per call (bytewax); ``acc`` starts as ``[]``. Keep it the same as the loop above."""
    if not acc:
        return [ts, p, p, p, ts, p, s, p * s, 1]
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
    return acc


def bar_fields(symbol: str, start: int, end: int, acc: list[Any]) -> tuple[Any, ...]:
    """The digest's fields of the bar an accumulator makes (vwap NaN for no volume)."""
    volume = acc[6]
    vwap = acc[7] / volume if volume else float("nan")
    return (symbol, start, end, acc[1], acc[2], acc[3], acc[5], volume, vwap, acc[8])
