"""Prometheus metrics, served by the coordinator at ``http://127.0.0.1:<port>/metrics``.

Workers do no HTTP: they write counters into the job's stats block and their channels'
headers (see ``engine.stats`` and ``engine.ring``); on every scrape a custom collector reads
those shared counters, so a scrape costs the workers nothing and counters stay monotonic
(they are the workers' own running totals; rows outlive the workers that wrote them).

Busy / idle / backpressured follow Flink's split of a task's time: idle is time waiting for
input, backpressured is time waiting for downstream credit, busy is the rest.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.batch import MIN_WATERMARK
from engine.channel import read_stats

if TYPE_CHECKING:
    from engine.coordinator import Coordinator

LABELS = ["job", "node", "replica"]
JOB_STATES = {"starting": 0, "running": 1, "stopping": 2, "done": 3, "failed": 4}


class JobCollector(Collector):
    """Reads one job's shared counters on each scrape."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._last: dict[tuple[str, int], tuple[float, float]] = {}  # (t, backpressured_s)
        self._reading = threading.Lock()  # held by a scrape throughout: one at a time
        self._closed = False

    def close(self) -> None:
        """After this returns no scrape reads the job's shared memory, which the teardown
        then unmaps: one in flight (its request thread outlives the server's shutdown)
        finishes first, and any later one answers with no families."""
        with self._reading:
            self._closed = True

    def collect(self) -> Iterator[Any]:
        with self._reading:
            families = [] if self._closed else list(self._families())
        yield from families

    def _families(self) -> Iterator[Any]:
        c = self.coordinator
        job = c.dag.name
        rows = c.status()
        now = time.time()

        def family(kind: type, name: str, doc: str, labels: list[str] = LABELS) -> Any:
            return kind(name, doc, labels=labels)

        records_in = family(
            CounterMetricFamily,
            "ringflow_records_in",
            "Records taken from inputs (sources: records produced).",
        )
        records_out = family(
            CounterMetricFamily,
            "ringflow_records_out",
            "Records emitted to outputs, side outputs included.",
        )
        bytes_out = family(
            CounterMetricFamily,
            "ringflow_bytes_out",
            "Encoded batch bytes sent to downstream channels.",
        )
        busy = family(
            CounterMetricFamily,
            "ringflow_busy_seconds",
            "Time neither idle nor backpressured: running logic and framing.",
        )
        idle = family(CounterMetricFamily, "ringflow_idle_seconds", "Time waiting for input.")
        bp = family(
            CounterMetricFamily,
            "ringflow_backpressured_seconds",
            "Time blocked waiting for downstream credit (a full channel).",
        )
        late = family(
            CounterMetricFamily,
            "ringflow_late_records",
            "Records behind the watermark when they arrived (sent to the late output).",
        )
        lag = family(
            GaugeMetricFamily,
            "ringflow_watermark_lag_seconds",
            "Wall-clock time minus the replica's watermark (NaN before the first).",
        )
        beat = family(
            GaugeMetricFamily,
            "ringflow_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
        )
        up = family(
            GaugeMetricFamily,
            "ringflow_worker_up",
            "1 while the worker process is alive, 0 after it exited.",
        )
        paused = family(
            CounterMetricFamily,
            "ringflow_sink_paused_seconds",
            "Time a sink held its input back because its destination (a store's write queue) "
            "was above its high watermark.",
        )
        pauses = family(
            CounterMetricFamily,
            "ringflow_sink_pauses",
            "Pauses a sink began because its destination was above its high watermark.",
        )
        depth = family(
            GaugeMetricFamily,
            "ringflow_sink_queue_depth",
            "Queue depth of a sink's destination, as last reported (0 if none).",
        )
        ratio = family(
            GaugeMetricFamily,
            "ringflow_backpressured_ratio",
            "Fraction of the time since the previous scrape spent backpressured "
            "(for autoscalers: near 1 means downstream is the bottleneck).",
        )
        for row in rows:
            labels = [job, row["node"], str(row["replica"])]
            records_in.add_metric(labels, row["records_in"])
            records_out.add_metric(labels, row["records_out"])
            bytes_out.add_metric(labels, row["bytes_out"])
            busy.add_metric(labels, row["busy_s"])  # (never goes down: Coordinator.status)
            idle.add_metric(labels, row["idle_s"])
            bp.add_metric(labels, row["backpressured_s"])
            late.add_metric(labels, row["late"])
            wm = row["watermark"]
            lag.add_metric(labels, now - wm / 1e9 if wm > MIN_WATERMARK else math.nan)
            age = row["heartbeat_age_s"]
            beat.add_metric(labels, age if age is not None else math.nan)
            up.add_metric(labels, 1.0 if row["alive"] else 0.0)
            paused.add_metric(labels, row["paused_s"])
            pauses.add_metric(labels, row["pauses"])
            depth.add_metric(labels, row["queue_depth"])
            ratio.add_metric(
                labels, self._ratio((row["node"], row["replica"]), row["backpressured_s"])
            )
        yield from (records_in, records_out, bytes_out, busy, idle, bp, late, lag, beat, up)
        yield from (paused, pauses, depth, ratio)
        yield from self._logic(job, rows)
        yield self._channels(job)
        yield from self._job(job)

    def _logic(self, job: str, rows: list[dict[str, Any]]) -> Iterator[Any]:
        """The logic's own named counters and gauges (dedupe, throttle, providers...), as
        workers last reported them (every half second while they change)."""
        counters = CounterMetricFamily(
            "ringflow_logic_counter",
            "A node's own named counter (label `counter`), e.g. duplicates, throttled, "
            "bad_rows, provider failovers; reported by workers every 0.5 s.",
            labels=[*LABELS, "counter"],
        )
        gauges = GaugeMetricFamily(
            "ringflow_logic_gauge",
            "A node's own named gauge (label `gauge`), e.g. a circuit breaker's state.",
            labels=[*LABELS, "gauge"],
        )
        for row in rows:
            labels = [job, row["node"], str(row["replica"])]
            for name, value in sorted(row["counters"].items()):
                counters.add_metric([*labels, name], value)
            for name, value in sorted(row["gauges"].items()):
                gauges.add_metric([*labels, name], value)
        yield counters
        yield gauges

    def _ratio(self, key: tuple[str, int], backpressured: float) -> float:
        now = time.monotonic()  # (under _reading, as collect() runs)
        last = self._last.get(key)
        self._last[key] = (now, backpressured)
        if last is None or now <= last[0]:
            return 0.0
        return min(1.0, max(0.0, (backpressured - last[1]) / (now - last[0])))

    def _channels(self, job: str) -> Any:
        slots = GaugeMetricFamily(
            "ringflow_channel_slots_in_use",
            "Slots published and not yet released on an input channel; at the channel's "
            "slot count (credit limit) the upstream is blocked.",
            labels=[*LABELS, "upstream"],
        )
        c = self.coordinator
        # While the job starts, its channels are being made: those that exist so far.
        for link, channel in zip(c.plan.links, list(c.channels), strict=False):
            stats = read_stats(channel.ring)
            slots.add_metric(
                [job, link.down, str(link.down_replica), f"{link.up}[{link.up_replica}]"],
                stats.in_use,
            )
        return slots

    def _job(self, job: str) -> Iterator[Any]:
        c = self.coordinator
        restarts = CounterMetricFamily(
            "ringflow_worker_restarts",
            "Workers restarted by the coordinator. ringflow fails a job on a worker's death "
            "rather than restarting it, so this stays 0.",
            labels=["job"],
        )
        restarts.add_metric([job], 0)
        state = GaugeMetricFamily(
            "ringflow_job_state",
            "Job state: 0 starting, 1 running, 2 stopping, 3 done, 4 failed.",
            labels=["job"],
        )
        state.add_metric([job], JOB_STATES[c.state()])
        yield restarts
        yield state


class MetricsServer:
    """prometheus-client's HTTP server on 127.0.0.1, in a daemon thread of the coordinator."""

    def __init__(self, coordinator: Coordinator, port: int) -> None:
        self.registry = CollectorRegistry()
        self.collector = JobCollector(coordinator)
        self.registry.register(self.collector)
        self.port = port
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Bind and serve; ``port`` is then the one bound (a free one, for port 0)."""
        self._server, self._thread = start_http_server(
            self.port, addr="127.0.0.1", registry=self.registry
        )
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.collector.close()
