"""End-to-end runs across real processes, and every way a job can end.

Each test bounds its waits; the autouse fixture checks that no segment of this test process
is left in /dev/shm, and ``_assert_gone`` that no process of the job is left running.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from jobs import (
    AsyncNumbered,
    AsyncUnpicklable,
    Collect,
    Explode,
    Fragile,
    ManyCounters,
    Numbered,
    Results,
    RunningSum,
    SetsAside,
    SlowToOpen,
    Stall,
    StallsAfterClose,
    StartStamped,
    StubbornFile,
    tick_with_a_tuple_symbol,
)

from engine import Dag, JobFailed, RingflowError, launch, run
from engine.coordinator import Settings
from engine.job import check_shared_memory
from engine.testing import run_inline

WAIT = 60.0  # generous bound for a loaded 2-core machine; tests finish far sooner


def key(record):
    return record[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _assert_gone(pids: list[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in pids if _alive(p)], "processes of the job are still running"


def _arrived(job, node: str, records: int, within: float = 20.0) -> bool:
    """Whether ``node`` has taken in ``records`` records within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if sum(r["records_in"] for r in job.status() if r["node"] == node) >= records:
            return True
    return False


def _wait_started(job, within: float = WAIT) -> list[int]:
    deadline = time.monotonic() + within
    while not job.pids and time.monotonic() < deadline:
        job.status(timeout=0.5)
    assert job.pids, "workers did not start"
    return list(job.pids)


def keyed_dag(count: int = 20_000, **source) -> Dag:
    dag = Dag("keyed")
    src = dag.source("src", Numbered(count, keys=13, **source), parallelism=2)
    summed = src.key_by(key).apply("sum", RunningSum(), parallelism=3)
    summed.sink("out", Collect())
    return dag


def test_keyed_dag_across_processes_equals_inline():
    result = run(keyed_dag(), timeout=WAIT)
    inline = run_inline(keyed_dag())
    assert sorted(result.collected("out")) == sorted(inline.collected("out"))
    assert result.nodes["src"].records_out == 20_000
    assert result.nodes["sum"].records_in == 20_000
    assert result.nodes["out"].records_in == inline.nodes["out"].records_in


def test_sources_start_together_once_every_worker_is_ready():
    # The sink takes half a second to set up: no source replica may produce before then.
    dag = Dag("start-together")
    dag.source("src", StartStamped(), parallelism=2).sink("out", SlowToOpen(0.5))
    result = run(dag, timeout=WAIT)
    [(opened_ns, records)] = result.sinks["out"]
    assert sorted(replica for _, replica in records) == [0, 1]
    assert min(started for started, _ in records) >= opened_ns


def test_a_stop_before_the_sources_start_ends_their_streams_empty():
    dag = Dag("stop-first")
    dag.source("src", Numbered(0, forever=True), parallelism=2).sink("out", SlowToOpen(1.0))
    job = launch(dag)
    job.stop()  # reaches the sources while the sink is still setting up
    result = job.wait(WAIT)
    assert result.stopped
    assert result.sinks["out"][0][1] == []
    assert result.nodes["src"].records_out == 0
    _assert_gone([*job.pids, job.coordinator_pid])


def test_async_source_runs_on_the_event_loop():
    dag = Dag("async")
    dag.source("src", AsyncNumbered(95)).sink("out", Collect())
    result = run(dag, timeout=WAIT)
    assert [r[1] for r in result.collected("out")] == list(range(95))


def test_user_exception_fails_the_job_with_node_and_traceback():
    dag = Dag("boom")
    dag.source("src", Numbered(10_000)).rebalance().apply("explode", Explode(after=500), 2).sink(
        "out", Collect()
    )
    job = launch(dag)
    with pytest.raises(JobFailed) as info:
        job.wait(WAIT)
    failure = info.value
    assert failure.node == "explode", str(failure)
    assert failure.replica in (0, 1)
    assert failure.error == "ValueError"
    assert "boom after" in str(failure)
    assert "raise ValueError" in (failure.traceback or "")
    _assert_gone([*job.pids, job.coordinator_pid])


def test_worker_killed_with_sigkill_is_reported_with_its_signal():
    dag = Dag("killed")
    dag.source("src", Numbered(0, forever=True)).apply(
        "victim", Explode(after=1000, kill_signal=signal.SIGKILL)
    ).sink("out", Collect())
    job = launch(dag)
    with pytest.raises(JobFailed) as info:
        job.wait(WAIT)
    assert info.value.node == "victim"
    assert info.value.exitcode == -signal.SIGKILL
    assert "killed by signal SIGKILL" in str(info.value)
    _assert_gone([*job.pids, job.coordinator_pid])


