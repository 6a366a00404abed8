"""What a finished job reports: per-node counts, counters, sink results and elapsed time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeReport:
    """Totals over a node's replicas. ``counters`` are the logic's own (``late``, ...). ``timing``
    sums seconds over replicas: ``cpu_s`` (process CPU time after startup), ``busy_s``
    (wall time neither idle nor backpressured), ``logic_s`` (CPU time
    inside the node's own logic; cpu minus logic is the engine's cost), ``idle_s``,
    ``backpressured_s``."""

    records_in: int = 0
    records_out: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        records_in: int,
        records_out: int,
        counters: dict[str, int],
        timing: dict[str, float] | None = None,
    ) -> None:
        self.records_in += records_in
        self.records_out += records_out
        for name, n in counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        for name, seconds in (timing or {}).items():
            self.timing[name] = self.timing.get(name, 0.0) + seconds


@dataclass
class JobResult:
    """``sinks[name]`` lists each replica's ``close()`` result, by replica."""

    job: str
    seconds: float
    nodes: dict[str, NodeReport]
    sinks: dict[str, list[Any]]
    stopped: bool = False

    def collected(self, sink: str) -> list[Any]:
        """All records a collecting sink received, replicas concatenated in replica order."""
        out: list[Any] = []
        for part in self.sinks[sink]:
            out.extend(part)
        return out

    def counter(self, name: str) -> int:
        """A logic counter (``late``, ``bad_rows``, ...) summed over every node."""
        return sum(n.counters.get(name, 0) for n in self.nodes.values())

    def summary(self) -> str:
        lines = [
            f"job {self.job!r} {'stopped' if self.stopped else 'finished'} in {self.seconds:.2f} s"
        ]
        for name, node in self.nodes.items():
            extra = "".join(f", {k}={v}" for k, v in sorted(node.counters.items()))
            lines.append(f"  {name}: in={node.records_in} out={node.records_out}{extra}")
        return "\n".join(lines)
