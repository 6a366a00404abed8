"""Prometheus metrics of running jobs, scraped over HTTP as Prometheus would.

Every wait is a poll with a deadline; a scrape has a 2 s timeout. Ports: bind port 0, read
the port the kernel chose, close, hand it to the job (the window for a clash is tiny).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from jobs import MarkBuilt, Numbered, RunningSum, Stall
from metrics_jobs import Backlogged, Deaf, GaugeOnClose
from prometheus_client.parser import text_string_to_metric_families

import engine.metrics
from engine import Dag, JobFailed, RingflowError, launch
from engine.coordinator import Coordinator, Settings, WorkerHandle
from engine.metrics import JobCollector

WAIT = 30.0  # bound for a loaded 2-core machine; the tests finish far sooner
ROOT = Path(__file__).resolve().parent.parent
PER_REPLICA = {"job", "node", "replica"}
JOB_LEVEL = {"ringflow_worker_restarts", "ringflow_job_state"}  # labelled by job only
EXTRA_LABELS = {
    "ringflow_channel_slots_in_use": {"upstream"},
    "ringflow_logic_counter": {"counter"},
    "ringflow_logic_gauge": {"gauge"},
}


def _families_in_source() -> set[str]:
    """Every family engine/metrics.py defines, so one added there is checked here too."""
    source = Path(engine.metrics.__file__).read_text()
    return set(re.findall(r'"(ringflow_[a-z_]+)"', source))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def key(record: Any) -> Any:
    return record[0]


class Scrape:
    """One scrape, parsed: families by name, samples by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.at = time.monotonic()
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        found = [v for (n, ls), v in self.samples.items() if n == name and want <= ls]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def counters(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            k: v
            for k, v in self.samples.items()
            if self.families[k[0].removesuffix("_total")].type == "counter"
        }


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
        assert response.status == 200
        return Scrape(response.read().decode())


def poll(port: int, until: Any, what: str, within: float = WAIT) -> tuple[Scrape, list[Scrape]]:
    """Scrape until ``until(scrape)``; the matching scrape and every scrape taken. Refused
    connections, and scrapes before the workers are in them (the server starts before
    the workers do), count as not yet."""
    deadline = time.monotonic() + within
    seen: list[Scrape] = []
    while True:
        try:
            s = scrape(port)
        except (ConnectionError, TimeoutError, urllib.error.URLError):
            s = None
        if s is not None and s.families["ringflow_worker_up"].samples:
            seen.append(s)
            if until(s):
                return s, seen
        assert time.monotonic() < deadline, f"no scrape showed {what} within {within} s"
        time.sleep(0.05)


def assert_monotonic(scrapes: list[Scrape]) -> None:
    for before, after in itertools.pairwise(scrapes):
        now = after.counters()
        for sample, value in before.counters().items():
            assert now[sample] >= value, f"counter went down: {sample}: {value} -> {now[sample]}"


