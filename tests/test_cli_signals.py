"""The command line on the paths a supervisor or a shell takes: a signal to the whole
process group (``timeout``, systemd, a terminal), stderr closed, or its reader gone.

The coordinator and workers run in a process group of their own, so a signal to the
driver's group reaches the driver alone; the CLI takes SIGTERM as Ctrl-C (a graceful stop).
Every wait is bounded; the job is a long generated one, stopped or left to finish.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli
from engine.cli import PROGRESS_EVERY_S, SAME_SIGTERM_S, supervise

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in pids):
            return True
        time.sleep(0.02)
    return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace")


def _segments(driver: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"ringflow-{driver}-")]


def _bars(
    tmp_path: Path, ticks: int, close_stderr: bool = False, **popen: object
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "engine", "bars", "--generate", str(ticks)]
    command += ["--output", str(tmp_path / "bars.csv"), "--replicas", "1"]

    def prepare() -> None:
        # A run started in the background (``cmd &``) ignores SIGINT, and its children
        # inherit that: give the command line its Ctrl-C back.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if close_stderr:
            os.close(2)  # `2>&-`

    return subprocess.Popen(  # type: ignore[call-overload]
        command, cwd=ROOT, text=True, preexec_fn=prepare, **popen
    )


def _wait_for_ticks(proc: subprocess.Popen[str]) -> None:
    """Read progress lines (one a second) until one shows ticks flowing; every read is
    bounded (select on the pipe, then the bytes that are there)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if select.select([fd], [], [], deadline - time.monotonic())[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the job ended before it ran: {seen!r}"
            seen += chunk
            if any(b"ticks=" in ln and b"ticks=0 " not in ln for ln in seen.split(b"\n")):
                return
    raise AssertionError(f"no ticks within the wait: {seen!r}")


def test_sigterm_to_the_whole_group_stops_the_job_gracefully(tmp_path: Path) -> None:
    proc = _bars(
        tmp_path,
        10**9,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as `timeout` or a shell's job starts it
    )
    try:
        _wait_for_ticks(proc)
        job = [p for p in _descendants(proc.pid) if "resource_tracker" not in _cmdline(p)]
        assert job and all(os.getpgid(p) != proc.pid for p in job)  # none in the driver's
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "bars stopped early" in out and "stopping job 'bars' gracefully" in err
    assert (tmp_path / "bars.csv").read_text().startswith("symbol,window_start")
    assert _gone(job)
    assert not _segments(proc.pid)


def test_sigterm_twice_at_once_as_timeout_sends_it_is_one_graceful_stop(tmp_path: Path) -> None:
    # GNU timeout signals the command, then the command's group: two SIGTERMs, a moment
    # apart. Taken as Ctrl-C twice, they killed the job (exit 130, no output) in 3 runs of 8.
    proc = _bars(
        tmp_path, 10**9, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _wait_for_ticks(proc)
        os.kill(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "bars stopped early" in out and "interrupted" not in err
    assert (tmp_path / "bars.csv").read_text().startswith("symbol,window_start")


def test_a_second_sigterm_within_a_second_is_the_same_request(monkeypatch) -> None:
    from types import SimpleNamespace

    import engine.cli

    now = [100.0]
    monkeypatch.setattr(engine.cli, "_sigterm_clock", lambda: now[0])
    calls: list[int] = []
    job = SimpleNamespace(_on_sigint=lambda signum, frame: calls.append(signum))
    handler = engine.cli._sigterm_as_ctrl_c(job)  # type: ignore[arg-type]
    handler(signal.SIGTERM, None)
    now[0] += 0.001  # timeout(1)'s second SIGTERM, to the group
    handler(signal.SIGTERM, None)
    assert calls == [signal.SIGTERM]  # one graceful stop
    now[0] += SAME_SIGTERM_S
    handler(signal.SIGTERM, None)  # a SIGTERM a second later asks again: a kill
    assert calls == [signal.SIGTERM, signal.SIGTERM]


def test_a_closed_stderr_changes_nothing(tmp_path: Path) -> None:
    proc = _bars(tmp_path, 200_000, stdout=subprocess.PIPE, close_stderr=True)
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert "bars done: ticks in 200,000" in out


def test_stderr_closed_by_the_program_itself_cannot_jam_the_job(tmp_path: Path) -> None:
    """fd 2 closed after start-up, sys.stderr still set: the job's pipe must not take that
    number, or the progress lines written to stderr land in the pipe and the job hangs."""
    code = (
        "import os, runpy, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        f"os.close(2); sys.argv = ['engine', 'bars', '--generate', '3000000', '--output', "
        f"{str(tmp_path / 'b.csv')!r}]; runpy.run_module('engine', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, text=True, stdout=subprocess.PIPE
    )
    try:
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        for pid in [*_descendants(proc.pid), proc.pid] if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)  # (a jammed job: its coordinator too)
        proc.wait(WAIT)
        for name in _segments(proc.pid):  # what a jammed job's SIGKILL left
            os.unlink(f"/dev/shm/{name}")
    assert proc.returncode == 0
    assert "bars done: ticks in 3,000,000" in out


class _Job:
    """What ``supervise`` reads of a Job: ``wait`` times out ``waits`` times, then returns."""

    def __init__(self, waits: int) -> None:
        self.waits = waits
        self.status_calls = 0

    def wait(self, timeout: float | None = None) -> str:
        if self.waits:
            self.waits -= 1
            raise TimeoutError
        return "the result"

    def status(self, timeout: float | None = None) -> list[dict[str, object]]:
        self.status_calls += 1
        return [{"node": "bars", "records_in": 1_000 * self.status_calls}]


class _GoneReader:
    """A stderr whose reader went away: every write is a BrokenPipeError."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass


def test_supervise_stops_progress_lines_when_their_reader_is_gone(monkeypatch) -> None:
    """The first progress line that cannot be written ends the progress lines, not the wait:
    the job's result still comes back, and no further line (or status request) is tried."""
    stderr = _GoneReader()
    monkeypatch.setattr(sys, "stderr", stderr)
    job = _Job(waits=4)
    assert supervise(job) == "the result"  # type: ignore[arg-type]
    assert (stderr.writes, job.status_calls) == (1, 1)


def test_supervise_prints_a_progress_line_per_timed_out_wait(monkeypatch, capsys) -> None:
    job = _Job(waits=3)
    assert supervise(job) == "the result"  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "records in: bars=1,000",
        "records in: bars=2,000",
        "records in: bars=3,000",
    ]
    assert supervise(_Job(waits=3), quiet=True) == "the result"  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""


def test_a_progress_reader_that_goes_away_leaves_the_job_running(tmp_path: Path) -> None:
    """``... 2>&1 >out | head -1``: progress lines stop, the job goes on (it used to die of
    BrokenPipeError at the next line); then a Ctrl-C stops it gracefully. End to end, so
    on a loaded machine the driver may not reach a progress line in the time given;
    ``test_supervise_stops_progress_lines_when_their_reader_is_gone`` holds that path
    deterministically."""
    proc = _bars(tmp_path, 10**9, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_ticks(proc)
        assert proc.stderr is not None
        proc.stderr.close()
        time.sleep(2 * PROGRESS_EVERY_S + 0.5)  # two progress lines' time: the driver writes
        assert proc.poll() is None, "the job died when its progress reader went away"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "bars stopped early" in out


def test_the_twin_of_a_sigterm_taken_at_the_end_cannot_kill_the_exiting_driver(
    monkeypatch,
) -> None:
    """``timeout`` sends SIGTERM twice: a twin arriving after the graceful stop finished
    must neither interrupt the summary nor, once the interpreter shuts down (which puts
    SIGTERM back to its default), kill the driver: exit status -15 for a stop that went
    well. Within SAME_SIGTERM_S of the first it is ignored; later ones act again."""
    clock = [100.0]
    monkeypatch.setattr(cli, "_sigterm_clock", lambda: clock[0])
    monkeypatch.setattr(cli, "_last_sigterm", [-SAME_SIGTERM_S])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):  # the first: taken
            cli._sigterm_as_interrupt(signal.SIGTERM, None)
        clock[0] += SAME_SIGTERM_S / 2
        cli._sigterm_as_interrupt(signal.SIGTERM, None)  # its twin: ignored
        cli._restore_sigterm(previous, exiting=False)
        assert signal.getsignal(signal.SIGTERM) == previous  # main called in a program
        cli._restore_sigterm(previous, exiting=True)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # survives shutdown
        signal.signal(signal.SIGTERM, previous)
        clock[0] += SAME_SIGTERM_S
        with pytest.raises(KeyboardInterrupt):  # a later one is a new request
            cli._sigterm_as_interrupt(signal.SIGTERM, None)
        clock[0] += 2 * SAME_SIGTERM_S
        signal.signal(signal.SIGTERM, cli._sigterm_as_interrupt)  # as main leaves it
        cli._restore_sigterm(previous, exiting=True)
        assert signal.getsignal(signal.SIGTERM) == previous  # none pending: as it was
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_main_off_the_main_thread_returns_its_status_for_a_command_that_starts_no_job() -> None:
    """It used to put SIGTERM's handler back unconditionally, which raises ValueError off
    the main thread and replaced the exit status 2."""
    import threading

    out: list[object] = []

    def run() -> None:
        try:
            out.append(cli.main(["run", "no_such_module:dag", "--quiet"]))
        except BaseException as exc:  # what escaped is the finding
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert out == [2]
