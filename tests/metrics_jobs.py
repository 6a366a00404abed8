"""Test sinks for the metrics tests; importable by spawned workers."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.operator import Context, Sink, SinkLogic


@dataclass(frozen=True)
class Backlogged(Sink):
    """A sink whose (simulated) destination is always above its high watermark: every write
    begins a pause of ``pause`` seconds (slept), counted as ``pauses`` / ``paused_ns``, and
    reports the destination's queue depth as the number of writes so far."""

    pause: float = 0.005

    def build(self, ctx: Context) -> SinkLogic:
        return _BackloggedLogic(self.pause, ctx)


class _BackloggedLogic(SinkLogic):
    def __init__(self, pause: float, ctx: Context) -> None:
        self.pause = pause
        self.ctx = ctx
        self.records = 0
        self.writes = 0

    def write(self, batch: list[Any]) -> None:
        started = time.perf_counter_ns()
        self.ctx.count("pauses")
        if self.pause:
            time.sleep(self.pause)
        self.ctx.count("paused_ns", time.perf_counter_ns() - started)
        self.writes += 1
        self.ctx.gauges["queue_depth"] = self.writes
        self.records += len(batch)

    def close(self) -> Any:
        return self.records


@dataclass(frozen=True)
class Deaf(Sink):
    """A sink whose first write ignores SIGTERM, touches ``marker`` and then hangs (for up to
    a minute), so a teardown waits out its grace."""

    marker: str

    def build(self, ctx: Context) -> SinkLogic:
        return _DeafLogic(self.marker)


class _DeafLogic(SinkLogic):
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def write(self, batch: list[Any]) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(self.marker).touch()
        time.sleep(60)


@dataclass(frozen=True)
class GaugeOnClose(Sink):
    """A sink that sets the gauge ``closed`` to 1 in its close()."""

    def build(self, ctx: Context) -> SinkLogic:
        return _GaugeOnCloseLogic(ctx)


class _GaugeOnCloseLogic(SinkLogic):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def write(self, batch: list[Any]) -> None:
        pass

    def close(self) -> None:
        self.ctx.gauges["closed"] = 1.0