def assert_port_closed(port: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, f"port {port} still accepts connections"
        time.sleep(0.05)


def test_metrics_of_a_running_job(tmp_path: Path) -> None:
    """Families, HELP and labels; counters that move and never go back; sink pause metrics;
    workers up and job running; the port closes with the job."""
    dag = Dag("flow")
    # A batch every 0.3 s: every worker goes idle between batches and publishes its counters.
    src = dag.source("src", Numbered(0, forever=True, batch=20, pause_every=1, pause=0.3))
    summed = src.key_by(key).apply("sum", RunningSum(), parallelism=2)
    summed.sink("out", Backlogged(pause=0.002))
    port = _free_port()
    with launch(dag, metrics_port=port, heartbeat_timeout=WAIT) as job:
        first, scrapes = poll(
            port,
            lambda s: (
                s.get("ringflow_job_state", job="flow") == 1
                and s.get("ringflow_records_in_total", node="out") > 0
            ),
            "the job running with records at the sink",
        )
        for name in _families_in_source():
            family = first.families.get(name)
            assert family is not None, f"{name} is not exported"
            assert family.documentation, f"{name} has no HELP text"
            if family.type == "counter":
                assert all(s.name == f"{name}_total" for s in family.samples), name
            expected = {"job"} if name in JOB_LEVEL else PER_REPLICA | EXTRA_LABELS.get(name, set())
            for sample in family.samples:
                assert set(sample.labels) == expected, (name, sample.labels)
                assert sample.labels["job"] == "flow"
        workers = {("src", "0"), ("sum", "0"), ("sum", "1"), ("out", "0")}
        for name in ("ringflow_records_in", "ringflow_busy_seconds", "ringflow_worker_up"):
            samples = first.families[name].samples
            assert {(s.labels["node"], s.labels["replica"]) for s in samples} == workers, name
        assert all(s.value == 1 for s in first.families["ringflow_worker_up"].samples)
        assert first.get("ringflow_worker_restarts_total") == 0
        edges = {
            (s.labels["upstream"], s.labels["node"], s.labels["replica"])
            for s in first.families["ringflow_channel_slots_in_use"].samples
        }
        assert edges == {
            ("src[0]", "sum", "0"),
            ("src[0]", "sum", "1"),
            ("sum[0]", "out", "0"),
            ("sum[1]", "out", "0"),
        }

        def moved(s: Scrape) -> bool:
            return (
                s.get("ringflow_records_out_total", node="src")
                > first.get("ringflow_records_out_total", node="src")
                and s.get("ringflow_records_in_total", node="out")
                > first.get("ringflow_records_in_total", node="out")
                and sum(s.get("ringflow_records_out_total", node="sum", replica=r) for r in "01")
                > sum(first.get("ringflow_records_out_total", node="sum", replica=r) for r in "01")
                and s.get("ringflow_sink_pauses_total", node="out") >= 2
            )

        later, more = poll(port, moved, "records flowing and sink pauses counted")
        scrapes += more
        assert later.get("ringflow_sink_paused_seconds_total", node="out") > 0
        assert later.get("ringflow_sink_queue_depth", node="out") >= 1
        assert later.get("ringflow_bytes_out_total", node="src") > 0
        assert later.get("ringflow_job_state") == 1
        assert_monotonic(scrapes)
        job.stop()
        result = job.wait(WAIT)
    assert result.stopped
    assert_port_closed(port)


def test_stalled_sink_shows_backpressure_at_the_credit_limit(tmp_path: Path) -> None:
    release = tmp_path / "release"
    dag = Dag("stalled")
    dag.source("src", Numbered(20_000, batch=50)).sink("out", Stall(str(release)))
    port = _free_port()
    with launch(
        dag, slots=4, slot_size=1024, heartbeat_timeout=WAIT, linger=0.0, metrics_port=port
    ) as job:
        full, scrapes = poll(
            port,
            lambda s: s.get("ringflow_channel_slots_in_use", node="out", upstream="src[0]") == 4,
            "the channel at its credit limit",
        )

        def a_second_later(s: Scrape) -> bool:
            return s.at - full.at >= 1.0 and s.get(
                "ringflow_backpressured_seconds_total", node="src"
            ) > full.get("ringflow_backpressured_seconds_total", node="src")

        later, more = poll(port, a_second_later, "the source's backpressured time rising")
        scrapes += more
        held = [s.get("ringflow_channel_slots_in_use", node="out") for s in scrapes]
        assert max(held) == 4 and held[-1] == 4, held  # never past the credit limit
        assert later.get("ringflow_records_out_total", node="src") < 20_000  # held back
        assert later.get("ringflow_records_in_total", node="out") < 20_000

        # Flink's reading: the upstream is backpressured, the first node after it is busy.
        span = later.at - full.at

        def rate(name: str, node: str) -> float:
            return (later.get(name, node=node) - full.get(name, node=node)) / span

        assert rate("ringflow_backpressured_seconds_total", "src") > 0.4
        assert rate("ringflow_busy_seconds_total", "out") > 0.6
        assert rate("ringflow_idle_seconds_total", "out") < 0.2
        assert max(s.get("ringflow_backpressured_ratio", node="src") for s in more) > 0.5
        assert later.get("ringflow_heartbeat_age_seconds", node="out") > 0.5  # stuck in write
        assert later.get("ringflow_worker_up", node="out") == 1
        assert_monotonic(scrapes)
        release.touch()
        result = job.wait(WAIT)
    assert result.sinks["out"] == [20_000]
    assert_port_closed(port)


def test_operator_and_sink_counters_refresh_while_records_flow() -> None:
    dag = Dag("steady")
    src = dag.source("src", Numbered(0, forever=True, batch=100, pause_every=1, pause=0.001))
    src.apply("sum", RunningSum()).sink("out", Backlogged(pause=0.0))
    port = _free_port()
    with launch(dag, metrics_port=port, heartbeat_timeout=WAIT) as job:
        poll(
            port,
            lambda s: s.get("ringflow_records_in_total", node="out") > 500,
            "records at the sink",
        )
        try:
            poll(
                port,
                lambda s: (
                    s.get("ringflow_bytes_out_total", node="sum") > 0
                    and s.get("ringflow_sink_queue_depth", node="out") > 0
                ),
                "the operator's bytes out and the sink's queue depth",
            )  # (the job runs until stopped below: they refresh while records flow)
        finally:
            job.stop()
            job.wait(WAIT)


def test_a_taken_metrics_port_fails_the_job(tmp_path: Path) -> None:
    marker = tmp_path / "built"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dag = Dag("taken")
        dag.source("src", Numbered(1_000)).sink("out", MarkBuilt(str(marker)))
        started = time.monotonic()
        job = launch(dag, metrics_port=port)
        with pytest.raises(JobFailed) as info:
            job.wait(WAIT)
        assert f"could not start: cannot serve metrics on 127.0.0.1:{port}" in str(info.value)
        assert "give launch(metrics_port=...) a free port" in str(info.value)
        assert not marker.exists()  # refused before any worker was started
        assert time.monotonic() - started < WAIT


def test_metrics_on_any_free_port_say_which() -> None:
    dag = Dag("any-port")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002)).sink(
        "out", Backlogged(pause=0.0)
    )
    job = launch(dag, metrics_port=0)
    try:
        port = job.metrics_port  # known as soon as the coordinator bound it
        assert port is not None and port > 0
        scrape(port)  # answers at once, workers or not (an HTTP error would raise)
        poll(port, lambda s: s.get("ringflow_worker_up", node="src") == 1, "the source up")
    finally:
        job.stop()
        job.wait(WAIT)