def test_external_sigkill_is_detected_within_a_second():
    dag = Dag("external")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.001)).sink("out", Collect())
    job = launch(dag)
    pids = _wait_started(job)
    os.kill(pids[-1], signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(JobFailed, match="killed by signal SIGKILL"):
        job.wait(WAIT)
    # Detection is by the process sentinel; the bound here leaves room for teardown.
    assert time.monotonic() - killed_at < 5.0
    _assert_gone([*pids, job.coordinator_pid])


def test_records_that_break_their_edges_type_are_blamed_on_their_producer():
    from engine.records import Tick
    from operators import Map

    dag = Dag("mistyped")
    dag.source("src", Numbered(100)).apply(
        "map", Map(tick_with_a_tuple_symbol, output_type=Tick)
    ).sink("out", Collect())
    with pytest.raises(JobFailed) as info:
        run(dag, timeout=WAIT)
    assert info.value.node == "out" and info.value.error == "RecordError"
    assert "records from node 'map' replica 0 do not decode as its output type Tick" in str(
        info.value
    )


def test_run_kills_a_job_still_running_at_its_timeout():
    # It raised TimeoutError and left the job running, with no handle to stop it.
    dag = Dag("endless")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002)).sink("out", Collect())
    with pytest.raises(TimeoutError, match=r"still running after 1\.0 s"):
        run(dag, timeout=1.0)
    deadline = time.monotonic() + WAIT
    while multiprocessing.active_children():
        assert time.monotonic() < deadline, "the job's coordinator is still running"
        time.sleep(0.02)


def test_a_worker_has_no_watermark_before_it_starts():
    from engine.batch import MIN_WATERMARK
    from engine.stats import WATERMARK, StatsBlock

    block = StatsBlock(f"ringflow-{os.getpid()}-statstest", 3, create=True)
    try:
        assert [block.get(i, WATERMARK) for i in range(3)] == [MIN_WATERMARK] * 3
    finally:
        block.unlink()
        block.close()


def test_hung_worker_fails_on_heartbeat_timeout():
    dag = Dag("hung")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.001)).apply(
        "stuck", Explode(after=100, hang=True)
    ).sink("out", Collect())
    job = launch(dag, heartbeat_timeout=0.5, stop_grace=0.5)
    with pytest.raises(JobFailed, match=r"node 'stuck' replica 0 is hung: no heartbeat"):
        job.wait(WAIT)
    _assert_gone([*job.pids, job.coordinator_pid])


def test_a_set_up_longer_than_the_heartbeat_timeout_is_not_taken_for_hung():
    """A sink slow to open (a connection) is startup_timeout's to bound: once ready it is
    watched with a fresh heartbeat, even when its input then stays quiet a while."""
    dag = Dag("slow-open")
    dag.source("src", Numbered(100, first_after=0.5)).sink("out", SlowToOpen(4.0))
    result = run(dag, timeout=WAIT, heartbeat_timeout=2.0)  # > first_after, with margin
    assert len(result.sinks["out"][0][1]) == 100


def test_a_ready_source_that_stops_before_go_fails_on_heartbeat_timeout():
    """Between "ready" and "go" (another worker still setting up) a source is watched for
    heartbeats too; it used to fall between the start-up and the heartbeat checks."""
    dag = Dag("stopped-before-go")
    dag.source("src", Numbered(100)).sink("out", SlowToOpen(WAIT))
    job = launch(dag, heartbeat_timeout=1.0, stop_grace=0.5, startup_timeout=2 * WAIT)
    deadline = time.monotonic() + WAIT
    beats: list[float] = []
    while not beats or beats[-1] - beats[0] < 0.15:  # beating (0.25 s apart): awaits "go"
        assert time.monotonic() < deadline, "the source never became ready"
        (src,) = [r for r in job.status() if r["node"] == "src"]
        if src["pid"] and src["heartbeat_age_s"] is not None:
            beats.append(time.monotonic() - src["heartbeat_age_s"])
        time.sleep(0.05)
    os.kill(src["pid"], signal.SIGSTOP)
    with pytest.raises(JobFailed, match=r"node 'src' replica 0 is hung: no heartbeat"):
        job.wait(WAIT)
    _assert_gone([*job.pids, job.coordinator_pid])


