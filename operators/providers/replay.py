"""``Replay``: an in-repo market-data provider that replays ticks and misbehaves on command.

It replays a ``Generator`` stream, a tick CSV (a path or a ``CsvTicks``) or a tuple of
``Tick``\\ s through ``stream_trades(instruments)``, the ``MarketDataProvider`` stream, so
tests and examples exercise provider sources without ``market_data_core``.

Timeline: tick ``i`` is *published* ``(max ts of ticks 0..i - ts of tick 0) / speed``
seconds after the provider was built (event time running ``speed`` times as fast as
processing time); with ``speed=None`` every tick is published at once (replay as fast as the
consumer takes them). A subscription starts with the ticks published in the last
``backfill_s`` seconds (``None``: from the first tick, the provider's whole history), sends
those at once and later ones when they are published, waking at most every
``resolution_s``. Instruments (``Instrument`` objects or symbols) filter by symbol; none
means every symbol.

Misbehaviour, in the config (``faults``, each fires once, when the replay first reaches
position ``at``, i.e. after ticks ``0..at-1``):

* ``Fail(at, down_s)``: the stream raises ``ProviderFailure``; subscriptions in the next
  ``down_s`` seconds fail at once (``None``: it never recovers); after that it works again.
* ``Stall(at, seconds)``: the stream sends nothing for ``seconds`` (``None``: until the
  subscriber gives up on it), then goes on.

And on command, from another process, through the file ``control`` (one word; a missing or
empty file means ``run``): ``fail`` (the stream raises at its next tick, subscriptions fail
while the file says so), ``stall`` (no tick until the word changes; looked at every
``poll_s``), ``run``. The word is read again only when the file's mtime or size changed.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from engine.errors import DagError
from engine.operator import Context
from engine.records import Tick
from operators.csvsource import CsvTicks
from operators.generator import Generator, generate
from operators.providers.protocol import ProviderFailure, ProviderHandle
from operators.providers.timing import Timing

__all__ = ["Fail", "Replay", "ReplayProvider", "Stall"]

log = logging.getLogger(__name__)

COMMANDS = ("run", "fail", "stall")


@dataclass(frozen=True)
class Fail:
    """At position ``at``, raise ``ProviderFailure``; refuse subscriptions for ``down_s``
    seconds after (``None``: for good)."""

    at: int
    down_s: float | None = 0.0


@dataclass(frozen=True)
class Stall:
    """At position ``at``, send nothing for ``seconds`` (``None``: until abandoned)."""

    at: int
    seconds: float | None = None


TickData = Generator | CsvTicks | str | tuple[Tick, ...]


@dataclass(frozen=True)
class Replay:
    """Config of a replay provider named ``name`` (see the module docstring)."""

    name: str
    ticks: TickData
    speed: float | None = None
    backfill_s: float | None = None
    faults: tuple[Fail | Stall, ...] = ()
    control: str | None = None
    poll_s: float = 0.05
    resolution_s: float = 0.001

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        ticks: Any = self.ticks
        if isinstance(ticks, os.PathLike):
            ticks = os.fspath(ticks)
        elif isinstance(ticks, list):
            ticks = tuple(ticks)
        object.__setattr__(self, "ticks", ticks)
        if isinstance(ticks, Generator) and ticks.count is None:
            problems.append("a replayed Generator needs a finite count, got count=None")
        elif not isinstance(ticks, Generator | CsvTicks | str | tuple):
            problems.append(
                "ticks must be a Generator, a CsvTicks, a CSV path or a tuple of Ticks, "
                f"got {type(ticks).__name__}"
            )
        if self.speed is not None and not (self.speed > 0 and math.isfinite(self.speed)):
            problems.append(f"speed must be > 0 or None (as fast as taken), got {self.speed!r}")
        if self.backfill_s is not None and not self.backfill_s >= 0:
            problems.append(f"backfill_s must be >= 0 seconds or None, got {self.backfill_s!r}")
        object.__setattr__(self, "faults", tuple(self.faults))
        for fault in self.faults:
            if not isinstance(fault, Fail | Stall):
                problems.append(f"faults must be Fail(...) or Stall(...), got {fault!r}")
            elif fault.at < 0:
                problems.append(f"{fault!r}: at must be >= 0")
        if self.control is not None:
            object.__setattr__(self, "control", os.fspath(self.control))
        if not self.poll_s > 0:
            problems.append(f"poll_s must be > 0 seconds, got {self.poll_s!r}")
        if not self.resolution_s > 0:
            problems.append(f"resolution_s must be > 0 seconds, got {self.resolution_s!r}")
        if problems:
            raise DagError(f"invalid Replay({self.name!r}) config: {'; '.join(problems)}")

    def provider(self, timing: Timing) -> ReplayProvider:
        """The live provider (a ``MarketDataProvider``), its timeline starting now."""
        return ReplayProvider(self, timing)

    def build(self, timing: Timing) -> ProviderHandle:
        return ProviderHandle(self.name, self.provider(timing))


def load_ticks(ticks: TickData) -> list[Tick]:
    """Every tick of a replay's data, in order."""
    if isinstance(ticks, tuple):
        return list(ticks)
    if isinstance(ticks, Generator):
        return generate(ticks)
    csv = CsvTicks(ticks) if isinstance(ticks, str) else ticks
    out: list[Tick] = []
    for item in csv.build(Context(node=f"replay of {csv.path}")).batches():
        if isinstance(item, list):
            out += item
    return out


