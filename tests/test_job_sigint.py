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


def test_a_ctrl_c_while_the_coordinator_starts_is_held_then_stops_the_job(monkeypatch, capsys):
    """It is blocked while the coordinator process starts, not ignored (it used to be
    lost: the job ran to its end), then taken by the Job's handler as a graceful stop."""
    import multiprocessing.context

    from jobs import Collect, Numbered

    from engine import Dag, launch

    start = multiprocessing.context.SpawnProcess.start

    def start_and_press_ctrl_c(process: Any) -> None:
        start(process)
        os.kill(os.getpid(), signal.SIGINT)  # lands mid-launch

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_and_press_ctrl_c)
    dag = Dag("ctrl-c-at-start")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.001)).sink("out", Collect())
    with launch(dag) as job:
        assert job.interrupted
        result = job.wait(60.0)
    assert result.stopped
    assert "stopping job 'ctrl-c-at-start' gracefully" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