def test_a_worker_that_finished_but_never_reports_fails_the_job():
    """Finished (state DONE) but frozen before its result was sent, it was watched by
    nothing: the job waited for it for ever. It is given heartbeat_timeout from its last
    beat."""
    dag = Dag("stalls-before-report")
    dag.source("src", Numbered(10)).sink("out", StallsAfterClose("send", 10 * WAIT))
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"node 'out' replica 0 finished its work but has not"):
        run(dag, timeout=WAIT, heartbeat_timeout=1.0, stop_grace=0.5)
    assert time.monotonic() - started < WAIT


def test_a_worker_frozen_after_its_report_does_not_hold_the_finished_job():
    """Every result is in, the last one's sender frozen on its way out: the job ends with
    them after heartbeat_timeout, and the teardown ends the straggler (it waited for ever
    when the others had exited before the last result arrived)."""
    dag = Dag("stalls-at-exit")
    dag.source("src", Numbered(10)).sink("out", StallsAfterClose("exit", 10 * WAIT))
    started = time.monotonic()
    result = run(dag, timeout=WAIT, heartbeat_timeout=2.0, stop_grace=0.5)
    assert result.sinks["out"] == ["closed"]
    assert result.nodes["out"].records_in == 10
    assert time.monotonic() - started < WAIT


def test_a_result_received_while_the_loop_was_busy_is_not_taken_for_a_missing_one():
    """Replica 0's result takes 3 s to unpickle on the coordinator's loop; replica 1's,
    sent meanwhile, waited whole in its pipe, and the watch failed replica 1 as not having
    reported (a review's repro: 3 of 3 runs)."""
    dag = Dag("busy-loop")
    dag.source("src", Numbered(20, keys=2)).rebalance().sink("out", Results(3.0, 0.5), 2)
    result = run(dag, timeout=WAIT, heartbeat_timeout=1.0, stop_grace=0.5)
    assert result.sinks["out"] == ["slow", "quick"]


def test_a_result_that_cannot_be_unpickled_fails_the_job_naming_the_node():
    dag = Dag("no-load")
    dag.source("src", Numbered(10)).sink("out", Results(None))
    with pytest.raises(JobFailed, match=r"node 'out' replica 0 sent a message that cannot be"):
        run(dag, timeout=WAIT)


def test_graceful_stop_drains_what_was_produced():
    job = launch(keyed_dag(0, forever=True, pause_every=1, pause=0.002))
    _wait_started(job)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        rows = job.status()
        if sum(r["records_in"] for r in rows if r["node"] == "out") > 1000:
            break
    job.stop()
    result = job.wait(WAIT)
    assert result.stopped
    produced = result.nodes["src"].records_out
    assert produced > 1000
    assert result.nodes["sum"].records_in == produced
    assert len([r for r in result.collected("out") if r[1] >= 0]) == produced
    _assert_gone([*job.pids, job.coordinator_pid])


@pytest.mark.parametrize("swallow", [False, True], ids=["cancelled", "ignores_the_cancel"])
def test_graceful_stop_ends_an_async_source_waiting_on_a_quiet_provider(swallow):
    """The stop cancels the source's await. A source that catches that and waits on is
    abandoned after ``stop_timeout``: the stop ends the graceful way all the same."""
    dag = Dag("quiet")
    source = AsyncNumbered(25, then_wait=True, swallow_cancel=swallow)
    dag.source("src", source).sink("out", Collect())
    job = launch(dag, stop_timeout=0.5)
    _wait_started(job)
    # The 25 records are a partial batch: they leave while the source is suspended in its
    # await, not when (never) it yields again.
    assert _arrived(job, "out", 25), "the partial batch was held while the source waited"
    job.stop()  # the source is inside an await that would never return
    result = job.wait(WAIT)
    assert result.stopped
    assert result.counter("abandoned") == (1 if swallow else 0)
    assert len(result.collected("out")) == 25  # nothing lost either way
    _assert_gone([*job.pids, job.coordinator_pid])


def test_an_async_source_that_waits_sends_what_it_made_at_once_not_after_its_linger():
    # An hour's linger: only the flush when the source starts waiting (it is idle, as an
    # operator with no input is) can get the records out while the test waits.
    dag = Dag("idle")
    dag.source("src", AsyncNumbered(25, then_wait=True)).sink("out", Collect())
    job = launch(dag, linger=3600.0)
    _wait_started(job)
    assert _arrived(job, "out", 25), "the records waited for the linger, the source idle"
    job.stop()
    result = job.wait(WAIT)
    assert len(result.collected("out")) == 25
    _assert_gone([*job.pids, job.coordinator_pid])