class _Control:
    """The command word in a control file, read again only when the file changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.word = "run"

    def read(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.stamp, self.word = None, "run"
            return self.word
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self.stamp:
            with open(self.path, encoding="utf-8") as f:
                word = f.read().strip().lower() or "run"
            if word not in COMMANDS:
                raise DagError(
                    f"replay control file {self.path!r} says {word!r}; write one of {COMMANDS}"
                )
            self.stamp, self.word = stamp, word
        return self.word


class ReplayProvider:
    """A live replay provider. ``delivered`` counts the ticks it sent, ``subscriptions`` the
    subscriptions it accepted (both for tests)."""

    def __init__(self, config: Replay, timing: Timing) -> None:
        self.config = config
        self.name = config.name
        self.timing = timing
        self.ticks = load_ticks(config.ticks)
        self.origin = timing.now()
        self.publish = _publish_times(self.ticks, config.speed)
        self.faults = sorted(config.faults, key=lambda f: f.at)
        self.fired: set[int] = set()  # indices into self.faults
        self.down_until = -math.inf
        self.control = None if config.control is None else _Control(config.control)
        self.delivered = 0
        self.subscriptions = 0

    def _refuse_if_down(self) -> None:
        now = self.timing.now()
        if now < self.down_until:
            left = "for good" if math.isinf(self.down_until) else f"{self.down_until - now:g} s"
            raise ProviderFailure(f"replay provider {self.name!r} is down ({left} more)")
        if self.control is not None and self.control.read() == "fail":
            raise ProviderFailure(
                f"replay provider {self.name!r} is down: {self.control.path!r} says fail"
            )

    def start(self) -> int:
        """Where a subscription made now starts."""
        backfill = self.config.backfill_s
        if backfill is None or self.publish is None:
            return 0
        since = self.timing.now() - self.origin - backfill
        return bisect.bisect_left(self.publish, since)

    async def stream_trades(self, instruments: Iterable[Any]) -> AsyncIterator[Tick]:
        self._refuse_if_down()
        self.subscriptions += 1
        symbols = {getattr(i, "symbol", i) for i in instruments}
        ticks, publish, timing = self.ticks, self.publish, self.timing
        resolution = self.config.resolution_s
        pending = [k for k in range(len(self.faults)) if k not in self.fired]
        for i in range(self.start(), len(ticks)):
            while pending and self.faults[pending[0]].at <= i:
                k = pending.pop(0)
                if self.faults[k].at == i:
                    await self._fault(k, i)
            if publish is not None:
                due = self.origin + publish[i]
                now = timing.now()
                if due > now:
                    await timing.sleep(max(due - now, resolution))
            if self.control is not None:
                await self._obey(i)
            tick = ticks[i]
            if symbols and tick.symbol not in symbols:
                continue
            self.delivered += 1
            yield tick

    async def _fault(self, k: int, i: int) -> None:
        fault = self.faults[k]
        self.fired.add(k)
        if isinstance(fault, Fail):
            down = math.inf if fault.down_s is None else fault.down_s
            self.down_until = self.timing.now() + down
            log.info("replay provider %r: injected failure at tick %d", self.name, i)
            raise ProviderFailure(f"replay provider {self.name!r}: injected failure at tick {i}")
        log.info("replay provider %r: injected stall at tick %d", self.name, i)
        if fault.seconds is None:
            await asyncio.get_running_loop().create_future()  # until cancelled
        else:
            await self.timing.sleep(fault.seconds)

    async def _obey(self, i: int) -> None:
        assert self.control is not None
        word = self.control.read()
        while word == "stall":
            await self.timing.sleep(self.config.poll_s)
            word = self.control.read()
        if word == "fail":
            raise ProviderFailure(
                f"replay provider {self.name!r}: {self.control.path!r} says fail (at tick {i})"
            )


def _publish_times(ticks: list[Tick], speed: float | None) -> list[float] | None:
    """Seconds after the origin at which each tick is published; None when unpaced."""
    if speed is None or not ticks:
        return None
    first = ticks[0].ts
    high = first
    out = []
    scale = 1e-9 / speed
    for tick in ticks:
        if tick.ts > high:
            high = tick.ts
        out.append((high - first) * scale)
    return out
