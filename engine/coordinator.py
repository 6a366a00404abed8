"""The coordinator process: creates every channel, starts one worker per (node, replica),
watches them, answers the driver and tears everything down on every path.

Lifecycle:

1. create the stats block and one channel per link, all named ``ringflow-<job>-*``;
2. spawn the workers, then close this process's copies of their pipe ends;
3. once every worker reports ``ready`` (it has mapped its segments), unlink every segment
   name: from then on nothing is left in /dev/shm whatever dies, as the kernel frees the
   memory with its last mapping; and tell every source to ``go``, so all source replicas
   start together, when every consumer is running;
4. watch, on a uvloop event loop: control messages (``done`` / ``error``), process
   sentinels (death by any signal, seen at once), heartbeats (a hung worker) and the
   driver's pipe (requests; end-of-file means the driver died); what goes to the driver
   goes through an ``Outbox`` thread, so a driver that does not read never holds the loop;
5. finish: report a ``JobResult`` or a ``JobFailed``; on failure, SIGTERM every worker
   (sinks abort their temporary files), SIGKILL what is left after a grace period, reap
   every process, unlink anything not yet unlinked and remove the temporaries of the files
   the DAG declares that a SIGKILLed writer left (``engine.tempfiles``).

Workers die with the coordinator (PR_SET_PDEATHSIG), so no path leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import uvloop

from engine.batch import DEFAULT_LINGER_S
from engine.channel import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS, Channel, geometry_problems
from engine.dag import SOURCE, Dag
from engine.errors import JobFailed, SettingsError
from engine.inbox import Inbox
from engine.plan import plan
from engine.result import JobResult, NodeReport
from engine.stats import (
    BACKPRESSURED_NS,
    BYTES_OUT,
    FINISHED,
    HEARTBEAT,
    IDLE_NS,
    LATE,
    LOGIC_NS,
    PAUSED_NS,
    PAUSES,
    QUEUE_DEPTH,
    RECORDS_IN,
    RECORDS_OUT,
    STARTED,
    STATE,
    WATERMARK,
    State,
    StatsBlock,
)
from engine.tempfiles import remove_temporaries, written_paths
from engine.validate import is_number
from engine.worker import OutputSpec, WorkerSpec, worker_main

SEGMENT_PREFIX = "ringflow-"
CHECK_INTERVAL_S = 0.1
EXIT_STATUS_WAIT_S = 2.0
SECONDARY_WAIT_S = 1.0


@dataclass(frozen=True)
class Settings:
    """Engine settings for one job (all picklable)."""

    slots: int = DEFAULT_SLOTS
    # 128 KiB: a frame holds about 3,600 ticks, so a typical source batch of 4,096 goes in
    # two frames rather than three; 5-11% more ticks/s than 64 KiB on the bars job in a
    # same-run A/B (benchmarks/RESULTS.md). 1 MiB of shared memory per channel.
    slot_size: int = DEFAULT_SLOT_SIZE
    linger: float = DEFAULT_LINGER_S
    heartbeat_timeout: float = 10.0
    startup_timeout: float = 60.0
    stop_grace: float = 3.0
    # How long an async source's cancelled await, and then its cleanup, may go on after a
    # graceful stop: one that ignores its cancellation, or a cleanup that hangs, is
    # abandoned then (engine.runtime_async).
    stop_timeout: float = 5.0
    metrics_port: int | None = None

    def check(self) -> None:
        """Raise ``SettingsError`` naming every bad setting."""
        ints = [n for n in ("slots", "slot_size") if not is_number(getattr(self, n), integer=True)]
        problems = [f"{n} must be an int, got {getattr(self, n)!r}" for n in ints]
        if not ints:
            problems += geometry_problems(self.slots, self.slot_size)
        if not (is_number(self.linger) and self.linger >= 0):
            problems.append(f"linger must be >= 0 seconds, got {self.linger!r}")
        port = self.metrics_port
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            problems.append(f"metrics_port must be an int in 0..65535, got {port!r}")
        for name in ("heartbeat_timeout", "startup_timeout", "stop_grace", "stop_timeout"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                problems.append(f"{name} must be > 0 seconds, got {value!r}")
        if problems:
            raise SettingsError("bad engine settings: " + "; ".join(problems))

    @classmethod
    def checked(cls, **settings: Any) -> Settings:
        """``Settings(**settings)``, checked; ``SettingsError`` naming what is wrong."""
        try:
            made = cls(**settings)
        except TypeError as exc:
            names = ", ".join(f.name for f in dataclasses.fields(cls))
            raise SettingsError(
                f"unknown engine setting: {exc}; the settings are {names}"
            ) from None
        made.check()
        return made


@dataclass
class WorkerHandle:
    node: str
    replica: int
    index: int
    kind: str
    process: Any
    control: Connection
    ready: bool = False
    done: bool = False
    secondary: bool = False  # failed only because a channel peer went away
    exited: bool = False  # the process is gone (its sentinel fired, or teardown reaped it)
    exited_ns: int = 0  # when that was seen (monotonic): a killed worker's busy time ends
    counters: dict[str, int] = field(default_factory=dict)  # the logic's, as last reported
    gauges: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    busy_ns: int = 0  # the highest busy time reported yet
    inbox: Inbox | None = None  # its messages, as they arrive (once the coordinator watches)

    def mark_exited(self) -> None:
        if not self.exited:
            self.exited_ns = time.monotonic_ns()
            self.exited = True


def segment_prefix(job_id: str) -> str:
    return f"{SEGMENT_PREFIX}{job_id}-"


def remove_segments(job_id: str) -> list[str]:
    """Unlink every segment of a job still named in /dev/shm (used after a crash)."""
    prefix = segment_prefix(job_id)
    removed = []
    for name in os.listdir("/dev/shm"):
        if name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join("/dev/shm", name))
                removed.append(name)
    return removed


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def how_it_ended(code: int | None) -> str:
    """A process's exit status in words: a signal by name, whether it killed the process
    (a negative code) or the process exited on it (128 + the signal, as ours do)."""
    if code is not None and code < 0:
        return f"was killed by signal {_signal_name(-code)}"
    if code is not None and code - 128 in signal.valid_signals():
        return f"exited on signal {_signal_name(code - 128)} (exit code {code})"
    return f"exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has a number only
        return str(number)


class Outbox:
    """Messages to the driver, written in order by a thread of their own on a pipe that
    only this side writes (so it stays in blocking mode): the event loop never waits on a
    driver that is not reading, whatever the size of an answer (a status of hundreds of
    workers, a large sink result)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ringflow-outbox", daemon=True)
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self.conn.send(message)
            except (OSError, ValueError):  # the driver has gone: nobody to tell
                return

    def close(self) -> None:
        """Deliver what is queued (the job's outcome), then close. Waits for the driver to
        read it, as long as the driver lives."""
        self._queue.put(None)
        self._thread.join()
        self.conn.close()