@pytest.mark.parametrize("port", [-1, 65536, "9100", 1.5])
def test_a_metrics_port_that_cannot_be_one_is_refused_before_anything_starts(port: Any) -> None:
    dag = Dag("bad-port")
    dag.source("src", Numbered(10)).sink("out", Backlogged(pause=0.0))
    with pytest.raises(
        RingflowError, match=f"metrics_port must be an int in 0..65535, got {port!r}"
    ):
        launch(dag, metrics_port=port)


def test_the_cli_reports_a_taken_port_in_one_line(tmp_path: Path) -> None:
    """The coordinator's own failure to start prints no traceback of its own."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = [sys.executable, "-m", "engine", "bars", "--generate", "1000", "--quiet"]
        command += ["--output", str(tmp_path / "b.csv"), "--metrics-port"]
        command += [str(taken.getsockname()[1])]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("job failed:")
    ]
    assert "Address already in use" in done.stderr


def _default_sigint() -> None:
    """A runner started in the background (``cmd &`` in a script) ignores SIGINT, and its
    children inherit that: give the command line its Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_metrics_port(tmp_path: Path) -> None:
    """``python -m engine bars --metrics-port``: the job's metrics while it runs; Ctrl-C
    stops it gracefully and the port closes."""
    port = _free_port()
    output = tmp_path / "bars.csv"
    command = [sys.executable, "-m", "engine", "bars", "--generate", "100000000"]
    command += ["--output", str(output), "--replicas", "1", "--quiet"]
    command += ["--metrics-port", str(port)]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        running, _ = poll(
            port,
            lambda s: (
                s.get("ringflow_job_state", job="bars") == 1
                and s.get("ringflow_records_out_total", node="ticks") > 0
            ),
            "the bars job running",
        )
        nodes = {s.labels["node"] for s in running.families["ringflow_worker_up"].samples}
        assert nodes == {"ticks", "bars", "output", "late"}
        lag = running.get("ringflow_watermark_lag_seconds", node="ticks")
        assert math.isnan(lag) or lag > 0  # generated event times are in the past
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert "stopped early" in out, out
    assert output.exists()
    assert_port_closed(port)


def test_a_scrape_before_the_channels_exist_answers() -> None:
    # The server starts before the channels are made: a scrape then raised (HTTP 500).
    dag = Dag("early")
    dag.source("src", Numbered(10), 2).rebalance().apply("sum", RunningSum(), 2).sink(
        "out", Backlogged(pause=0.0)
    )
    coordinator = Coordinator(dag, Settings(), "early", None, None)  # type: ignore[arg-type]
    families = {f.name for f in JobCollector(coordinator).collect()}
    assert "ringflow_channel_slots_in_use" in families and "ringflow_job_state" in families