def test_an_async_sources_waits_for_its_next_item_count_as_idle_not_busy():
    # Three waits of 0.2 s each: about 0.6 s idle (the slack covers uvloop's millisecond
    # timers, which count from the loop's last look at the clock). Busy time is what is
    # left of the run, so the waits are not in it. A sync source never waits: no idle.
    dag = Dag("waits")
    dag.source("src", AsyncNumbered(30, pause_s=0.2)).sink("out", Collect())
    timing = run(dag, timeout=WAIT).nodes["src"].timing
    assert timing["idle_s"] >= 0.5
    dag = Dag("sync")
    dag.source("src", Numbered(30)).sink("out", Collect())
    assert run(dag, timeout=WAIT).nodes["src"].timing["idle_s"] == 0


def test_a_quiet_providers_wait_shows_as_idle_while_it_lasts():
    # Published from the worker's tick (at most 0.25 s apart), not only when the wait ends:
    # a dashboard must not show a source that waits for ever as busy.
    dag = Dag("quiet")
    dag.source("src", AsyncNumbered(10, then_wait=True)).sink("out", Collect())
    job = launch(dag)
    _wait_started(job)
    deadline = time.monotonic() + 20.0
    idle = 0.0
    while idle < 0.5 and time.monotonic() < deadline:
        idle = max(r["idle_s"] for r in job.status() if r["node"] == "src")
    assert idle >= 0.5, "the source's wait did not show as idle while it lasted"
    job.stop()
    assert len(job.wait(WAIT).collected("out")) == 10
    _assert_gone([*job.pids, job.coordinator_pid])


def test_a_record_that_fails_to_encode_while_an_async_source_waits_fails_the_job():
    dag = Dag("unpicklable")
    dag.source("src", AsyncUnpicklable()).sink("out", Collect())
    job = launch(dag)
    with pytest.raises(JobFailed, match=r"node 'src' replica 0.*cannot pickle"):
        job.wait(WAIT)
    _assert_gone([*job.pids, job.coordinator_pid])


def test_status_reports_every_worker():
    job = launch(keyed_dag(0, forever=True, pause_every=1, pause=0.002))
    _wait_started(job)
    rows = job.status()
    assert {(r["node"], r["replica"]) for r in rows} == {
        ("src", 0),
        ("src", 1),
        ("sum", 0),
        ("sum", 1),
        ("sum", 2),
        ("out", 0),
    }
    assert all(r["alive"] and r["pid"] for r in rows)
    job.stop()
    job.wait(WAIT)
    _assert_gone([*job.pids, job.coordinator_pid])


def test_backpressure_holds_the_source_at_the_credit_limit(tmp_path):
    release = tmp_path / "release"
    dag = Dag("stalled")
    dag.source("src", Numbered(50_000, batch=50)).sink("out", Stall(str(release)))
    job = launch(dag, slots=4, slot_size=1024, heartbeat_timeout=WAIT, linger=0.0)
    _wait_started(job)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        src = next(r for r in job.status() if r["node"] == "src")
        if src["backpressured_s"] > 0.2:
            break
    assert src["backpressured_s"] > 0.2
    assert src["records_out"] < 50_000  # held back, not buffered without bound
    release.touch()
    result = job.wait(WAIT)
    assert result.sinks["out"] == [50_000]


def test_status_counts_are_whole_while_a_sink_commits_and_busy_time_never_goes_back(tmp_path):
    release = tmp_path / "release"
    dag = Dag("held")
    dag.source("src", Numbered(5_000, batch=7)).sink("out", Stall(str(release), hold="close"))
    job = launch(dag, heartbeat_timeout=WAIT)
    busy: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + WAIT
    while True:
        rows = job.status()
        for r in rows:
            key = (r["node"], r["replica"])
            assert r["busy_s"] >= busy.get(key, 0.0), f"busy_s went back: {r}"
            busy[key] = r["busy_s"]
        sink = next((r for r in rows if r["node"] == "out"), None)
        src = next((r for r in rows if r["node"] == "src"), None)
        if src and sink and src["state"] == "done":
            break  # the source is done, so the sink has its EOF or will soon
        assert time.monotonic() < deadline, "the source never finished"
    while not (sink and sink["records_in"] == 5_000):  # its close() holds until released
        assert time.monotonic() < deadline, f"the sink's count stayed at {sink}"
        sink = next((r for r in job.status() if r["node"] == "out"), sink)
    release.touch()
    assert job.wait(WAIT).sinks["out"] == [5_000]