def coordinator_main(
    dag: Dag, settings: Settings, job_id: str, requests: Connection, replies: Connection
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what Ctrl-C means
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # (blocked while it booted)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwind through teardown
    # A process group of its own, which the workers inherit: a signal to the driver's group
    # (Ctrl-C, `kill -- -PGID`, `timeout`, a terminal's SIGHUP) reaches the driver alone, and
    # the driver decides (the CLI stops the job gracefully). A driver that dies of it closes
    # its pipe, and the coordinator tears the job down, sinks aborted, as on any failure.
    # (Ctrl-Z stops the driver only; systemd's default kill signals the whole cgroup.)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    outbox = Outbox(replies)
    coordinator = Coordinator(dag, settings, job_id, requests, outbox)
    try:
        uvloop.run(coordinator.run())
    finally:
        try:
            coordinator.teardown()
        finally:
            outbox.close()


class Coordinator:
    def __init__(
        self, dag: Dag, settings: Settings, job_id: str, driver: Connection, outbox: Outbox
    ) -> None:
        self.dag = dag
        self.settings = settings
        self.job_id = job_id
        self.driver = driver  # the driver's requests
        self.outbox = outbox  # and this side's messages to it
        self.writes = written_paths(dag)  # whose temporaries teardown removes
        self.plan = plan(dag)
        self.channels: list[Channel] = []
        self.workers: list[WorkerHandle] = []
        self.stats: StatsBlock | None = None
        self.unlinked = False
        self.outcome: asyncio.Future[Any] | None = None
        self.started = time.perf_counter()
        self.stopping = False
        self._busy_lock = threading.Lock()
        self.metrics: Any = None

    # -- setup ----------------------------------------------------------------------------

    def start_workers(self) -> None:
        prefix = segment_prefix(self.job_id)
        s = self.settings
        replicas = self.plan.replicas
        self.stats = StatsBlock(f"{prefix}stats", len(replicas), create=True)
        for link in self.plan.links:
            self.channels.append(
                Channel.create(f"{prefix}{link.index}", slots=s.slots, slot_size=s.slot_size)
            )
        ctx = multiprocessing.get_context("spawn")
        ours: list[Connection] = []
        for index, (node, replica) in enumerate(replicas):
            inputs = [
                (self.channels[k.index].rx, k.record_type, f"{k.up!r} replica {k.up_replica}")
                for k in self.plan.inputs(node.name, replica)
            ]
            outputs = []
            for edge, links in self.plan.outputs(node.name, replica):
                down = self.dag.node(edge.downstream)
                ends = {k.down_replica: self.channels[k.index].tx for k in links}
                rtype = links[0].record_type if links else None
                outputs.append(
                    OutputSpec(
                        edge.output, self.dag.partitioner(edge), down.parallelism, ends, rtype
                    )
                )
            mine, theirs = ctx.Pipe()
            spec = WorkerSpec(
                self.job_id,
                node,
                replica,
                inputs,
                outputs,
                self.stats.name,
                len(replicas),
                index,
                theirs,
                s.linger,
                s.stop_timeout,
            )
            process = ctx.Process(
                target=worker_main,
                args=(spec,),
                name=f"ringflow:{node.name}[{replica}]",
                daemon=True,
            )
            process.start()
            ours.append(theirs)
            self.workers.append(WorkerHandle(node.name, replica, index, node.kind, process, mine))
        for conn in ours:
            conn.close()
        for channel in self.channels:
            channel.close_ends()

    def unlink_segments(self) -> None:
        if self.unlinked:
            return
        self.unlinked = True
        for channel in self.channels:
            channel.ring.unlink()
        if self.stats is not None:
            self.stats.unlink()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.outcome = loop.create_future()
        try:
            port = self.settings.metrics_port
            if port is not None:  # first: a port in use fails the job before any worker
                from engine.metrics import MetricsServer

                self.metrics = MetricsServer(self, port)
                try:
                    self.metrics.start()
                except OSError as exc:
                    raise OSError(
                        f"cannot serve metrics on 127.0.0.1:{port} ({exc.strerror or exc}); "
                        "give launch(metrics_port=...) a free port, or 0 for any"
                    ) from None
                self.outbox.send(("metrics", self.metrics.port))  # job.metrics_port
            self.start_workers()
        except BaseException as exc:
            self.outbox.send(("failed", JobFailed(f"job {self.job_id}: could not start: {exc}")))
            if isinstance(exc, OSError):  # the machine's answer (no room, a port in use):
                return  # the message says it all (teardown follows in coordinator_main)
            raise
        for w in self.workers:
            w.inbox = Inbox(w.control)
            loop.add_reader(w.control.fileno(), self._on_control, w)
            loop.add_reader(w.process.sentinel, self._on_exit, w)
        loop.add_reader(self.driver.fileno(), self._on_driver, Inbox(self.driver))
        watchdog = loop.create_task(self._watch())
        try:
            outcome = await self.outcome
        finally:
            watchdog.cancel()
            for w in self.workers:
                loop.remove_reader(w.control.fileno())
                loop.remove_reader(w.process.sentinel)
            loop.remove_reader(self.driver.fileno())
        if isinstance(outcome, JobFailed):
            self.kill_workers()
            self.outbox.send(("failed", outcome))
        elif outcome is not None:
            self._reap()
            self.outbox.send(("result", outcome))

    def _finish(self, outcome: Any) -> None:
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(outcome)

    def _fail(self, message: str, w: WorkerHandle | None = None, **info: Any) -> None:
        if w is not None:
            info.setdefault("node", w.node)
            info.setdefault("replica", w.replica)
        self._finish(JobFailed(message, **info))

    def _on_control(self, w: WorkerHandle) -> None:
        try:
            if w.inbox is not None:
                w.inbox.receive(lambda message: self._handle(w, message))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(w.control.fileno())
        except Exception as exc:  # a message that does not unpickle (its result's classes)
            self._fail(
                f"node {w.node!r} replica {w.replica} sent a message that cannot be read "
                f"here: {type(exc).__name__}: {exc}; a close() result must unpickle in a "
                "fresh process (its classes importable, its exceptions re-creatable)",
                w,
            )

    def _handle(self, w: WorkerHandle, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == "ready":
            w.ready = True
            if all(x.ready for x in self.workers):
                for x in self.workers:  # before unlinking, which cannot then keep it back
                    if x.kind == SOURCE:
                        with contextlib.suppress(OSError):  # a source that already exited
                            x.control.send(("go",))
                self.unlink_segments()
                workers = [(x.node, x.replica, x.process.pid) for x in self.workers]
                self.outbox.send(("started", workers))
        elif tag == "counters":
            w.counters, w.gauges = message[1], message[2]
        elif tag == "done":
            w.done = True
            w.report = message[1]
            w.counters = dict(message[1].get("counters", {}))
            w.gauges = dict(message[1].get("gauges", {}))
        elif tag == "error":
            _, error, text, tb = message
            failure = JobFailed(
                f"node {w.node!r} replica {w.replica} failed: {error}: {text}",
                node=w.node,
                replica=w.replica,
                error=error,
                traceback=tb,
            )
            if error == "ChannelClosed":
                # Most likely a neighbour died first: give its own report a moment to arrive
                # so the job fails with the cause, not the consequence.
                w.secondary = True
                asyncio.get_running_loop().call_later(SECONDARY_WAIT_S, self._finish, failure)
            else:
                self._finish(failure)

    def _on_exit(self, w: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(w.process.sentinel)
        w.mark_exited()
        # The sentinel turns readable when the child closes its files, a moment before the
        # kernel lets us reap it; wait for the exit status (bounded).
        w.process.join(EXIT_STATUS_WAIT_S)
        self._on_control(w)  # a report sent just before exiting is still in the pipe
        code = w.process.exitcode
        if code == 0 and w.done:
            if all(x.done for x in self.workers):
                self._finish(self._result())
            return
        if (self.outcome is not None and self.outcome.done()) or w.secondary:
            return
        self._fail(
            f"node {w.node!r} replica {w.replica} {how_it_ended(code)} (pid {w.process.pid})",
            w,
            exitcode=code,
        )

    def _on_driver(self, requests: Inbox) -> None:
        try:
            requests.receive(self._on_request)
        except (EOFError, OSError):
            # The driver died or closed its end: nobody will collect the result.
            asyncio.get_running_loop().remove_reader(self.driver.fileno())
            self._fail(f"job {self.job_id}: the driver went away")

    def _on_request(self, request: tuple[Any, ...]) -> None:
        if request == ("stop",):
            self.request_stop()
        elif request == ("kill",):
            self._fail(f"job {self.job_id} was killed by the driver")
        elif request == ("status",):
            self.outbox.send(("status", self.status()))

    def request_stop(self) -> None:
        """Graceful stop: sources end their streams; everything downstream drains."""
        self.stopping = True
        for w in self.workers:
            if w.kind == SOURCE and w.process.exitcode is None:
                with contextlib.suppress(OSError):
                    w.control.send(("stop",))

    async def _watch(self) -> None:
        """Heartbeats and startup: a worker silent for too long is hung. A worker is watched
        for heartbeats from its "ready" on (a source waiting for "go" beats too); before
        that, its set-up is bounded by startup_timeout. One that has finished is given as
        long again, from its last beat, to report (else the job fails) and to exit (else,
        once every worker has reported, the job ends with their results)."""
        s = self.settings
        assert self.stats is not None
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            now = time.monotonic_ns()
            age_limit = int(s.heartbeat_timeout * 1e9)
            for w in self.workers:
                state = self.stats.get(w.index, STATE)
                beat = self.stats.get(w.index, HEARTBEAT)
                watched = state == State.RUNNING or (state == State.STARTING and w.ready)
                if watched and beat and now - beat > age_limit:
                    self._fail(
                        f"node {w.node!r} replica {w.replica} is hung: no heartbeat for "
                        f"{(now - beat) / 1e9:.1f} s (limit {s.heartbeat_timeout} s); a call "
                        "into its logic blocked that long: make a call that waits async, or "
                        "raise launch(heartbeat_timeout=...)",
                        w,
                    )
                elif state == State.DONE and not w.exited and beat and now - beat > age_limit:
                    # Its result may have come whole while the loop was busy (unpickling
                    # another's), or be arriving still: read what is there, and count from
                    # the last bytes it sent.
                    self._on_control(w)
                    assert w.inbox is not None  # (made before this watch started)
                    if now - max(beat, w.inbox.last_read_ns) <= age_limit:
                        continue
                    if not w.done:
                        self._fail(
                            f"node {w.node!r} replica {w.replica} finished its work but has "
                            f"not reported its result {(now - beat) / 1e9:.1f} s later (limit "
                            f"{s.heartbeat_timeout} s): the process is frozen, or its close() "
                            "result takes that long to send; return less, or raise "
                            "launch(heartbeat_timeout=...)",
                            w,
                        )
                    elif all(x.done for x in self.workers):
                        # Reported but not gone (frozen on its way out), and the others have
                        # reported too: the job is done; the teardown ends the straggler.
                        self._finish(self._result())
            if not self.unlinked and time.perf_counter() - self.started > s.startup_timeout:
                late = [f"{w.node}[{w.replica}]" for w in self.workers if not w.ready]
                self._fail(f"workers did not start within {s.startup_timeout} s: {late}")

    # -- reporting ------------------------------------------------------------------------

    def state(self) -> str:
        """starting, running, stopping, done or failed."""
        if self.outcome is not None and self.outcome.done():
            return "failed" if isinstance(self.outcome.result(), JobFailed) else "done"
        if self.stopping:
            return "stopping"
        return "running" if self.unlinked else "starting"

    def status(self) -> list[dict[str, Any]]:
        if self.stats is None:  # a scrape before the workers exist
            return []
        now = time.monotonic_ns()
        rows = []
        for w in self.workers:
            get = self.stats.get
            beat = get(w.index, HEARTBEAT)
            rows.append(
                {
                    "node": w.node,
                    "replica": w.replica,
                    "pid": w.process.pid,
                    "state": State(get(w.index, STATE)).name.lower(),
                    "alive": not w.exited,
                    "records_in": get(w.index, RECORDS_IN),
                    "records_out": get(w.index, RECORDS_OUT),
                    "bytes_out": get(w.index, BYTES_OUT),
                    "idle_s": get(w.index, IDLE_NS) / 1e9,
                    "backpressured_s": get(w.index, BACKPRESSURED_NS) / 1e9,
                    "busy_s": self._busy_ns(w, now) / 1e9,
                    "logic_s": get(w.index, LOGIC_NS) / 1e9,
                    "watermark": get(w.index, WATERMARK),
                    "late": get(w.index, LATE),
                    "paused_s": get(w.index, PAUSED_NS) / 1e9,
                    "pauses": get(w.index, PAUSES),
                    "queue_depth": get(w.index, QUEUE_DEPTH),
                    "heartbeat_age_s": (now - beat) / 1e9 if beat else None,
                    "counters": dict(w.counters),
                    "gauges": dict(w.gauges),
                }
            )
        return rows

    def _busy_ns(self, w: WorkerHandle, now: int) -> int:
        """Run time neither idle nor backpressured. A worker publishes idle and
        backpressured time in steps (up to 0.25 s, after a wait), so the difference saws
        back by as much: the highest value yet is reported, and never goes down."""
        assert self.stats is not None
        get, index = self.stats.get, w.index
        started = get(index, STARTED)
        if not started:
            return 0
        end = get(index, FINISHED) or w.exited_ns or now  # a killed worker finishes nothing
        busy = end - started - get(index, IDLE_NS) - get(index, BACKPRESSURED_NS)
        with self._busy_lock:  # status() is called on the loop and by metrics scrapes
            w.busy_ns = max(w.busy_ns, busy)
            return w.busy_ns

    def _result(self) -> JobResult:
        nodes = {n.name: NodeReport() for n in self.dag.nodes}
        sinks: dict[str, list[Any]] = {}
        stopped = False
        for w in self.workers:
            r = w.report or {}
            nodes[w.node].add(
                r.get("records_in", 0),
                r.get("records_out", 0),
                r.get("counters", {}),
                r.get("timing", {}),
            )
            stopped = stopped or bool(r.get("stopped"))
            if w.kind == "sink":
                sinks.setdefault(w.node, []).append(r.get("result"))
        return JobResult(
            self.dag.name,
            time.perf_counter() - self.started,
            nodes,
            sinks,
            stopped or self.stopping,
        )

    # -- teardown -------------------------------------------------------------------------

    def kill_workers(self) -> None:
        """SIGTERM every live worker, SIGKILL those still alive after the grace period.
        Each is marked exited as it goes (its metrics say so at once)."""
        for w in self.workers:
            if w.process.exitcode is not None:
                w.mark_exited()
        live = {w.process.sentinel: w for w in self.workers if not w.exited}
        for w in live.values():
            with contextlib.suppress(OSError):
                w.process.terminate()
        deadline = time.monotonic() + self.settings.stop_grace
        while live and (left := deadline - time.monotonic()) > 0:
            for sentinel in wait(list(live), left):
                w = live.pop(sentinel)
                w.process.join(EXIT_STATUS_WAIT_S)
                w.mark_exited()
        for w in live.values():
            w.process.kill()
            w.process.join(5.0)
            w.mark_exited()

    def _reap(self) -> None:
        for w in self.workers:
            w.process.join(5.0)

    def teardown(self) -> None:
        """Runs on every exit path of the coordinator."""
        if self.metrics is not None:  # first: no scrape may read counters being unmapped
            self.metrics.stop()
            self.metrics = None
        self.kill_workers()
        remove_temporaries(self.writes, self.job_id)
        self.unlink_segments()
        remove_segments(self.job_id)
        for channel in self.channels:
            channel.close_ends()
            channel.ring.close()
        if self.stats is not None:
            self.stats.close()
        for w in self.workers:
            w.control.close()
