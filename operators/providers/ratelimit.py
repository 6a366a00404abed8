"""Shared request budgets: several sources (or providers) drawing on one token bucket.

A *request* is one call into a provider's API: a subscription, a resubscription after a
failure, a probe. ``RateBudget(name, rate, burst)`` allows ``burst`` requests at once and
``rate`` per second after that. Every source whose config names the same budget draws on the
same bucket:

* ``path=None``: shared by every source in the same process (``engine.testing.run_inline``,
  or several providers of one source). The bucket lives while a source holds it.
* ``path="/some/file"``: shared across processes (each source runs in its own worker)
  through that file, under ``fcntl.flock``. The lock is held for one read-modify-write of
  16 bytes, so contention costs microseconds; the kernel carries the synchronisation, no
  shared-memory ordering is involved. Every user of a file budget must read the same clock:
  ``REAL_TIME``'s monotonic clock is system-wide; a virtual clock is per process.

Reservations: ``reserve(cost)`` takes the tokens at once, going into debt if need be, and
returns how long the caller must wait before making the request (0 when the bucket had
them). Debt makes waiters queue fairly in arrival order without a second visit to the bucket.

File layout (little-endian, created on first use)::

    offset  size  field
    0       8     tokens   float64  tokens in the bucket (negative: debt)
    8       8     updated  float64  clock reading of the last reservation (seconds)
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import DagError

__all__ = ["RateBudget", "TokenBucket"]

_STATE = struct.Struct("<dd")


@dataclass(frozen=True)
class RateBudget:
    """Config of a shared request budget (see the module docstring)."""

    name: str
    rate: float
    burst: float = 1.0
    path: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            problems.append(f"rate must be > 0 requests per second, got {self.rate!r}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            problems.append(f"burst must be >= 1 request, got {self.burst!r}")
        if problems:
            raise DagError(f"invalid RateBudget({self.name!r}): {'; '.join(problems)}")
        if self.path is not None:
            object.__setattr__(self, "path", os.fspath(self.path))

    def open(self, clock: Callable[[], float]) -> TokenBucket:
        """The live bucket, shared with every other holder of this budget (see above)."""
        if self.path is not None:
            return TokenBucket(self, clock, _FileState(self.path, self.burst, clock))
        state = _SHARED.get(self.name)
        if state is None:
            state = _MemoryState(self, clock())
            _SHARED[self.name] = state
        elif state.budget != self:
            raise DagError(
                f"rate budget {self.name!r} is already in use in this process as "
                f"{state.budget!r}; sources that share a budget must give it the same rate "
                f"and burst, got {self!r}"
            )
        return TokenBucket(self, clock, state)


class _MemoryState:
    def __init__(self, budget: RateBudget, now: float) -> None:
        self.budget = budget
        self.tokens = budget.burst
        self.updated = now

    def update(self, fn: Callable[[float, float], tuple[float, float]]) -> None:
        self.tokens, self.updated = fn(self.tokens, self.updated)


_SHARED: weakref.WeakValueDictionary[str, _MemoryState] = weakref.WeakValueDictionary()


class _FileState:
    def __init__(self, path: str, burst: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.burst = burst
        self.clock = clock

    def update(self, fn: Callable[[float, float], tuple[float, float]]) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, _STATE.size, 0)
            if len(raw) == _STATE.size:
                tokens, updated = _STATE.unpack(raw)
            else:  # a new file
                tokens, updated = self.burst, self.clock()
            os.pwrite(fd, _STATE.pack(*fn(tokens, updated)), 0)
        finally:
            os.close(fd)  # releases the lock


class TokenBucket:
    """A holder's view of a shared budget."""

    def __init__(
        self,
        budget: RateBudget,
        clock: Callable[[], float],
        state: _MemoryState | _FileState,
    ) -> None:
        self.budget = budget
        self.clock = clock
        self._state = state  # a strong reference keeps a memory budget alive

    def reserve(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens now; return the seconds to wait before the request goes."""
        rate, burst, now = self.budget.rate, self.budget.burst, self.clock()
        wait = 0.0

        def take(tokens: float, updated: float) -> tuple[float, float]:
            nonlocal wait
            tokens = min(burst, tokens + max(0.0, now - updated) * rate) - cost
            wait = -tokens / rate if tokens < 0 else 0.0
            return tokens, max(now, updated)

        self._state.update(take)
        return wait
