"""Ctrl-C in the driver never cuts a message on the coordinator pipe in half.

The SIGINT handler runs between any two bytecodes of the main thread, including inside
``Connection.recv`` or ``send``. These tests make it land exactly there (the connection
calls it mid-message) and check that nothing is written to the pipe until the message is
whole, that the message is not lost, and that the Ctrl-C then does what it should: the
first asks for a graceful stop, the second kills and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import signal
from multiprocessing import Pipe
from types import SimpleNamespace
from typing import Any

import pytest

from engine.job import Job


class MidMessageConn:
    """A real pipe end whose ``recv`` and ``send`` take a Ctrl-C halfway through."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.ours, self.theirs = Pipe()
        self.sent: list[Any] = []
        self.sent_during: list[Any] = []
        self.interrupt_in: set[str] = set()  # where the next Ctrl-C lands

    def fileno(self) -> int:
        return self.ours.fileno()

    def poll(self, timeout: float = 0.0) -> bool:
        return self.ours.poll(timeout)

    def recv(self) -> Any:
        if "recv" in self.interrupt_in:
            self.interrupt_in.discard("recv")
            before = len(self.sent)
            self.job._on_sigint(signal.SIGINT, None)  # lands mid-read
            self.sent_during.extend(self.sent[before:])
        return self.ours.recv()

    def send(self, message: Any) -> None:
        if "send" in self.interrupt_in:
            self.interrupt_in.discard("send")
            before = len(self.sent)
            self.job._on_sigint(signal.SIGINT, None)  # lands mid-write
            self.sent_during.extend(self.sent[before:])
        self.sent.append(message)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


class FakeCoordinator:
    """Stands in for the coordinator process: never exits, counts terminate()."""

    def __init__(self, sentinel: int) -> None:
        self.sentinel = sentinel
        self.exitcode = None
        self.pid = None
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1


@pytest.fixture
def job():
    job = Job.__new__(Job)  # the driver side only: no coordinator behind it
    never_r, never_w = os.pipe()
    job.dag = SimpleNamespace(name="sigint")
    job._outcome = None
    job._status = []
    job._status_asked = False
    job.interrupted = False
    job._in_pipe = False
    job._deferred = None
    job._starting = False
    job._previous_sigint = None
    job._process = FakeCoordinator(never_r)
    job._conn = job._requests = conn = MidMessageConn(job)
    yield job
    conn.close()
    os.close(never_r)
    os.close(never_w)


def test_first_ctrl_c_mid_read_stops_after_the_message(job, capsys):
    job._conn.interrupt_in = {"recv"}
    job._conn.theirs.send(("status", [{"node": "src"}]))
    job._pump(1.0)
    assert job._conn.sent_during == []  # nothing written while the message was half read
    assert job._conn.sent == [("stop",)]  # then the graceful stop
    assert job._status == [{"node": "src"}]  # and the message was not lost
    assert job.interrupted
    assert "stopping job 'sigint' gracefully" in capsys.readouterr().err


def test_second_ctrl_c_mid_read_kills_after_the_message(job):
    job.interrupted = True  # the first Ctrl-C came earlier
    job._conn.interrupt_in = {"recv"}
    job._conn.theirs.send(("status", [{"node": "bars"}]))
    with pytest.raises(KeyboardInterrupt):
        job._pump(1.0)
    assert job._conn.sent_during == []
    assert job._conn.sent == [("kill",)]
    assert job._status == [{"node": "bars"}]
    # Were the message never to complete, the read would end anyway: the coordinator was
    # told to go by a signal, which touches no pipe.
    assert job._process.terminated == 1


def test_a_kill_after_the_outcome_arrived_only_interrupts(job):
    job.interrupted = True
    job._conn.interrupt_in = {"recv"}
    job._conn.theirs.send(("result", "the result"))
    with pytest.raises(KeyboardInterrupt):
        job._pump(1.0)
    assert job._outcome == "the result"
    assert job._conn.sent == []  # no kill for a job that has ended