def test_a_scrape_in_flight_finishes_before_the_teardown_unmaps_what_it_reads() -> None:
    """The server's shutdown does not wait for a request thread already running: its read
    of the stats block or a channel, unmapped meanwhile, answered HTTP 500. Closing the
    collector now waits for it, and a later scrape reads nothing."""
    import threading

    dag = Dag("closing")
    dag.source("src", Numbered(10)).sink("out", Backlogged(pause=0.0))
    coordinator = Coordinator(dag, Settings(), "closing", None, None)  # type: ignore[arg-type]
    collector = JobCollector(coordinator)
    reading, release = threading.Event(), threading.Event()
    status = coordinator.status

    def slow_status() -> list[dict[str, Any]]:
        reading.set()
        assert release.wait(WAIT)
        return status()

    coordinator.status = slow_status  # type: ignore[method-assign]
    scraped: list[Any] = []
    scrape = threading.Thread(target=lambda: scraped.extend(collector.collect()))
    scrape.start()
    assert reading.wait(WAIT)
    closer = threading.Thread(target=collector.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close() waits for the scrape in flight
    release.set()
    scrape.join(WAIT)
    closer.join(WAIT)
    assert not closer.is_alive()
    assert "ringflow_job_state" in {f.name for f in scraped}
    assert list(collector.collect()) == []


def test_a_finished_worker_shows_the_gauges_its_close_set() -> None:
    # The last periodic report comes before close(); the done report carries the gauges.
    dag = Dag("gauges")
    dag.source("once", Numbered(10)).sink("closing", GaugeOnClose())
    dag.source("on", Numbered(0, forever=True, pause_every=1, pause=0.002)).sink(
        "out", Backlogged(pause=0.0)
    )
    with launch(dag, heartbeat_timeout=WAIT) as job:
        deadline = time.monotonic() + WAIT
        while True:
            row = next((r for r in job.status() if r["node"] == "closing"), None)
            if row is not None and row["state"] == "done" and not row["alive"]:
                break
            assert time.monotonic() < deadline, f"the closing sink never finished: {row}"
            time.sleep(0.05)
        assert row["gauges"] == {"closed": 1.0}
        job.stop()
        job.wait(WAIT)


def test_a_worker_reports_its_final_gauges_with_its_counters() -> None:
    # The last "counters" message may predate the last write; "done" carries both.
    coordinator = Coordinator(Dag("g"), Settings(), "g", None, None)  # type: ignore[arg-type]
    w = WorkerHandle("out", 0, 0, "sink", process=None, control=None)  # type: ignore[arg-type]
    w.gauges = {"queue_depth": 241.0}
    report = {"counters": {"pauses": 300}, "gauges": {"queue_depth": 300.0}}
    coordinator._handle(w, ("done", report))
    assert (w.counters, w.gauges) == ({"pauses": 300}, {"queue_depth": 300.0})


def test_dead_workers_read_as_down_and_stop_adding_busy_time_while_teardown_waits(
    tmp_path: Path,
) -> None:
    # A worker SIGKILLed fails the job; teardown then waits out the grace of a sink deaf to
    # SIGTERM. The source, gone at its SIGTERM, read as up all that time, and the killed
    # worker's busy time kept growing (it never wrote its finish time).
    dag = Dag("teardown")
    src = dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002))
    deaf = tmp_path / "deaf"
    src.apply("victim", RunningSum()).sink("deaf", Deaf(str(deaf)))
    job = launch(dag, metrics_port=0, stop_grace=10.0, heartbeat_timeout=WAIT)
    try:
        port = job.metrics_port
        assert port is not None
        deadline = time.monotonic() + WAIT
        while not deaf.exists():
            assert time.monotonic() < deadline, "the sink never began its write"
            time.sleep(0.05)
        victim = next(r["pid"] for r in job.status() if r["node"] == "victim")
        os.kill(victim, signal.SIGKILL)

        def down(s: Scrape) -> bool:
            up = {n: s.get("ringflow_worker_up", node=n) for n in ("src", "victim", "deaf")}
            return up == {"src": 0, "victim": 0, "deaf": 1}

        before, _ = poll(port, down, "the source and the killed worker down, the sink not")
        time.sleep(0.3)  # busy time would grow by this much
        after = scrape(port)
        busy = "ringflow_busy_seconds_total"
        assert after.get(busy, node="victim") == before.get(busy, node="victim")
        assert after.get("ringflow_worker_up", node="deaf") == 1  # still in its grace
    finally:
        job.kill()
        with pytest.raises(JobFailed, match="victim"):
            job.wait(WAIT)  # (in the finally: a failed assertion leaves nothing running)
    assert_port_closed(port)


def test_the_cli_says_where_its_metrics_are(tmp_path: Path) -> None:
    # --metrics-port 0 lets the machine choose: the command names the port it chose.
    command = [sys.executable, "-m", "engine", "bars", "--generate", "20000", "--replicas", "1"]
    command += ["--output", str(tmp_path / "bars.csv"), "--metrics-port", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    found = re.search(r"^metrics: http://127\.0\.0\.1:(\d+)/metrics$", done.stderr, re.M)
    assert found is not None and int(found.group(1)) > 0, done.stderr
