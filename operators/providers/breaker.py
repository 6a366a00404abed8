"""A circuit breaker per provider: stop calling a failing provider, probe it again later.

States and transitions (``failures`` and ``cooldown_s`` from the ``Breaker`` config)::

    CLOSED    --`failures` consecutive failures-->      OPEN
    OPEN      --allow() once cooldown_s has passed-->    HALF_OPEN (one probe may go)
    HALF_OPEN --record_success()-->                      CLOSED
    HALF_OPEN --record_failure()-->                      OPEN (cooldown starts again)

A success in CLOSED resets the count of consecutive failures. While OPEN, and while the one
probe of HALF_OPEN is out, ``allow()`` says no. The breaker is a plain state machine on an
injected clock (``now()`` in seconds): it never waits itself; ``retry_in()`` tells the caller
how long until a probe may go.

Every transition is logged once (the provider's name, from and to, why), counted in the
owner's context as ``breaker_opens:<provider>``, ``breaker_half_opens:<provider>`` or
``breaker_closes:<provider>``, and the gauge ``breaker_state:<provider>`` holds the state's
number: 0 closed, 1 half-open, 2 open.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import DagError
from engine.operator import Context

__all__ = ["Breaker", "BreakerState", "CircuitBreaker"]

log = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    """The gauge value of each state."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


_COUNTER = {
    BreakerState.OPEN: "breaker_opens",
    BreakerState.HALF_OPEN: "breaker_half_opens",
    BreakerState.CLOSED: "breaker_closes",
}


@dataclass(frozen=True)
class Breaker:
    """Config of a provider's circuit breaker: open after ``failures`` consecutive failures,
    probe again ``cooldown_s`` seconds after opening."""

    failures: int = 3
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise DagError(f"Breaker failures must be an int, got {self.failures!r}")
        if self.failures < 1:
            raise DagError(f"Breaker failures must be at least 1, got {self.failures}")
        if not self.cooldown_s >= 0:
            raise DagError(f"Breaker cooldown_s must be >= 0 seconds, got {self.cooldown_s!r}")

    def build(self, provider: str, clock: Callable[[], float], ctx: Context) -> CircuitBreaker:
        return CircuitBreaker(provider, self, clock, ctx)


class CircuitBreaker:
    """The live breaker of one provider (see the module docstring)."""

    def __init__(
        self, provider: str, config: Breaker, clock: Callable[[], float], ctx: Context
    ) -> None:
        self.provider = provider
        self.config = config
        self.clock = clock
        self.ctx = ctx
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probing = False
        ctx.gauge(f"breaker_state:{provider}", float(self.state))

    def allow(self) -> bool:
        """May the provider be called now? Moves OPEN to HALF_OPEN once the cooldown is over
        (that call is the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.retry_in() > 0:
                return False
            self._move(BreakerState.HALF_OPEN, f"cooldown of {self.config.cooldown_s:g} s over")
        if self.probing:
            return False
        self.probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until ``allow()`` may say yes (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0 if not self.probing else self.config.cooldown_s
        return max(0.0, self.opened_at + self.config.cooldown_s - self.clock())

    def record_success(self) -> None:
        self.failures = 0
        if self.state is not BreakerState.CLOSED:
            self.probing = False
            self._move(BreakerState.CLOSED, "probe succeeded")

    def record_failure(self, reason: str = "failed") -> None:
        if self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.config.failures:
                self._open(f"{self.failures} consecutive failures, last: {reason}")
        elif self.state is BreakerState.HALF_OPEN:
            self._open(f"probe failed: {reason}")

    def _open(self, why: str) -> None:
        self.opened_at = self.clock()
        self.probing = False
        self.failures = 0
        self._move(BreakerState.OPEN, f"{why}; probing again in {self.config.cooldown_s:g} s")

    def _move(self, state: BreakerState, why: str) -> None:
        old, self.state = self.state, state
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(
            level,
            "provider %r: circuit breaker %s -> %s (%s)",
            self.provider,
            old.name.lower(),
            state.name.lower(),
            why,
        )
        self.ctx.count(f"{_COUNTER[state]}:{self.provider}")
        self.ctx.gauge(f"breaker_state:{self.provider}", float(state))
