"""The store sink: pausing at the store's high watermark, resuming at its low one, counters,
nothing lost, failures that must not pass silently, and backpressure across processes.

The in-process tests drive ``StoreSinkLogic`` on an asyncio loop the way a worker does, and
sequence the store by hand (``rate=0`` holds it, ``release(n)`` lets exactly ``n`` records
through): no test depends on how fast anything runs, only on bounded waits for a condition.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from typing import Any

import pytest
from jobs import Numbered

from engine import Context, Dag, DagError, JobFailed, launch
from operators.memstore import MemoryStore, RateLimitedStore, StoreReport
from operators.store import (
    StoreError,
    StoreResult,
    StoreSink,
    StoreSinkLogic,
    WriteCoordinatorFactory,
    WriteCoordinatorLike,
)

WAIT = 30.0  # bound on every wait for a condition; a loaded machine needs far less


async def until(condition: Any, what: str) -> None:
    """Yield to the loop until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def logic_for(sink: StoreSink, node: str = "store") -> tuple[StoreSinkLogic, Context]:
    ctx = Context(node)
    logic = sink.build(ctx)
    assert isinstance(logic, StoreSinkLogic)
    return logic, ctx


def store_of(logic: StoreSinkLogic) -> RateLimitedStore:
    store = logic.coordinator
    assert isinstance(store, RateLimitedStore)
    return store


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ringflow-store:")]


def small_store(ctx: Context) -> RateLimitedStore:
    """A module-level factory, for the "module:attribute" form."""
    return RateLimitedStore(capacity=50)


def not_a_store(ctx: Context) -> list[Any]:
    return []


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"high_watermark": 0, "low_watermark": 0}, "high_watermark must be an integer >= 1"),
        ({"high_watermark": 10, "low_watermark": 10}, "0 <= low_watermark < high_watermark"),
        ({"high_watermark": 10, "low_watermark": -1}, "0 <= low_watermark < high_watermark"),
        ({"high_watermark": 10, "low_watermark": 1, "poll_interval": 0}, "poll_interval"),
        ({"high_watermark": 10, "low_watermark": 1, "stall_timeout": 0}, "stall_timeout"),
        ({"high_watermark": 10, "low_watermark": 1, "stall_timeout": "1"}, "stall_timeout"),
        ({"high_watermark": 10, "low_watermark": 1, "stall_timeout": True}, "stall_timeout"),
    ],
)
def test_bad_watermarks_are_refused_with_the_rule(kwargs, message):
    with pytest.raises(DagError, match=message):
        StoreSink(MemoryStore(), **kwargs)


def test_a_coordinator_that_is_neither_callable_nor_a_path_is_refused():
    with pytest.raises(DagError, match="'module:attribute' string"):
        StoreSink("no_colon_here", 10, 1)
    with pytest.raises(DagError, match="capacity must be an integer >= 1"):
        MemoryStore(capacity=0)


def test_the_in_repo_store_and_the_config_pickle_and_satisfy_the_protocol():
    import pickle

    sink = StoreSink(MemoryStore(capacity=10, rate=5.0), 8, 2)
    assert pickle.loads(pickle.dumps(sink)) == sink
    assert isinstance(MemoryStore()(Context("s")), WriteCoordinatorLike)
    assert "StoreSink(MemoryStore(capacity=10" in repr(sink)


# -- pausing --------------------------------------------------------------------------------


def test_pauses_at_the_high_watermark_and_resumes_only_at_the_low_one():
    logic, ctx = logic_for(StoreSink(MemoryStore(capacity=100, rate=0), 50, 10))

    async def scenario() -> StoreResult:
        write = asyncio.ensure_future(logic.write(list(range(60))))
        await until(lambda: ctx.counters.get("pauses") == 1, "the pause")
        store = store_of(logic)
        assert ctx.gauges["queue_depth"] == 60
        store.release(30)  # depth 30: below high, above low, so still paused
        await until(lambda: ctx.gauges["queue_depth"] == 30, "the sink to see depth 30")
        assert not write.done()
        store.release(25)  # depth 5 <= low: resume
        await asyncio.wait_for(write, WAIT)
        assert ctx.gauges["queue_depth"] == 5
        assert ctx.counters["paused_ns"] > 0
        store.set_rate(None)
        await logic.write(list(range(60, 100)))  # at most 5 + 40 queued: no second pause
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.records == 100
    assert result.pauses == ctx.counters["pauses"] == 1
    assert result.paused_s == ctx.counters["paused_ns"] / 1e9
    assert result.max_queue_depth >= 60
    assert result.store == StoreReport(100, list(range(100)), None)  # nothing lost, in order
    assert not store_threads()


