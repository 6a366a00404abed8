"""``OverlapFilter``: one tick stream out of providers that overlap after a failover.

A provider taken over mid-stream usually resends some of what the previous one sent (a
snapshot, a backfill, its whole history). The filter keeps the *identity*
``(symbol, ts, price, size)`` of every tick it passed whose event time is within
``horizon_ns`` of the highest event time passed so far (``high``), and decides per tick:

* identity already passed -> ``DUPLICATE`` (dropped);
* ``ts < high - horizon_ns`` while *catching up* -> ``STALE`` (dropped): after ``switch()``
  the new provider catches up until it sends a tick newer than ``high`` at the switch; what
  it sends that is older than the identity window cannot be told from a resent tick, and it
  is behind the watermark already sent (when ``horizon_ns >= lateness``);
* otherwise -> ``PASS``. Outside catch-up, a tick older than the window is passed as it is:
  it is late, and downstream operators deal with late ticks (a window operator's late
  output), exactly as without a failover.

So a stream that switches providers, each new one restarting anywhere at or before where the
old one stopped, comes out equal to the stream without switches, as long as every tick is
at most ``horizon_ns`` behind the ticks before it. Two genuinely distinct trades with the
same identity collapse into one, with or without a failover. ``high`` never decreases, so
watermarks derived from it never go back.

Memory is bounded: an identity is forgotten once ``high`` passes its time plus
``horizon_ns`` (a heap on event time), and beyond ``max_ids`` the oldest are forgotten early
(counted by the caller as ``dedupe_evicted``).
"""

from __future__ import annotations

import heapq
from typing import Any

from engine.records import Tick

__all__ = ["DUPLICATE", "PASS", "STALE", "OverlapFilter"]

PASS, DUPLICATE, STALE = 0, 1, 2
MIN_TS = -(2**63)


class OverlapFilter:
    def __init__(self, horizon_ns: int, max_ids: int = 1_000_000) -> None:
        self.horizon_ns = horizon_ns
        self.max_ids = max_ids
        self.high = MIN_TS  # highest event time passed
        self.evicted = 0  # identities forgotten early, ever
        self._seen: dict[tuple[Any, ...], int] = {}
        self._heap: list[tuple[int, tuple[Any, ...]]] = []
        self._catch_up: int | None = None  # high at the last switch, until passed

    @property
    def catching_up(self) -> bool:
        return self._catch_up is not None

    def switch(self) -> None:
        """A new provider takes over: its ticks up to the current ``high`` are suspect."""
        if self.high != MIN_TS:
            self._catch_up = self.high

    def admit(self, tick: Tick) -> int:
        """``PASS`` (and remember it), ``DUPLICATE`` or ``STALE``."""
        ts = tick.ts
        floor = self.high - self.horizon_ns
        if ts < floor:
            return STALE if self._catch_up is not None else PASS
        ident = (tick.symbol, ts, tick.price, tick.size)
        seen = self._seen
        if ident in seen:
            return DUPLICATE
        seen[ident] = ts
        heap = self._heap
        heapq.heappush(heap, (ts, ident))
        if ts > self.high:
            self.high = ts
            if self._catch_up is not None and ts > self._catch_up:
                self._catch_up = None
            floor = ts - self.horizon_ns
            while heap and heap[0][0] < floor:
                del seen[heapq.heappop(heap)[1]]
        if len(seen) > self.max_ids:
            del seen[heapq.heappop(heap)[1]]
            self.evicted += 1
        return PASS