def test_records_sent_to_a_side_output_the_operator_does_not_declare_fail_the_job():
    # Validation sees every declared side output consumed; one not declared has no edge,
    # and its records would be lost, so the job fails naming it (it used to count them).
    dag = Dag("undeclared")
    src = dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002))
    src.apply("aside", SetsAside(every=2)).sink("out", Collect())
    with pytest.raises(
        JobFailed,
        match=r"node 'aside' sent \d+ record\(s\) to the side output 'odd', which it does "
        r"not declare: add 'odd' to its config's side_outputs",
    ) as failed:
        run(dag, timeout=WAIT)
    assert (failed.value.node, failed.value.error) == ("aside", "DagError")


def test_a_graceful_stop_keeps_the_bad_rows_read_until_then_in_the_dead_letter(tmp_path):
    # The dead letter was thrown away on a stop while bad_rows still counted its rows.
    from operators.sources import CsvTicks

    ticks = tmp_path / "ticks.csv"
    rows = (f"A,{i},1.0,1\n" if i % 1000 else "bad\n" for i in range(1, 200_001))
    ticks.write_text("symbol,ts,price,size\n" + "".join(rows))
    dead, release = tmp_path / "bad.csv", tmp_path / "release"
    dag = Dag("stop_with_bad_rows")
    dag.source("src", CsvTicks(str(ticks), dead_letter=str(dead))).sink("out", Stall(str(release)))
    job = launch(dag, slots=2, slot_size=4096, heartbeat_timeout=WAIT, linger=0.0)
    _wait_started(job)
    deadline = time.monotonic() + WAIT
    while not any(r["node"] == "src" and r["backpressured_s"] > 0 for r in job.status()):
        assert time.monotonic() < deadline, "the source was never held back"
    job.stop()
    release.touch()
    result = job.wait(WAIT)
    assert result.stopped and result.nodes["src"].records_out < 200_000 - 200
    with dead.open() as f:
        kept = f.read().splitlines()[1:]
    assert kept and len(kept) == result.counter("bad_rows")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


_DRIVER = textwrap.dedent(
    """
    import signal, sys, time
    # As in an interactive program, even if this test run was started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from engine import Dag, launch
    from jobs import Collect, Numbered, Stall
    if __name__ == "__main__":
        dag = Dag("orphan")
        dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002)).sink(
            "out", {sink})
        job = launch(dag, heartbeat_timeout=120)
        try:
            while not job.pids:
                job.status(timeout=0.5)
            print(job.id, job.coordinator_pid, *job.pids, flush=True)
            {then}
        except KeyboardInterrupt:  # a second Ctrl-C may land anywhere in this block
            print("KILLED", flush=True)
    """
)


def _driver(then: str, sink: str = "Collect()") -> tuple[subprocess.Popen[str], str, list[int]]:
    tests = os.path.dirname(__file__)
    code = _DRIVER.format(tests=tests, then=then, sink=sink)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tests,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line, "driver did not start its job"
    return proc, line[0], [int(p) for p in line[1:]]


def _job_segments(job_id: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"ringflow-{job_id}-")]


def test_driver_death_tears_the_job_down():
    proc, job_id, pids = _driver("time.sleep(600)")
    proc.kill()
    proc.wait(WAIT)
    _assert_gone(pids, within=WAIT)
    assert not _job_segments(job_id)


