"""The worker process: one replica of one node, from its input channels to its output channels.

Loop (operators and sinks)::

    frame = gate.next()            # epoll over every input's doorbell, fair across inputs
    DATA      -> decode the batch, release the slot, logic.process, split, batch builders
    WATERMARK -> min over inputs; on advance: logic.on_watermark, forward downstream
    DATA_WATERMARK -> the DATA steps for the records, then the WATERMARK steps
    EOF       -> that input is done; after the last one: on_eof, flush, EOF downstream, exit 0

A source runs its logic's stream instead of reading a gate (``SourceTask.run``: an async
source's in one call on the worker's event loop), sending its partial batches at once when
an async source starts to wait. Every item and every bounded wait refreshes the heartbeat
in the job's stats block, so the coordinator can tell a busy worker from a hung one; any
exception is reported to the coordinator with its traceback before the process exits
non-zero.
"""

from __future__ import annotations

import cProfile
import ctypes
import faulthandler
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from time import thread_time_ns
from typing import Any

from engine.batch import WATERMARK_SIZE, BatchBuilder, codec_for, decode_watermark
from engine.channel import InputGate, RxEnd, TxEnd, Writer
from engine.dag import SOURCE, Node
from engine.errors import RecordError
from engine.operator import Context, side_outputs
from engine.ring import P_BLOCKED_NS, Kind
from engine.runtime_async import TICK_S, AsyncRunner
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
    PID,
    QUEUE_DEPTH,
    RECORDS_IN,
    RECORDS_OUT,
    STARTED,
    STATE,
    WATERMARK,
    State,
    StatsBlock,
)
from engine.task import Emitter, Output, Sender, SourceTask, Task

PR_SET_PDEATHSIG = 1
WAIT_S = 0.25  # longest sleep without a heartbeat
STATS_EVERY_S = 0.01  # longest a busy worker's published counters may lag its own
COUNTERS_EVERY_S = 0.5
PROFILE_ENV = "RINGFLOW_PROFILE"  # a folder: each replica writes <node>-<replica>.prof there


@dataclass
class OutputSpec:
    output: str
    partitioner: Any
    parallelism: int
    ends: dict[int, TxEnd]
    record_type: Any


@dataclass
class WorkerSpec:
    """Everything a worker needs, pickled into its process at spawn."""

    job: str
    node: Node
    replica: int
    inputs: list[tuple[RxEnd, Any, str]]  # (end, record type, the upstream replica's name)
    outputs: list[OutputSpec]
    stats_name: str
    stats_rows: int
    index: int
    control: Connection
    linger: float
    stop_timeout: float


class Stopped(BaseException):
    """SIGTERM arrived: unwind, abort sinks, exit."""


_failing = [False]  # set first thing when the worker fails: a SIGTERM then raises nothing


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _failing[0]:
        raise Stopped()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker if the coordinator dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the coordinator died before the request took effect


