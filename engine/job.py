"""The driver's side: ``launch`` a DAG, then ``wait``, ``stop`` or ask for ``status``.

``launch`` validates the DAG in this process (nothing starts if it is malformed), then
spawns the coordinator and returns a ``Job``. Ctrl-C while the job runs asks for a graceful
stop (sources end, everything drains); a second Ctrl-C kills the job (``launch`` installs
that SIGINT handler in the main thread unless the program has its own, and restores it at
the end). A Ctrl-C that lands while a message to or from the coordinator is on the pipe
takes effect once that message is whole, so the pipe never loses its framing. If this
process dies, the coordinator sees its pipe close and tears the job down; if the
coordinator dies, its workers die with it and this side removes what the job left behind:
its segments, and the temporaries of the files the DAG writes. The same holds for a ``Job``
that is garbage-collected: keep a reference to it for as long as the job should run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.util import Finalize
from typing import Any

from engine.coordinator import Settings, coordinator_main, how_it_ended, remove_segments
from engine.dag import Dag
from engine.errors import JobFailed, RingflowError
from engine.plan import plan
from engine.result import JobResult
from engine.ring import SHM_DIR, segment_size
from engine.stats import ROW_BYTES
from engine.tempfiles import remove_temporaries, written_paths

WORKERS_GONE_S = 5.0  # how long, after the coordinator died, its workers may take to die


class Job:
    """A running job. Not thread-safe; use it from the thread that launched it."""

    def __init__(self, dag: Dag, settings: Settings) -> None:
        self.dag = dag
        self.settings = settings
        # Segment names start with the driver's pid, so leftovers are traceable to their run.
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._outcome: JobResult | JobFailed | None = None
        self._status: list[dict[str, Any]] = []
        self._status_asked = False  # a status request's answer is on its way
        self.pids: list[int] = []
        self._writes = written_paths(dag)  # whose temporaries to remove if the coordinator dies
        self._metrics_port: int | None = None  # as the coordinator bound it
        self._thread = threading.get_ident()  # the one that may read the pipe
        self.interrupted = False  # a Ctrl-C already asked for a graceful stop
        # Ctrl-C never cuts a message to or from the coordinator in half: while one is on
        # the pipe, the handler only notes what to do, and it is done once the message is.
        self._in_pipe = False
        self._deferred: str | None = None  # "stop" or "kill", noted during a pipe operation
        self._starting = False  # the coordinator is being started: a Ctrl-C is only noted
        self._previous_sigint: Any = None
        ctx = multiprocessing.get_context("spawn")
        # Two one-way pipes: requests to the coordinator, and its messages here.
        requests, self._requests = ctx.Pipe(duplex=False)
        self._conn, replies = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=coordinator_main,
            args=(dag, settings, self.id, requests, replies),
            name=f"ringflow:coordinator:{dag.name}",
        )
        # Ctrl-C is held back while the coordinator starts. The Job's handler goes in first,
        # before anything starts, and only notes a Ctrl-C until the coordinator runs; then it
        # is acted on (once: a graceful stop; twice: a kill, and launch raises).
        self._starting = True
        self._install_sigint()
        try:
            self._start(requests, replies)
            if self._deferred is not None:
                self._act()
        except BaseException:  # the start failed, or a second Ctrl-C: no Job to wait on
            self._restore_sigint()
            if self._process.pid is not None:
                self.kill()
                with contextlib.suppress(RingflowError, TimeoutError):
                    self.wait(timeout=30)
            raise

    def _start(self, requests: Connection, replies: Connection) -> None:
        """Start the coordinator with SIGINT blocked (not ignored), so that it inherits the
        block and a Ctrl-C sent to the whole process group (a terminal's) cannot kill it as
        it boots; it ignores SIGINT, then unblocks it. Another thread may take a Ctrl-C
        meanwhile: the Job's handler, running in this one, notes it all the same."""
        mask: set[int | signal.Signals] | None = None
        try:
            if threading.current_thread() is threading.main_thread():
                # multiprocessing's resource tracker first: starting it unblocks SIGINT (its
                # own mask, bpo-33613), which would undo ours halfway through.
                resource_tracker.ensure_running()
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            self._process.start()
            requests.close()
            replies.close()
            # If this process exits without waiting, close the pipe first: the coordinator
            # sees it, tears the job down and exits, so the interpreter's join on it returns.
            self._finalizer = Finalize(
                self, _abandon, args=(self._requests, self._conn), exitpriority=100
            )
        finally:
            self._starting = False
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the program's, as it was

    def _install_sigint(self) -> None:
        """Own Ctrl-C while the job runs, unless the program has its own handler."""
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous_sigint = signal.signal(signal.SIGINT, _weak_handler(self))

    def _restore_sigint(self) -> None:
        if (
            self._previous_sigint is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if not self.interrupted:
            self.interrupted = True
            with contextlib.suppress(OSError):  # stderr closed, or its reader gone
                print(
                    f"ringflow: stopping job {self.dag.name!r} gracefully; Ctrl-C again to kill it",
                    file=sys.stderr,
                    flush=True,
                )
            self._deferred = "stop"
        else:
            self._deferred = "kill"
            if self._in_pipe and self._process.exitcode is None:
                # The message being read may never complete (a coordinator frozen halfway
                # through sending it): end the coordinator without touching the pipe; its
                # end closes, the read ends, and the kill is carried out after it.
                self._process.terminate()
        if not (self._in_pipe or self._starting):
            self._act()

    def _act(self) -> None:
        """Carry out a Ctrl-C: a graceful stop, or a kill and ``KeyboardInterrupt``."""
        action, self._deferred = self._deferred, None
        if action == "stop":
            self.stop()
        elif action == "kill":
            self.kill()  # nothing to kill if the message just read was the outcome
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _pipe(self) -> Iterator[None]:
        """Around one whole message on the pipe; a Ctrl-C meanwhile acts after it."""
        self._in_pipe = True
        try:
            yield
        finally:
            self._in_pipe = False
            if self._deferred is not None:
                self._act()

    @property
    def coordinator_pid(self) -> int | None:
        return self._process.pid

    def _pump(self, timeout: float | None) -> None:
        """Read whatever the coordinator sent, waiting up to ``timeout`` for something."""
        if self._outcome is not None:
            return
        ready = wait([self._conn, self._process.sentinel], timeout)
        if self._conn in ready or self._conn.poll():
            try:
                while self._conn.poll():
                    with self._pipe():  # taken before a Ctrl-C meanwhile is acted on
                        self._take(self._conn.recv())
                    if self._outcome is not None:
                        return
            except (EOFError, OSError):
                pass
        if self._process.sentinel in ready and self._outcome is None:
            self._process.join(5.0)
            remove_segments(self.id)  # (its temporaries: once its workers are dead, in _finish)
            hint = ""
            if self._process.exitcode == 1 and not self.pids:
                hint = (
                    "; if the script that launched it starts the job at import time, put "
                    "that under `if __name__ == '__main__':` (worker processes are spawned "
                    "and import the main module again)"
                )
            self._outcome = JobFailed(
                f"job {self.dag.name!r}: the coordinator {how_it_ended(self._process.exitcode)} "
                f"before reporting a result{hint}",
                exitcode=self._process.exitcode,
            )

    def _take(self, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == "metrics":
            self._metrics_port = message[1]
        elif tag == "started":
            self.pids = [pid for _, _, pid in message[1]]
        elif tag == "status":
            self._status = message[1]
            self._status_asked = False
        elif tag in ("result", "failed"):
            self._outcome = message[1]
            self._restore_sigint()

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job ends; its result, or ``JobFailed``.

        ``TimeoutError`` if ``timeout`` seconds pass first (the job keeps running). Ctrl-C
        once: graceful stop, keep waiting; twice: kill, then raise ``KeyboardInterrupt``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._outcome is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {self.dag.name!r} still running after {timeout} s")
            try:
                self._pump(0.25 if left is None else min(left, 0.25))
            except KeyboardInterrupt:
                if self.interrupted:
                    self.kill()
                    with contextlib.suppress(RingflowError, TimeoutError):
                        self.wait(timeout=30)
                    raise
                self.interrupted = True  # before stop(): a second Ctrl-C may land inside it
                self.stop()
        return self._finish()

    def _finish(self) -> JobResult:
        self._restore_sigint()
        self._process.join(10.0)
        if self._process.exitcode is None:  # pragma: no cover - coordinator stuck in teardown
            self._process.kill()
            self._process.join(5.0)
        remove_segments(self.id)
        # None are left unless the coordinator died or its teardown was cut short; then its
        # workers die by PDEATHSIG (SIGKILL), and cannot abort their sinks.
        _wait_gone(self.pids, WORKERS_GONE_S)
        remove_temporaries(self._writes, self.id)
        _abandon(self._requests, self._conn)
        outcome = self._outcome
        if isinstance(outcome, JobFailed):
            raise outcome
        assert outcome is not None
        return outcome

    @property
    def metrics_port(self) -> int | None:
        """The port the job's metrics are served on (the one bound, where the settings gave
        0); None without metrics, or if the job failed before binding it. Read right after
        ``launch``, it waits (up to ``startup_timeout``) for the coordinator to bind it; from
        another thread it only says what the launching thread has read."""
        mine = threading.get_ident() == self._thread
        if mine and self.settings.metrics_port is not None and self._metrics_port is None:
            deadline = time.monotonic() + self.settings.startup_timeout
            while self._metrics_port is None and self._outcome is None:
                if time.monotonic() >= deadline:
                    break
                self._pump(0.05)
        return self._metrics_port

    def done(self) -> bool:
        self._pump(0)
        return self._outcome is not None

    def status(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Each worker's state and counters, as the coordinator sees them now ([] if its
        answer takes longer than ``timeout``).

        One request at a time: a call made while an earlier call's answer is still on its
        way waits for that answer rather than asking again, so a caller that polls with a
        short timeout never piles answers up (in the coordinator's outbox, which would grow
        for as long as nobody read it)."""
        if not self._status_asked:
            self._status = []
            if not self._request(("status",)):
                return []
            self._status_asked = True
        deadline = time.monotonic() + timeout
        while True:  # one read at least, even with no time to wait
            self._pump(max(0.0, min(deadline - time.monotonic(), 0.1)))
            answered = not self._status_asked or self._outcome is not None
            if answered or time.monotonic() >= deadline:
                return [] if self._status_asked else self._status

    def stop(self) -> None:
        """Graceful stop: sources end now, the records in flight drain to the sinks."""
        self._request(("stop",))

    def kill(self) -> None:
        """Immediate stop: workers are terminated, sinks discard partial output."""
        if self._outcome is not None:
            return  # the job has ended; its coordinator is only tidying up
        if not self._request(("kill",)) and self._process.exitcode is None:
            self._process.terminate()

    def _request(self, message: tuple[Any, ...]) -> bool:
        if self._outcome is not None:
            return False
        try:
            with self._pipe():
                self._requests.send(message)
            return True
        except (OSError, ValueError):
            return False

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._outcome is None:
            self.kill()
            with contextlib.suppress(RingflowError):
                self.wait(timeout=30)


def _weak_handler(job: Job) -> Callable[[int, Any], None]:
    """``job._on_sigint`` without keeping ``job`` alive: a Job dropped without ``wait`` is
    collected and tears its job down. Once it is gone, Ctrl-C raises KeyboardInterrupt
    again, as it did before the launch (and the handler puts the default one back)."""
    ref = weakref.ref(job)

    def on_sigint(signum: int, frame: Any) -> None:
        live = ref()
        if live is None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        live._on_sigint(signum, frame)

    return on_sigint


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait up to ``timeout`` s until none of ``pids`` runs (gone, or a zombie)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _abandon(*conns: Connection) -> None:
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.close()


def launch(dag: Dag, **settings: Any) -> Job:
    """Validate ``dag`` and start it; settings are the fields of ``Settings``."""
    dag.validate()
    config = Settings.checked(**settings)
    check_shared_memory(dag, config)
    occupy_standard_fds()
    return Job(dag, config)


def occupy_standard_fds() -> None:
    """Open /dev/null on any of fds 0-2 that is closed (`2>&-`, or closed by the program).
    Else the job's pipe could be given that number: this process's and the coordinator's
    (which inherits 0-2) writes to stderr, a progress line or a log line, would then go into
    the pipe and break its framing, and the job would stand still."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)  # (inheritable, as dup2 makes it)
                os.close(null)
            else:  # os.open gave the free number itself: made not inheritable, as it does
                os.set_inheritable(fd, True)  # the coordinator and workers start with it


def check_shared_memory(dag: Dag, config: Settings) -> None:
    """Refuse a job whose segments do not fit in the room ``/dev/shm`` has now. Segments are
    sized up front but filled lazily, so a job that outgrows it would start and then die of
    SIGBUS on its first write past the room. Best effort: jobs started just before and not
    yet filled do not show in the free space yet."""
    try:
        fs = os.statvfs(SHM_DIR)
    except OSError:
        return  # no /dev/shm to ask: creating the first segment reports it
    if not fs.f_blocks:
        return  # a tmpfs without a size limit reports no blocks at all
    page = fs.f_frsize
    plan_ = plan(dag)
    sizes = [segment_size(config.slots, config.slot_size)] * len(plan_.links)
    sizes.append(len(plan_.replicas) * ROW_BYTES)  # the stats block
    need = sum(-(-size // page) * page for size in sizes)
    free = fs.f_bavail * page
    if need > free:
        mib = 1 << 20
        raise RingflowError(
            f"job {dag.name!r} needs {need / mib:,.0f} MiB of shared memory for its "
            f"{len(plan_.links)} channels ({config.slots} slots of {config.slot_size:,} bytes "
            f"each) and {SHM_DIR} has {free / mib:,.0f} MiB free: lower slots or slot_size "
            f"(launch(dag, slots=..., slot_size=...)), or give {SHM_DIR} more room "
            f"(docker run --shm-size=1g)"
        )


def run(dag: Dag, *, timeout: float | None = None, **settings: Any) -> JobResult:
    """``launch`` then ``wait``; a job still running after ``timeout`` seconds is killed
    (and ``TimeoutError`` raised)."""
    with launch(dag, **settings) as job:
        return job.wait(timeout)
