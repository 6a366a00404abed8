"""The command line on the paths a supervisor or a shell takes: a signal to the whole
process group (``timeout``, systemd, a terminal), stderr closed, or its reader gone.

The coordinator and workers run in a process group of their own, so a signal to the
driver's group reaches the driver alone; the CLI takes SIGTERM as Ctrl-C (a graceful stop).
Every wait is bounded; the job is a long generated one, stopped or left to finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("ringflow-")}


def _bars(tmp_path: Path, ticks: int, **popen: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "engine", "bars", "--generate", str(ticks)]
    command += ["--output", str(tmp_path / "bars.csv"), "--replicas", "1"]
    return subprocess.Popen(command, cwd=ROOT, text=True, **popen)  # type: ignore[call-overload]


def _wait_for_ticks(proc: subprocess.Popen[str]) -> None:
    """Read progress lines until one shows ticks flowing (a line a second)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, "the job ended before it ran"
        if "records in: ticks=" in line and "ticks=0 " not in line:
            return
    raise AssertionError("no ticks within the wait")


def test_sigterm_to_the_whole_group_stops_the_job_gracefully(tmp_path: Path) -> None:
    before = _segments()
    proc = _bars(
        tmp_path,
        10**9,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as a supervisor or `timeout` starts it
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
    assert _segments() <= before


def test_a_closed_stderr_changes_nothing(tmp_path: Path) -> None:
    proc = _bars(tmp_path, 200_000, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert "bars done: ticks in 200,000" in out


def test_a_progress_reader_that_goes_away_leaves_the_job_running(tmp_path: Path) -> None:
    """``... 2>&1 >out | head -1``: the progress lines stop, the job finishes."""
    proc = _bars(tmp_path, 20_000_000, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_ticks(proc)
        assert proc.stderr is not None
        proc.stderr.close()
        out = proc.stdout.read() if proc.stdout is not None else ""
        proc.wait(WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "bars done: ticks in 20,000,000" in out
