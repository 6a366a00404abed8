"""``SourceTask.run``: a source's whole stream, handled item by item, with the worker's
hook after each; an async source's in one call on the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.dag import MAIN
from engine.operator import Context, SourceLogic, Watermark
from engine.runtime_async import AsyncRunner
from engine.task import Emitter, Output, SourceTask


class OneReplica:
    def split(self, records: Any) -> list[tuple[int, Any]]:
        return [(0, records)]


class Recorder:
    """A sender that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def extend(self, records: Any) -> None:
        self.got.append(("records", list(records)))

    def send_watermark(self, ts: int) -> None:
        self.got.append(("watermark", ts))

    def send_eof(self) -> None:
        self.got.append(("eof",))


class Items(SourceLogic):
    """Three batches and a watermark, sync or async; ``cleaned`` once its generator's
    ``finally`` ran (closed early, or at its end)."""

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async
        self.cleaned = False

    def batches(self) -> Any:
        return self._async() if self.is_async else self._sync()

    def _sync(self) -> Any:
        try:
            yield [1, 2]
            yield Watermark(10)
            yield [3]
            yield [4, 5]
        finally:
            self.cleaned = True

    async def _async(self) -> Any:
        try:
            for item in self._sync():
                await asyncio.sleep(0)
                yield item
        finally:
            self.cleaned = True


def source_task(logic: SourceLogic) -> tuple[SourceTask, Recorder, AsyncRunner]:
    ctx = Context("src", 0, 1)
    recorder = Recorder()
    emitter = Emitter(ctx, {MAIN: [Output(OneReplica(), {0: recorder})]})
    runner = AsyncRunner(on_tick=lambda: None)
    return SourceTask(logic, ctx, emitter, runner), recorder, runner


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_run_handles_every_item_in_order_then_ends_the_stream(is_async):
    logic = Items(is_async)
    task, recorder, runner = source_task(logic)
    calls = []

    def after_item() -> bool:
        calls.append(task.records_in)
        return True

    task.run(after_item)
    runner.close()
    assert recorder.got == [
        ("records", [1, 2]),
        ("watermark", 10),
        ("records", [3]),
        ("records", [4, 5]),
        ("eof",),
    ]
    assert calls == [2, 2, 3, 5]  # the hook runs after each item, watermarks included
    assert task.finished and logic.cleaned
    assert task.records_in == 5 and task.watermark == 10


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_hook_that_says_stop_ends_the_stream_there_and_the_source_cleans_up(is_async):
    logic = Items(is_async)
    task, recorder, runner = source_task(logic)
    task.run(lambda: task.records_in < 3)  # stop once the third record is handled
    runner.close()
    assert recorder.got == [("records", [1, 2]), ("watermark", 10), ("records", [3]), ("eof",)]
    assert task.finished and logic.cleaned


def test_an_async_source_runs_its_stream_in_one_call_on_the_loop():
    logic = Items(is_async=True)
    task, _, runner = source_task(logic)
    calls = []

    def run_async(awaitable: Any, **options: Any) -> Any:
        calls.append(awaitable)
        return runner(awaitable, **options)

    task._run_async = run_async
    task.run(lambda: asyncio.get_running_loop() is not None)  # the hook runs in the loop
    runner.close()
    assert len(calls) == 2  # the stream, then its generator's aclose: not a call per item
    assert task.records_in == 5 and logic.cleaned


def test_an_error_in_an_async_source_is_raised_by_run():
    class Broken(SourceLogic):
        async def batches(self) -> Any:  # type: ignore[override]
            yield [1]
            raise ValueError("feed went away")

    task, recorder, runner = source_task(Broken())
    with pytest.raises(ValueError, match="feed went away"):
        task.run(lambda: True)
    runner.close()
    assert recorder.got == [("records", [1])]


class Committing(Items):
    """Items whose ``close()`` commits (or fails to) and whose ``abort()`` discards."""

    def __init__(self, fail: bool) -> None:
        super().__init__(False)
        self.fail = fail
        self.calls: list[str] = []

    def close(self) -> None:
        self.calls.append("close")
        if self.fail:
            raise OSError("no space left on device")

    def abort(self) -> None:
        self.calls.append("abort")


def test_the_source_commits_before_its_stream_ends_downstream():
    logic = Committing(fail=False)
    task, recorder, runner = source_task(logic)
    task.run(lambda: True)
    task.abort()  # as a failure elsewhere later would: nothing to undo
    runner.close()
    assert logic.calls == ["close"] and recorder.got[-1] == ("eof",)


def test_a_source_commit_that_fails_ends_nothing_downstream_and_is_aborted():
    # Downstream sinks commit on EOF: a source whose own commit fails must not let them.
    logic = Committing(fail=True)
    task, recorder, runner = source_task(logic)
    with pytest.raises(OSError, match="no space"):
        task.run(lambda: True)
    task.abort()  # the worker's failure path
    runner.close()
    assert logic.calls == ["close", "abort"]
    assert ("eof",) not in recorder.got