def test_no_pause_while_the_queue_stays_below_the_high_watermark():
    logic, ctx = logic_for(StoreSink(MemoryStore(capacity=1000, rate=0), 500, 100))

    async def scenario() -> StoreResult:
        for i in range(0, 400, 100):
            await logic.write(list(range(i, i + 100)))
        assert ctx.gauges["queue_depth"] == 400
        store_of(logic).set_rate(None)
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.pauses == 0 and "paused_ns" not in ctx.counters
    assert result.store.records == list(range(400))


def test_each_crossing_of_the_high_watermark_is_one_pause():
    logic, ctx = logic_for(StoreSink(MemoryStore(capacity=100, rate=0), 20, 5))

    async def scenario() -> StoreResult:
        store: RateLimitedStore | None = None
        for n in range(1, 4):
            write = asyncio.ensure_future(logic.write(list(range(25 * (n - 1), 25 * n))))
            await until(lambda n=n: ctx.counters.get("pauses") == n, f"pause {n}")
            store = store_of(logic)
            store.release(25)
            await asyncio.wait_for(write, WAIT)
        assert store is not None
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.pauses == 3
    assert result.store.records == list(range(75))


def test_a_string_factory_is_imported_in_the_worker():
    logic, _ = logic_for(StoreSink("test_store:small_store", 40, 10))

    async def scenario() -> StoreResult:
        await logic.write([1, 2, 3])
        return await logic.close()

    assert asyncio.run(scenario()).store.records == [1, 2, 3]
    with pytest.raises(StoreError, match="cannot import 'no_such_module'"):
        StoreSink("no_such_module:factory", 10, 1).build(Context("s"))


# -- failures -------------------------------------------------------------------------------


def test_close_fails_rather_than_lose_records_the_store_did_not_drain(tmp_path):
    path = tmp_path / "stored.jsonl"
    sink = StoreSink(MemoryStore(capacity=100, rate=0, path=str(path)), 90, 10, drain_timeout=0.05)
    logic, _ = logic_for(sink)

    async def scenario() -> None:
        await logic.write(list(range(30)))
        store_of(logic).release(10)
        await logic.close()

    with pytest.raises(StoreError, match=r"still held 20 record\(s\) after draining"):
        asyncio.run(scenario())
    assert not os.listdir(tmp_path), "an undrained store must not leave a file that looks whole"
    assert not store_threads()


def test_abort_stops_the_store_without_draining_and_removes_its_file(tmp_path):
    path = tmp_path / "stored.jsonl"
    logic, _ = logic_for(StoreSink(MemoryStore(capacity=100, path=str(path), rate=0), 90, 10))
    asyncio.run(logic.write(list(range(30))))
    store = store_of(logic)
    logic.abort()
    assert store.health().workers_alive == 0
    assert store.stored == 0
    assert not os.listdir(tmp_path)
    assert not store_threads()


def test_a_file_store_commits_every_record_on_close(tmp_path):
    path = tmp_path / "stored.jsonl"
    logic, _ = logic_for(StoreSink(MemoryStore(capacity=100, path=str(path), keep=False), 90, 10))

    async def scenario() -> StoreResult:
        await logic.write([{"i": i} for i in range(50)])
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.store == StoreReport(50, None, str(path))
    assert path.read_text().splitlines() == [f'{{"i":{i}}}' for i in range(50)]


def test_a_store_whose_workers_died_fails_the_sink_instead_of_pausing_forever(tmp_path):
    # Records the file cannot encode kill the in-repo store's drain task.
    sink = StoreSink(MemoryStore(capacity=20, rate=0, path=str(tmp_path / "s.jsonl")), 5, 1)
    logic, ctx = logic_for(sink)

    async def release_when_paused() -> None:
        await until(lambda: ctx.counters.get("pauses") == 1, "the pause")
        store_of(logic).release(6)

    async def scenario() -> None:
        await asyncio.gather(logic.write([object() for _ in range(6)]), release_when_paused())

    with pytest.raises(StoreError, match="the store has no live workers"):
        asyncio.run(scenario())
    logic.abort()
    assert not store_threads()


