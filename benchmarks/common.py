"""What every benchmark shares: the workload, the row format, the machine description.

The workload is the bars job of ``engine.bars`` on the synthetic generator: ``symbols``
symbols (1,000), ``ticks`` ticks 10 us of event time apart, 1 s tumbling windows,
watermarks ``lateness`` (2 s, the bars command's default) behind the newest tick, no
disorder, so no tick is late and every engine must produce the same bars.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine import numbers, strings
from operators import aggregations, csvparse, tumbling
from operators.generator import Generator
from partitioning import DEFAULT_MAX_PARALLELISM, keyhash

SECOND_NS = 1_000_000_000
KEY_GROUPS = DEFAULT_MAX_PARALLELISM  # Stream.key_by's default: baselines route as ringflow does


class ChecksumMismatch(RuntimeError):
    """An engine's bars differ from the single-process run's: its numbers mean nothing."""


@dataclass(frozen=True)
class Workload:
    """The bars job's input and window; ``generator()`` is the source every engine runs."""

    ticks: int = 4_000_000
    symbols: int = 1000
    seed: int = 0
    window_ns: int = SECOND_NS
    lateness_ns: int = 2 * SECOND_NS
    batch: int = Generator.batch  # ticks per source batch

    def generator(self, **overrides: Any) -> Generator:
        params: dict[str, Any] = {
            "symbols": self.symbols,
            "count": self.ticks,
            "seed": self.seed,
            "lateness_ns": self.lateness_ns,
            "batch": self.batch,
        }
        params.update(overrides)
        return Generator(**params)


def throughput_row(
    engine: str,
    replicas: int,
    ticks: int,
    seconds: float,
    checksum: str,
    *,
    sources: int,
    wall_s: float,
    cpu_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A scaling row: the keys the issue fixes first, then the source replicas, the wall
    time, CPU us per tick (when the engine's CPU time ``cpu_s`` is known) and whatever the
    engine adds."""
    row: dict[str, Any] = {
        "engine": engine,
        "replicas": replicas,
        "ticks": ticks,
        "seconds": round(seconds, 4),
        "ticks_per_s": round(ticks / seconds) if seconds > 0 else 0,
        "checksum": checksum,
        "sources": sources,
        "wall_s": round(wall_s, 4),
    }
    if cpu_s is not None:
        row["cpu_us_per_tick"] = round(cpu_s / ticks * 1e6, 3) if ticks else 0
    row.update(extra)
    return row


@contextlib.contextmanager
def running(procs: list[Any], what: str, join_s: float) -> Iterator[None]:
    """Start a baseline's processes; after the body, join each (a non-zero exit is an
    error); on every way out, kill any still alive."""
    try:
        for p in procs:
            p.start()
        yield
        for p in procs:
            p.join(join_s)
            if p.exitcode != 0:
                raise RuntimeError(f"{what}: process {p.name} exited with {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(join_s)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's or ``taskset``'s limit included),
    which is what the benchmarks size their replicas and pick their targets by."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(module: str = "benchmarks") -> dict[str, Any]:
    """Where and when the numbers were measured (printed first, also as a JSON row), and
    the command (``python -m <module>`` and this process's arguments)."""
    import msgspec

    return {
        "bench": "machine",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": usable_cpus(),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "msgspec": msgspec.__version__,
        "native_routing": keyhash.NATIVE,
        "native_strings": strings.NATIVE,
        "native_numbers": numbers.NATIVE,
        "native_bounds": tumbling.NATIVE,
        "native_ohlcv": aggregations.NATIVE,
        "native_csv": csvparse.NATIVE,
        "load_avg": load_average(),
        "command": " ".join(["python", "-m", module, *sys.argv[1:]]),
    }


def read_status_kb(pid: int, *fields: str) -> dict[str, int] | None:
    """``kB`` fields of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...), read at once;
    None once the process is gone (or lacks one of them)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in fields:
                    found[name] = int(value.split()[0])
    except (OSError, ValueError):
        return None
    return found if len(found) == len(fields) else None