def test_a_job_dropped_without_wait_is_torn_down_when_collected():
    # The Ctrl-C handler launch installs held the Job, which was then never collected.
    proc, job_id, pids = _driver(
        "del job\n        import gc; gc.collect()\n        print('DROPPED', flush=True)\n"
        "        time.sleep(600)"
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "DROPPED"
        _assert_gone(pids, within=WAIT)
        assert not _job_segments(job_id)
    finally:
        proc.kill()
        proc.wait(WAIT)


def test_a_driver_that_does_not_read_a_large_answer_cannot_hold_the_coordinator_up():
    # Answers go out through the coordinator's outbox thread: with the pipe full, its loop
    # still finds a hung worker and tears the job down (it used to block writing the answer,
    # and the job ran on, hung, for as long as the driver did not read).
    dag = Dag("unread")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.002)).apply(
        "many", ManyCounters(8_000)
    ).sink("out", Collect())
    job = launch(dag, heartbeat_timeout=2.0, stop_grace=0.5)
    pids = _wait_started(job)
    deadline = time.monotonic() + WAIT
    while not any(len(r["counters"]) == 8_000 for r in job.status()):
        assert time.monotonic() < deadline, "the counters never arrived"
    for _ in range(20):  # over 3 MB of answers, far past what a pipe or socket holds
        job._request(("status",))
    os.kill(pids[1], signal.SIGSTOP)  # "many" hangs: only the coordinator can tell
    _assert_gone(pids, within=WAIT)  # torn down; the coordinator waits to hand over the rest
    with pytest.raises(JobFailed, match="is hung: no heartbeat"):  # 'many', if no other lags
        job.wait(WAIT)
    _assert_gone([job.coordinator_pid])


def test_polling_status_with_no_time_to_answer_never_jams_the_job():
    # Each call used to ask again: the unread answers filled the pipe, the coordinator
    # blocked writing one and the driver asking, and the job stood still for good.
    proc, job_id, pids = _driver(
        "answers = sum(bool(job.status(timeout=0)) for _ in range(3000))\n"
        "        job.stop()\n"
        "        job.wait(60)\n"
        "        print('STOPPED', flush=True)"
    )
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert "STOPPED" in out, err
    _assert_gone(pids, within=WAIT)
    assert not _job_segments(job_id)


def test_coordinator_death_takes_the_workers_with_it():
    proc, job_id, pids = _driver(
        "try:\n            job.wait(60)\n        except Exception as e:\n"
        "            print('FAILED', e, flush=True)"
    )
    coordinator, workers = pids[0], pids[1:]
    os.kill(coordinator, signal.SIGKILL)
    out, err = proc.communicate(timeout=WAIT)
    assert "FAILED" in out and "the coordinator was killed by signal SIGKILL" in out, err
    _assert_gone(workers, within=WAIT)
    assert not _job_segments(job_id)