def worker_main(spec: WorkerSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    _die_with_parent()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    if not logging.getLogger().handlers:  # a spawned worker starts with none: state changes
        logging.basicConfig(  # (breakers, failovers) are logged at INFO, one line each
            level=logging.INFO,
            format=f"%(asctime)s {spec.node.name}[{spec.replica}] %(name)s %(levelname)s: "
            "%(message)s",
        )
    control = spec.control
    stats = StatsBlock(spec.stats_name, spec.stats_rows, create=False)
    row = stats.row(spec.index)
    row[PID] = os.getpid()
    row[HEARTBEAT] = time.monotonic_ns()
    worker: Worker | None = None
    try:
        worker = Worker(spec, row)
        worker._update_stats()  # the row starts zeroed: a 0 watermark would read as 1970
        # Imports and set-up leave tens of thousands of long-lived objects; freezing them
        # keeps the collector's full passes (which the hot path's allocations trigger) from
        # walking them again and again.
        gc.freeze()
        # Fresh heartbeats from here: a ready worker is watched for them (set-up before
        # this, however long, is startup_timeout's to bound).
        row[HEARTBEAT] = time.monotonic_ns()
        control.send(("ready",))
        if spec.node.kind == SOURCE:
            worker.await_start()
        row[STARTED] = row[HEARTBEAT] = time.monotonic_ns()
        row[STATE] = State.RUNNING
        result = worker.run()
        worker.close()
        row[HEARTBEAT] = time.monotonic_ns()  # from here to its exit, watched against this
        row[STATE] = State.DONE
        control.send(("done", result))
        code = 0
    except BaseException as exc:
        # From here on the worker is failing anyway: a SIGTERM from the coordinator's
        # teardown must not cut the report or the sink's abort short (SIGKILL still bounds it).
        # The flag first: one landing before signal.signal() returns is ignored too.
        _failing[0] = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        row[STATE] = State.FAILED
        if not isinstance(exc, Stopped):
            # Report the cause first: closing our channels makes neighbours fail too.
            try:
                control.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
            except OSError:
                pass  # the coordinator is gone; PDEATHSIG takes us down
        if worker is not None:
            worker.abort()
        code = 128 + signal.SIGTERM if isinstance(exc, Stopped) else 1
    finally:
        # Done either way: a teardown SIGTERM landing now (the job failed elsewhere just as
        # this worker finished) must not raise out of here as a stray traceback.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        row[FINISHED] = time.monotonic_ns()
        row.release()
        stats.close()
    sys.exit(code)


class Worker:
    def __init__(self, spec: WorkerSpec, row: memoryview) -> None:
        self.spec = spec
        self.row = row
        self.control = spec.control
        self.stop_requested = False
        self._aborting = False
        self._counters_due = 0.0
        self._stats_due = 0.0  # next heartbeat and counters (_keep_alive)
        self._idle_ns = 0  # an async source's finished waits for its next item
        self._waiting_since = 0  # monotonic ns when its current wait began; 0: none
        self._counters_sent: tuple[dict[str, int], dict[str, float]] = ({}, {})
        node = spec.node
        self.ctx = Context(
            node.name,
            spec.replica,
            node.parallelism,
            job=spec.job,
            side_outputs=side_outputs(node.config),
        )
        self.readers = [end.open() for end, _, _ in spec.inputs]
        self.decoders = [codec_for(rtype).decode for _, rtype, _ in spec.inputs]
        self.writers: list[Writer] = []
        self.builders: list[BatchBuilder] = []
        outputs: dict[str, list[Output]] = {}
        for out in spec.outputs:
            senders: dict[int, Sender] = {}
            for replica, end in out.ends.items():
                writer = end.open(on_wait=self.on_wait)
                codec = codec_for(out.record_type, dictionary=True)  # its tables: this channel's
                builder = BatchBuilder(writer, codec, linger=spec.linger)
                self.writers.append(writer)
                self.builders.append(builder)
                senders[replica] = builder
            splitter = out.partitioner.build(out.parallelism, spec.replica)
            outputs.setdefault(out.output, []).append(Output(splitter, senders))
        self.emitter = Emitter(self.ctx, outputs)
        # While an async source or sink waits: heartbeat, and partial batches leave after
        # their linger. A stop cancels a source's wait (a provider with nothing to say),
        # never a sink's: sinks drain what is in flight. A source whose cancelled await, or
        # cleanup, goes on for ``stop_timeout`` is abandoned: its stream ends anyway.
        is_source = node.kind == SOURCE
        self.runner = AsyncRunner(
            on_tick=self._on_async_tick,
            cancel_when=(lambda: self.stop_requested) if is_source else None,
            next_tick=self._until_flush,
            abandon_after=spec.stop_timeout if is_source else None,
        )
        logic = node.config.build(self.ctx)
        self.task: Task | SourceTask
        if node.kind == SOURCE:
            self.task = SourceTask(logic, self.ctx, self.emitter, self.runner)
        else:
            self.task = Task(
                node.kind, logic, self.ctx, len(self.readers), self.emitter, self.runner
            )

    # -- liveness -------------------------------------------------------------------------

    def on_wait(self) -> None:
        """Called while blocked on credit: heartbeat, and note a stop request."""
        self.row[HEARTBEAT] = time.monotonic_ns()
        self._update_stats()
        self._check_control()

    def _on_async_tick(self) -> float:
        """While async logic waits: heartbeat, control, and partial batches due (not after
        a failure: then nothing more goes out). Its CPU is the engine's, not the logic's,
        though it runs inside the await that the task times as logic."""
        started = thread_time_ns()
        now = time.monotonic()
        self._keep_alive(now)
        if self._waiting_since:
            self._publish_source_idle()
        if not self._aborting:
            self._flush_due(now)
        self.task.logic_ns -= thread_time_ns() - started
        return self._until_flush()

    def _on_source_wait(self) -> None:
        """An async source waits with nothing ready: it is idle, so what it sent goes now
        rather than after its linger, as an operator's output does when its input is idle;
        and the wait, until the source resumes, counts as idle time, as an operator's wait
        for input does. The flush's CPU is the engine's, though the task times the wait as
        the source's."""
        started = thread_time_ns()
        self._flush_idle()
        self.task.logic_ns -= thread_time_ns() - started
        self._waiting_since = time.monotonic_ns()  # from here, after the flush

    def _on_source_ready(self) -> None:
        self._idle_ns += time.monotonic_ns() - self._waiting_since
        self._waiting_since = 0
        self.row[IDLE_NS] = self._idle_ns

    def _publish_source_idle(self) -> None:
        """The wait going on counts so far (a quiet provider shows idle, not busy)."""
        self.row[IDLE_NS] = self._idle_ns + time.monotonic_ns() - self._waiting_since

    def _keep_alive(self, now: float) -> None:
        """Heartbeat, counters and control, at most every ``STATS_EVERY_S``: the loops and
        an async wait call this far more often than that."""
        if now >= self._stats_due:
            self._stats_due = now + STATS_EVERY_S
            self.on_wait()

    def _until_flush(self) -> float:
        """Seconds until the oldest pending output record has waited its linger (or the
        runner's usual tick when nothing is pending)."""
        now = time.monotonic()
        waits = [b.due_in(now) for b in self.builders if b.pending]
        return min(waits, default=TICK_S)

    def await_start(self) -> None:
        """A source waits for the coordinator's ``go``, sent once every worker of the job is
        ready, so all source replicas start together and none fills its channels while the
        processes downstream are still starting. A stop request ends the wait as well."""
        while True:
            self.row[HEARTBEAT] = time.monotonic_ns()
            if self.control.poll(WAIT_S):
                message = self.control.recv()
                if message == ("go",):
                    return
                if message == ("stop",):
                    self.stop_requested = True
                    return

    def _check_control(self) -> None:
        if self.control.poll():
            message = self.control.recv()
            if message == ("stop",):
                self.stop_requested = True

    def _update_stats(self) -> None:
        row = self.row
        row[RECORDS_IN] = self.task.records_in
        row[RECORDS_OUT] = self.emitter.records_out
        row[BYTES_OUT] = sum(b.bytes_out for b in self.builders)
        row[BACKPRESSURED_NS] = sum(w.ring.counters[P_BLOCKED_NS] for w in self.writers)
        row[WATERMARK] = self.task.watermark
        counters = self.ctx.counters
        row[LATE] = counters.get("late", 0)
        row[PAUSED_NS] = counters.get("paused_ns", 0)
        row[PAUSES] = counters.get("pauses", 0)
        row[QUEUE_DEPTH] = int(self.ctx.gauges.get("queue_depth", 0))
        row[LOGIC_NS] = self.task.logic_ns
        self._publish_counters()

    def _publish_counters(self) -> None:
        """Send the logic's named counters and gauges to the coordinator (for metrics) when
        they changed, at most every ``COUNTERS_EVERY_S``."""
        now = time.monotonic()
        if now < self._counters_due:
            return
        self._counters_due = now + COUNTERS_EVERY_S
        snapshot = (dict(self.ctx.counters), dict(self.ctx.gauges))
        if snapshot != self._counters_sent:
            self._counters_sent = snapshot
            self.control.send(("counters", *snapshot))

    def _flush_due(self, now: float) -> None:
        for builder in self.builders:
            if builder.due(now):
                builder.flush()

    def _flush_idle(self) -> None:
        """Idle, no input to batch with: pending output goes now rather than after its
        linger (linger only trades latency for size under load)."""
        for builder in self.builders:
            builder.flush()

    # -- loops ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.cpu_at_start = time.process_time()  # after imports and setup
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:  # a developer's tool: per-function CPU of this replica's loop
            profile = cProfile.Profile()
            try:
                profile.runcall(self._run)
            finally:
                name = f"{self.spec.node.name}-{self.spec.replica}.prof"
                try:
                    profile.dump_stats(os.path.join(profile_dir, name))
                except OSError as exc:  # never fail a job, or hide its error, for a profile
                    logging.getLogger(__name__).warning("%s not written: %s", name, exc)
        else:
            self._run()
        self._update_stats()
        row = self.row
        run_ns = time.monotonic_ns() - row[STARTED]
        waiting = row[IDLE_NS] + row[BACKPRESSURED_NS]
        return {
            "timing": {
                "cpu_s": time.process_time() - self.cpu_at_start,
                "busy_s": max(0, run_ns - waiting) / 1e9,
                "logic_s": self.task.logic_ns / 1e9,
                "idle_s": row[IDLE_NS] / 1e9,
                "backpressured_s": row[BACKPRESSURED_NS] / 1e9,
            },
            "records_in": self.task.records_in,
            "records_out": self.emitter.records_out,
            "counters": dict(self.ctx.counters),
            "gauges": dict(self.ctx.gauges),
            "result": self.task.result if isinstance(self.task, Task) else None,
            "stopped": self.stop_requested,
        }

    def _run(self) -> None:
        if isinstance(self.task, SourceTask):
            self._run_source(self.task)
        else:
            self._run_task(self.task)

    def _run_source(self, task: SourceTask) -> None:
        if self.stop_requested:  # stopped before it started: an empty stream
            task.finish()
            return
        runner = self.runner

        def after_item() -> bool:
            now = time.monotonic()
            self._flush_due(now)
            self._keep_alive(now)
            if runner.ticking:  # an async source: a flush falling due ticks during its await
                runner.tick_within(self._until_flush())
            return not self.stop_requested

        task.run(after_item, self._on_source_wait, self._on_source_ready)

    def _run_task(self, task: Task) -> None:
        gate = InputGate(self.readers)
        decoders = self.decoders
        row = self.row
        try:
            while not gate.done:
                frame = gate.next(0.0)
                if frame is None:
                    self._flush_idle()
                    frame = gate.next(WAIT_S)
                    row[IDLE_NS] = gate.idle_ns  # a blocking wait is all that adds to it
                    if frame is None:
                        self.on_wait()
                        continue
                index, kind, payload = frame
                if kind == Kind.DATA or kind == Kind.DATA_WATERMARK:
                    marked = kind == Kind.DATA_WATERMARK  # records, then a watermark after them
                    data = memoryview(payload)[:-WATERMARK_SIZE] if marked else payload
                    try:
                        records = decoders[index](data)
                    except RecordError as exc:
                        raise self._undecodable(index, exc) from exc
                    watermark = decode_watermark(payload[-WATERMARK_SIZE:]) if marked else None
                    gate.release()
                    task.on_batch(records)
                    if watermark is not None:
                        task.on_watermark(index, watermark)
                elif kind == Kind.WATERMARK:
                    task.on_watermark(index, decode_watermark(payload))
                elif kind == Kind.EOF:
                    # Counts published first: the last input's EOF runs on_eof or a sink's
                    # close(), which may take long (a commit), and status would lag meanwhile.
                    self._update_stats()
                    task.on_eof(index)
                now = time.monotonic()
                self._flush_due(now)
                self._keep_alive(now)
            task.finish()
        finally:
            gate.close()

    def _undecodable(self, index: int, exc: RecordError) -> RecordError:
        """A batch from upstream that its edge's type cannot decode: the producer's fault."""
        _, rtype, upstream = self.spec.inputs[index]
        name = getattr(rtype, "__name__", repr(rtype))
        return RecordError(
            f"records from node {upstream} do not decode as its output type {name}, so it "
            f"emitted records that are not {name}s (a field of another type, say): give that "
            f"node the output_type its records have, or None to send them pickled ({exc})"
        )

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
        for writer in self.writers:
            writer.close()
        self.runner.close()

    def abort(self) -> None:
        """After a failure: let a sink discard partial output; close what is open. Errors
        here are secondary to the one being reported, so they are not raised."""
        self._aborting = True
        steps = [self.task.abort]
        steps += [w.close for w in self.writers] + [r.close for r in self.readers]
        for step in steps:
            try:
                step()
            except BaseException:
                pass