def test_ctrl_c_mid_write_waits_for_the_message_to_be_sent(job):
    job._conn.interrupt_in = {"send"}
    job.status(timeout=0.01)  # sends ("status",); a Ctrl-C lands inside that send
    assert job._conn.sent_during == []
    assert job._conn.sent == [("status",), ("stop",)]


def test_ctrl_c_outside_the_pipe_acts_at_once(job):
    job._on_sigint(signal.SIGINT, None)
    assert job._conn.sent == [("stop",)]
    with pytest.raises(KeyboardInterrupt):
        job._on_sigint(signal.SIGINT, None)
    assert job._conn.sent == [("stop",), ("kill",)]


def _ctrl_c_during_start(monkeypatch, taken_by_another_thread: bool) -> None:
    """Make a Ctrl-C (process-directed, as a terminal's is) land just after the coordinator
    process is spawned, while launch is still starting it. Where another thread takes it,
    the start goes on once the main thread has run a handler for it."""
    import multiprocessing.context
    import time

    start = multiprocessing.context.SpawnProcess.start
    taken = []
    on_sigint = Job._on_sigint

    def noting(job: Job, signum: int, frame: Any) -> None:
        taken.append(signum)
        on_sigint(job, signum, frame)

    def start_and_press_ctrl_c(process: Any) -> None:
        start(process)
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10.0
        while taken_by_another_thread and not taken and time.monotonic() < deadline:
            time.sleep(0.001)  # returns to the interpreter, which runs a pending handler

    monkeypatch.setattr(Job, "_on_sigint", noting)
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_and_press_ctrl_c)


def _endless(name: str) -> Any:
    from jobs import Collect, Numbered

    from engine import Dag

    dag = Dag(name)
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.001)).sink("out", Collect())
    return dag


@pytest.mark.parametrize("other_thread", [False, True])
def test_a_ctrl_c_while_the_coordinator_starts_is_held_then_stops_the_job(
    monkeypatch, capsys, other_thread
):
    """It used to be lost (the job ran to its end). With another thread in the driver (a
    metrics server, say), the kernel hands a process-directed Ctrl-C to that thread while
    this one blocks it: it used to reach Python's default handler and escape ``launch`` as
    KeyboardInterrupt. Either way it is now a graceful stop once the coordinator runs."""
    import threading

    from engine import launch

    _ctrl_c_during_start(monkeypatch, other_thread)
    done = threading.Event()
    other = threading.Thread(target=done.wait, args=(60.0,))
    if other_thread:
        other.start()
    try:
        with launch(_endless("ctrl-c-at-start")) as job:
            assert job.interrupted
            result = job.wait(60.0)
    finally:
        done.set()
        if other_thread:
            other.join(5.0)
    assert result.stopped
    assert "stopping job 'ctrl-c-at-start' gracefully" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_second_ctrl_c_while_the_coordinator_starts_kills_the_job(monkeypatch):
    """Two presses the handler takes during the start (while this thread blocks SIGINT, two
    presses in quick succession coalesce into one pending signal; another thread takes
    each): the job is killed once the coordinator runs, and launch raises."""
    import multiprocessing.context

    from engine import launch

    start = multiprocessing.context.SpawnProcess.start
    started: list[Any] = []

    def start_and_take_two_ctrl_c(process: Any) -> None:
        start(process)
        started.append(process)
        for _ in range(2):  # what Python does with each press another thread takes
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_and_take_two_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        launch(_endless("two-ctrl-c-at-start"))
    (coordinator,) = started
    assert coordinator.exitcode is not None  # launch waited for the teardown
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_start_that_fails_leaves_sigint_as_it_was(monkeypatch):
    import multiprocessing.context

    from engine import launch

    def fail(process: Any) -> None:
        raise OSError("no more processes")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", fail)
    with pytest.raises(OSError, match="no more processes"):
        launch(_endless("start-fails"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_launch_leaves_a_blocked_sigint_blocked():
    """The program's signal mask is its own: launch restores it rather than unblocking."""
    from jobs import Collect, Numbered

    from engine import Dag, launch

    dag = Dag("sigint-blocked")
    dag.source("src", Numbered(100)).sink("out", Collect())
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with launch(dag) as job:
            assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            assert len(job.wait(60.0).collected("out")) == 100
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