class SecondPerCall:
    """A clock that moves one second each time it is read (the pause reads it per poll)."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1_000_000_000
        return self.now


def test_a_store_that_takes_nothing_more_fails_the_sink_after_the_stall_timeout():
    sink = StoreSink(MemoryStore(capacity=20, rate=0), 5, 1, poll_interval=0.001, stall_timeout=5)
    logic, ctx = logic_for(sink)
    ctx.clock = clock = SecondPerCall()
    with pytest.raises(StoreError, match=r"has not gone down from 6 record\(s\) in 5 s"):
        asyncio.run(logic.write(list(range(6))))
    assert 5 <= clock.now / 1e9 <= 7  # it gave up at the timeout, not before or long after
    assert ctx.counters["pauses"] == 1
    logic.abort()
    assert not store_threads()


@pytest.mark.parametrize(
    "capacity,high,records,releases",
    [
        (20, 5, 6, 5),  # one pause, from 6 down to the low watermark
        (10, 10, 15, 9),  # a batch larger than the queue: 10 go in, a pause, then 5
    ],
)
def test_a_store_that_drains_slowly_resets_the_stall_timeout_each_time_it_takes_one(
    capacity, high, records, releases
):
    # One record every 2 s of the clock, against a 3 s stall timeout: the pause lasts
    # longer than the timeout in all, and still ends well, every record stored in order.
    sink = StoreSink(
        MemoryStore(capacity=capacity, rate=0), high, 1, poll_interval=0.001, stall_timeout=3
    )
    logic, ctx = logic_for(sink)
    ctx.clock = clock = SecondPerCall()

    async def release_one_every_two_seconds() -> None:
        await until(lambda: ctx.counters.get("pauses") == 1, "the pause")
        for _ in range(releases):  # down to the low watermark, 1
            due = clock.now + 2_000_000_000
            await until(lambda due=due: clock.now >= due, "two seconds of the clock")
            store_of(logic).release(1)

    async def scenario() -> StoreResult:
        batch = list(range(records))
        await asyncio.gather(logic.write(batch), release_one_every_two_seconds())
        store_of(logic).set_rate(None)
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.paused_s >= 8  # over twice the stall timeout, paused throughout
    assert result.store.records == list(range(records))
    assert (result.records, result.pauses) == (records, 1)


def test_a_batch_larger_than_the_room_left_is_submitted_in_parts_with_a_pause_between():
    """15 records into a queue of 10 that takes nothing: 10 go in, then the sink pauses
    (it used to block inside submit_many, where no stall_timeout watched it, for ever)."""
    sink = StoreSink(MemoryStore(capacity=10, rate=0), 10, 1, poll_interval=0.001, stall_timeout=5)
    logic, ctx = logic_for(sink)
    ctx.clock = clock = SecondPerCall()
    with pytest.raises(StoreError, match=r"not gone down from 10 record\(s\) in 5 s of a pause"):
        asyncio.run(logic.write(list(range(15))))
    assert 5 <= clock.now / 1e9 <= 7
    assert (ctx.gauges["queue_depth"], ctx.counters["pauses"], logic.records) == (10, 1, 10)
    logic.abort()
    assert not store_threads()


def count_parts(logic: StoreSinkLogic) -> list[int]:
    """The sizes of the parts the sink submits, as it submits them."""
    parts: list[int] = []
    submit = logic._submit

    async def counting(batch: list[Any]) -> tuple[int, int | None]:
        parts.append(len(batch))
        return await submit(batch)

    logic._submit = counting
    return parts


def test_a_large_batch_into_a_draining_queue_goes_in_full_parts_with_a_pause_between():
    """5,000 records into a queue of 100 that drains as they go in: after each part that
    filled the queue, the sink waits for the low watermark, so the parts after the first are
    of capacity - low_watermark records or more, whatever the timing. (It used to top the
    queue up as it drained: thousands of submits of a record or two, and no pause counted.)"""
    capacity, low, records = 100, 10, 5_000
    store = MemoryStore(capacity=capacity, rate=20_000, batch_size=1)
    logic, _ = logic_for(StoreSink(store, capacity, low, poll_interval=0.001))
    parts = count_parts(logic)

    async def scenario() -> StoreResult:
        await logic.write(list(range(records)))
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.store.records == list(range(records))
    assert sum(parts) == records
    assert parts[0] == capacity and min(parts[1:-1]) >= capacity - low
    assert len(parts) <= 2 + (records - capacity) // (capacity - low)
    assert result.pauses >= 1


def test_a_depth_seen_above_capacity_is_read_again_not_sliced_negatively():
    """After a write cut short (cancelled mid-pause), the depth last seen can be above the
    capacity: the room is then negative, and a part cut with it would be most of the batch."""
    store = MemoryStore(capacity=100)  # drains as fast as it can
    logic, _ = logic_for(StoreSink(store, 100, 10, poll_interval=0.001))
    parts = count_parts(logic)

    async def scenario() -> StoreResult:
        await logic.write([0])
        logic._depth = 150  # as a cut-short write may leave it
        await logic.write(list(range(1, 501)))
        return await logic.close()

    result = asyncio.run(scenario())
    assert result.store.records == list(range(501))
    assert max(parts) <= 100


def test_a_graceful_stop_behind_a_store_that_takes_nothing_fails_instead_of_hanging():
    dag = Dag("stalled_store")
    store = StoreSink(MemoryStore(capacity=200, rate=0), 100, 20, stall_timeout=1.0)
    dag.source("src", Numbered(0, forever=True, batch=50)).sink("store", store)
    job = launch(dag, linger=0.0, heartbeat_timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while not any(r["node"] == "store" and r["pauses"] for r in job.status()):
        assert time.monotonic() < deadline, "the sink never paused"
    job.stop()
    with pytest.raises(JobFailed, match=r"node 'store'.*has not gone down from"):
        job.wait(WAIT)


def test_a_store_that_died_on_its_last_batch_fails_close_rather_than_succeed(tmp_path):
    """Its queue is empty (the dead drain task took the batch), yet nothing was stored:
    close() says so instead of returning a result (an audit found it returned one)."""
    path = tmp_path / "s.jsonl"
    logic, _ = logic_for(StoreSink(MemoryStore(capacity=100, path=str(path)), 90, 10))

    async def scenario() -> None:
        await logic.write([{"i": i} for i in range(5)] + [object()])  # the last: no JSON
        await until(lambda: logic.coordinator.health().workers_alive == 0, "the drain's death")
        await logic.close()

    with pytest.raises(StoreError, match="workers all died before it drained"):
        asyncio.run(scenario())
    assert not path.exists() and not store_threads()


def test_a_write_after_the_store_died_mid_run_fails_with_a_store_error(tmp_path):
    """It was a bare RuntimeError from the in-repo store."""
    path = tmp_path / "s.jsonl"
    logic, _ = logic_for(StoreSink(MemoryStore(capacity=100, path=str(path)), 90, 10))

    async def scenario() -> None:
        await logic.write([{"i": 0}, object()])  # the second: no JSON, the drain task dies
        await until(lambda: logic.coordinator.health().workers_alive == 0, "the drain's death")
        await logic.write([{"i": 1}])

    with pytest.raises(StoreError, match="the store's drain task failed"):
        asyncio.run(scenario())
    logic.abort()
    assert not path.exists() and not store_threads()


class Forgetful(RateLimitedStore):
    """Drains, but its summary admits it stored one record fewer than it was given."""

    def summary(self) -> Any:
        report = super().summary()
        return type(report)(report.stored - 1, report.records, report.path)


def forgetful(ctx: Context) -> Forgetful:
    return Forgetful(capacity=100)


def test_a_store_that_stored_fewer_than_it_was_given_fails_close():
    logic, _ = logic_for(StoreSink(forgetful, 90, 10))

    async def scenario() -> None:
        await logic.write([{"i": i} for i in range(5)])
        await logic.close()

    with pytest.raises(StoreError, match="stored 4 of the 5 record"):
        asyncio.run(scenario())
    assert not store_threads()


def test_a_high_watermark_above_the_store_capacity_is_refused():
    logic, _ = logic_for(StoreSink(MemoryStore(capacity=10), 11, 1))
    with pytest.raises(StoreError, match="high_watermark 11 is above the store's capacity 10"):
        asyncio.run(logic.write([1]))
    logic.abort()


def test_a_factory_that_returns_no_store_is_named():
    logic, _ = logic_for(StoreSink(not_a_store, 10, 1))
    with pytest.raises(
        StoreError, match="returned a list, which lacks start, stop, submit_many, health"
    ):
        asyncio.run(logic.write([1]))
    logic.abort()
    assert not store_threads()


def test_a_store_file_is_validated_with_every_other_file():
    from operators.sinks import JsonLinesBars

    dag = Dag("clash")
    src = dag.source("src", Numbered(10))
    src.sink("store", StoreSink(MemoryStore(path="/tmp/same.jsonl"), 10, 1))
    src.sink("file", JsonLinesBars("/tmp/same.jsonl"))
    with pytest.raises(DagError, match="writes it too"):
        dag.validate()


def test_a_store_worker_killed_leaves_no_temporary(tmp_path):
    # Its file was named for the worker's pid and declared nowhere, so nothing removed it.
    import signal

    gate = tmp_path / "gate"
    store = StoreSink(
        MemoryStore(capacity=200, gate=str(gate), path=str(tmp_path / "s.jsonl")), 100, 20
    )
    dag = Dag("killed_store")
    dag.source("src", Numbered(0, forever=True, batch=50)).sink("store", store)
    job = launch(dag, heartbeat_timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while not any(r["node"] == "store" and r["pauses"] for r in job.status()):
        assert time.monotonic() < deadline, "the store never paused"
    [temporary] = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert job.id in temporary
    os.kill(job.pids[-1], signal.SIGKILL)  # the store's worker
    with pytest.raises(JobFailed, match="node 'store' replica 0 was killed by signal SIGKILL"):
        job.wait(WAIT)
    assert [p.name for p in tmp_path.iterdir()] == []


# -- market_data_store ----------------------------------------------------------------------


def test_write_coordinator_factory_says_how_to_get_market_data_store(monkeypatch):
    monkeypatch.setitem(sys.modules, "market_data_store", None)  # import fails, as uninstalled
    factory = WriteCoordinatorFactory(writer=list)
    with pytest.raises(StoreError, match=r"pip install market-data-store"):
        factory(Context("db"))


class FakeWriter:
    def __init__(self, ctx: Context) -> None:
        self.batches: list[list[Any]] = []

    async def write(self, batch: Any) -> None:
        self.batches.append(list(batch))


class FakeWriteCoordinator(RateLimitedStore):
    """Stands in for market_data_store.coordinator.WriteCoordinator: same keyword arguments."""

    made: list[dict[str, Any]] = []

    def __init__(self, *, sink: Any, capacity: int, overflow_strategy: str, **kwargs: Any):
        super().__init__(capacity=capacity)
        self.made.append(
            {"sink": sink, "capacity": capacity, "overflow": overflow_strategy, **kwargs}
        )


def test_write_coordinator_factory_builds_market_data_stores_coordinator(monkeypatch):
    package = types.ModuleType("market_data_store")
    module = types.ModuleType("market_data_store.coordinator")
    module.WriteCoordinator = FakeWriteCoordinator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "market_data_store", package)
    monkeypatch.setitem(sys.modules, "market_data_store.coordinator", module)
    FakeWriteCoordinator.made.clear()
    sink = StoreSink(WriteCoordinatorFactory(writer=FakeWriter, capacity=64), 32, 8)
    logic, _ = logic_for(sink, node="db")

    async def scenario() -> StoreResult:
        await logic.write(list(range(10)))
        return await logic.close()

    assert asyncio.run(scenario()).store.records == list(range(10))
    (made,) = FakeWriteCoordinator.made
    assert isinstance(made.pop("sink"), FakeWriter)
    assert made == {
        "capacity": 64,
        "overflow": "block",
        "workers": 4,
        "batch_size": 500,
        "flush_interval": 0.25,
        "coord_id": "db-0",
    }


# -- across processes -----------------------------------------------------------------------


def test_a_slow_store_backpressures_the_source_and_loses_nothing(tmp_path):
    gate = tmp_path / "gate"
    count = 5_000
    dag = Dag("slow_store")
    store = StoreSink(MemoryStore(capacity=200, gate=str(gate)), 100, 20)
    dag.source("src", Numbered(count, batch=50)).sink("store", store)
    job = launch(dag, slots=2, slot_size=4096, linger=0.0, heartbeat_timeout=WAIT)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            rows = {r["node"]: r for r in job.status()}
            src, sink = rows.get("src"), rows.get("store")
            if src and sink and src["backpressured_s"] > 0 and sink["paused_s"] > 0:
                break
            assert time.monotonic() < deadline, f"no backpressure seen: {rows}"
            time.sleep(0.02)
        assert sink["pauses"] == 1  # held at the gate: one pause, still going
        assert sink["queue_depth"] >= 100
        assert src["records_out"] < count  # held back, not buffered without bound
    finally:
        gate.touch()
    result = job.wait(WAIT)
    (stored,) = result.sinks["store"]
    assert stored.records == count
    assert stored.store.records == [(f"k{i % 10}", i, 0) for i in range(count)]
    assert result.nodes["store"].counters["pauses"] >= 1
    assert result.nodes["store"].counters["paused_ns"] > 0