def _temporaries(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_coordinator_death_leaves_no_temporary_of_a_file_sink(tmp_path):
    # Its workers die by PDEATHSIG (SIGKILL), so the sink cannot abort: the driver removes
    # the temporary, once the workers are gone.
    out = tmp_path / "out.jsonl"
    proc, job_id, pids = _driver(
        "try:\n            job.wait(60)\n        except Exception as e:\n"
        "            print('FAILED', e, flush=True)",
        sink=f"__import__('operators').JsonLinesBars({str(out)!r})",
    )
    [temporary] = _temporaries(tmp_path)
    assert job_id in temporary
    os.kill(pids[0], signal.SIGKILL)
    stdout, err = proc.communicate(timeout=WAIT)
    assert "the coordinator was killed by signal SIGKILL" in stdout, err
    _assert_gone(pids, within=WAIT)
    assert os.listdir(tmp_path) == []


def test_a_sink_that_ignores_sigterm_is_killed_and_its_temporary_removed(tmp_path):
    dag = Dag("stubborn")
    dag.source("src", Numbered(0, forever=True, pause_every=1, pause=0.001)).sink(
        "out", StubbornFile(str(tmp_path / "out.jsonl"), after=100)
    )
    job = launch(dag, heartbeat_timeout=0.5, stop_grace=0.5)
    with pytest.raises(JobFailed, match=r"is hung: no heartbeat"):  # 'out', if no other lags
        job.wait(WAIT)
    _assert_gone([*job.pids, job.coordinator_pid])
    assert os.listdir(tmp_path) == []


def test_a_worker_sent_sigterm_from_outside_is_named_so():
    proc, job_id, pids = _driver(
        "try:\n            job.wait(60)\n        except Exception as e:\n"
        "            print('FAILED', e, flush=True)"
    )
    os.kill(pids[1], signal.SIGTERM)  # the first worker: the source
    out, err = proc.communicate(timeout=WAIT)
    assert "node 'src' replica 0 exited on signal SIGTERM (exit code 143)" in out, err
    _assert_gone(pids, within=WAIT)
    assert not _job_segments(job_id)


def test_sigint_once_stops_gracefully():
    proc, job_id, pids = _driver(
        "r = job.wait(60)\n        print('STOPPED', r.stopped, flush=True)"
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    assert "STOPPED True" in out, err
    _assert_gone(pids, within=WAIT)
    assert not _job_segments(job_id)


def test_sigint_twice_kills_a_job_that_cannot_drain(tmp_path):
    never = tmp_path / "never"
    proc, job_id, pids = _driver(
        "job.wait(60)",
        sink=f"Stall({str(never)!r})",
    )
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    assert "stopping job 'orphan' gracefully" in proc.stderr.readline()
    assert all(_alive(p) for p in pids)  # the stalled sink holds the graceful stop up
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    assert "KILLED" in out, err
    _assert_gone(pids, within=WAIT)
    assert not _job_segments(job_id)


def test_a_large_sink_result_reaches_the_driver():
    dag = Dag("large")
    dag.source("src", Numbered(300_000, batch=1000)).sink("out", Collect())
    result = run(dag, timeout=WAIT)
    assert len(result.collected("out")) == 300_000


def test_a_failing_sink_aborts_even_while_the_job_is_torn_down(tmp_path):
    marker = tmp_path / "aborted"
    dag = Dag("fragile")
    dag.source("src", Numbered(10_000)).sink("out", Fragile(str(marker), abort_s=0.3))
    with pytest.raises(JobFailed, match="disk full"):
        run(dag, timeout=WAIT)
    assert marker.read_text() == "aborted"


def test_a_sink_whose_commit_fails_still_aborts(tmp_path):
    marker = tmp_path / "aborted"
    dag = Dag("commit")
    dag.source("src", Numbered(100)).sink("out", Fragile(str(marker), fail_on="close"))
    with pytest.raises(OSError, match="rename failed"):
        run_inline(dag)
    assert marker.read_text() == "aborted"


def test_a_producer_feeding_a_slow_consumer_is_not_taken_for_hung(tmp_path):
    # One source step emits 200 frames into a sink that takes 10 ms a frame: the source
    # waits for credit the whole time, getting one every 10 ms, for about 2 s.
    dag = Dag("slow")
    dag.source("src", Numbered(200_000, batch=200_000)).sink(
        "out", Fragile(str(tmp_path / "unused"), fail_on="never", delay_s=0.01)
    )
    result = run(dag, timeout=WAIT, heartbeat_timeout=1.0, slots=2, slot_size=16 * 1024)
    assert result.sinks["out"] == [200_000]


def test_the_sigint_handler_is_restored_when_the_job_ends():
    before = signal.getsignal(signal.SIGINT)
    dag = Dag("restore")
    dag.source("src", Numbered(100)).sink("out", Collect())
    job = launch(dag)
    deadline = time.monotonic() + WAIT
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.done()
    assert signal.getsignal(signal.SIGINT) is before
    job.wait(WAIT)


def test_bad_settings_are_refused_before_anything_starts():
    dag = Dag("settings")
    dag.source("src", Numbered(1)).sink("out", Collect())
    with pytest.raises(RingflowError, match=r"slots must be 1\.\.4096, got 100000"):
        launch(dag, slots=100_000)
    with pytest.raises(RingflowError, match=r"stop_timeout must be > 0 seconds, got 0"):
        launch(dag, stop_timeout=0)
    with pytest.raises(RingflowError, match="unknown engine setting"):
        launch(dag, slotz=8)


def test_a_job_that_does_not_fit_in_dev_shm_is_refused_before_anything_starts():
    dag = keyed_dag()  # 2 x 3 + 3 x 1 channels, here of 8 TiB each
    before = _ringflow_segments()
    with pytest.raises(
        RingflowError,
        match=r"job 'keyed' needs 75,497,472 MiB of shared memory for its 9 channels "
        r"\(8 slots of 1,099,511,627,776 bytes each\) and /dev/shm has [\d,]+ MiB free: "
        r"lower slots or slot_size",
    ):
        launch(dag, slot_size=2**40)
    assert _ringflow_segments() == before


def test_a_dev_shm_without_a_size_limit_is_not_taken_for_full(monkeypatch):
    # tmpfs mounted with size=0 has no limit and reports no blocks, free or total.
    unlimited = os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: unlimited)
    check_shared_memory(keyed_dag(), Settings(slot_size=2**40))  # no error
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(RingflowError, match="and /dev/shm has 0 MiB free"):
        check_shared_memory(keyed_dag(), Settings())


def _ringflow_segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("ringflow-")}
