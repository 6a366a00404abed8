"""``AsyncRunner``: ticks while an awaitable runs, a stop that cancels only what it may, and
nothing raised in a tick or a signal handler lost in the event loop's log.

``TICK_S`` is shortened so the tests take milliseconds; every wait is bounded.
"""

from __future__ import annotations

import asyncio

import pytest

import engine.runtime_async as runtime_async
from engine.runtime_async import Abandoned, AsyncRunner, StopAwaiting

TICK = 0.01


@pytest.fixture(autouse=True)
def short_ticks(monkeypatch):
    monkeypatch.setattr(runtime_async, "TICK_S", TICK)


async def forever() -> None:
    await asyncio.Event().wait()


def test_an_error_in_a_tick_is_raised_by_the_call_not_logged():
    class Boom(Exception):
        pass

    def tick():
        raise Boom("flush failed")

    runner = AsyncRunner(on_tick=tick)
    with pytest.raises(Boom, match="flush failed"):
        runner(asyncio.wait_for(forever(), 5.0))
    runner.close()


def test_a_base_exception_in_a_loop_callback_is_raised_by_the_call():
    class Stopped(BaseException):  # as the worker's SIGTERM exception
        pass

    def boom():
        raise Stopped()

    async def body():
        asyncio.get_running_loop().call_soon(boom)  # where a signal handler would run
        await asyncio.wait_for(forever(), 5.0)

    runner = AsyncRunner(on_tick=lambda: None)
    with pytest.raises(Stopped):
        runner(body())
    runner.close()


def test_a_stop_cancels_once_it_has_lasted_a_tick():
    stop = {"asked": False, "ticks": 0}

    def tick():
        stop["ticks"] += 1
        if stop["ticks"] == 2:
            stop["asked"] = True
        return None

    runner = AsyncRunner(on_tick=tick, cancel_when=lambda: stop["asked"])
    with pytest.raises(StopAwaiting):
        runner(asyncio.wait_for(forever(), 5.0))
    assert stop["ticks"] >= 3  # asked at the 2nd tick, cancelled a tick later at the soonest
    runner.close()


def test_an_item_that_arrives_soon_after_the_stop_is_not_lost():
    async def slow_item():
        await asyncio.sleep(TICK / 2)
        return "item"

    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True)
    assert runner(slow_item()) == "item"
    runner.close()


def test_cleanup_is_never_cancelled():
    done = []

    async def cleanup():
        await asyncio.sleep(TICK * 5)  # several ticks, all with the stop asked
        done.append(True)

    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True)
    runner(cleanup(), cancellable=False)
    assert done == [True]
    runner.close()


async def stubborn(cancelled: list[int], steps: list[int] | None = None) -> None:
    """Awaits for ever, catching every cancellation (a source that should not)."""
    while True:
        try:
            await asyncio.sleep(TICK / 4)
            if steps is not None:
                steps.append(1)
        except asyncio.CancelledError:
            cancelled.append(1)


def test_an_await_that_ignores_its_cancellation_is_abandoned_and_never_runs_again():
    cancelled: list[int] = []
    steps: list[int] = []
    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True, abandon_after=TICK * 5)
    with pytest.raises(Abandoned):
        runner(stubborn(cancelled, steps))
    assert cancelled == [1]  # cancelled once, a tick into the stop; given up on later
    ran = len(steps)

    async def later() -> str:
        await asyncio.sleep(TICK * 3)
        return "next"

    assert runner(later(), cancellable=False) == "next"  # a new loop: the runner works ...
    assert len(steps) == ran  # ... and the abandoned awaitable does not run on it
    runner.close()


def test_a_deadline_shorter_than_a_tick_cancels_first_and_abandons_only_after(monkeypatch):
    monkeypatch.setattr(runtime_async, "TICK_S", 0.2)  # a stalled machine cannot skip a tick
    cleaned: list[int] = []

    async def well_behaved() -> None:
        try:
            await forever()
        finally:
            await asyncio.sleep(0)  # its cleanup, after the cancellation
            cleaned.append(1)

    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True, abandon_after=0.02)
    with pytest.raises(StopAwaiting) as raised:
        runner(well_behaved())
    assert type(raised.value) is StopAwaiting and cleaned == [1]
    runner.close()


def test_cleanup_that_never_ends_is_abandoned_not_cancelled():
    cancelled: list[int] = []
    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True, abandon_after=TICK * 3)
    with pytest.raises(Abandoned):
        runner(stubborn(cancelled), cancellable=False)
    assert cancelled == []
    runner.close()


def test_the_awaitables_own_errors_are_raised_as_they_are_during_a_stop():
    async def fails() -> None:
        await asyncio.sleep(TICK * 2)
        raise RuntimeError("the provider's own")

    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: True, abandon_after=60.0)
    with pytest.raises(RuntimeError, match="the provider's own"):
        runner(fails(), cancellable=False)
    runner.close()


def test_the_awaitables_own_cancellation_is_not_a_stop():
    async def cancelled_inside():
        task = asyncio.ensure_future(forever())
        task.cancel()
        await task  # raises CancelledError: the source's own, not the runner's

    runner = AsyncRunner(on_tick=lambda: None, cancel_when=lambda: False)
    with pytest.raises(asyncio.CancelledError):
        runner(cancelled_inside())
    runner.close()


def test_the_first_tick_comes_when_asked(monkeypatch):
    monkeypatch.setattr(runtime_async, "TICK_S", 10.0)  # the usual first tick: far off
    ticked = asyncio.Event()

    def tick():
        ticked.set()

    async def body():
        await asyncio.wait_for(ticked.wait(), 5.0)

    runner = AsyncRunner(on_tick=tick, next_tick=lambda: 0.0)
    runner(body())  # a TimeoutError here: the first tick waited for TICK_S
    runner.close()


def test_a_tick_asking_for_more_than_tick_s_gets_tick_s():
    ticks = []

    def tick():
        ticks.append(1)
        return 10.0

    runner = AsyncRunner(on_tick=tick)
    runner(asyncio.sleep(TICK * 8))
    assert len(ticks) >= 3  # uncapped, there would be one
    runner.close()


def test_tick_within_brings_the_next_tick_forward_and_never_puts_it_off(monkeypatch):
    # With ticks 60 s apart, only tick_within can make one run during this call (a
    # source's partial batch falling due while the source awaits its provider).
    monkeypatch.setattr(runtime_async, "TICK_S", 60.0)
    ticks = []

    async def body() -> None:
        ticked = asyncio.Event()
        ticks.append(ticked)
        assert runner.ticking
        runner.tick_within(0.0)
        runner.tick_within(30.0)  # later than planned: changes nothing
        await asyncio.wait_for(ticked.wait(), 5.0)

    def tick() -> None:
        ticks[0].set()

    runner = AsyncRunner(on_tick=tick)
    assert not runner.ticking
    runner(body())
    assert not runner.ticking
    runner.tick_within(0.0)  # between calls: nothing to bring forward
    runner.close()


def test_anext_noting_wait_calls_on_wait_each_time_the_source_waits_on_a_future():
    # A bare yield to the loop (asyncio.sleep(0)) is not a wait; sleeping on a timer is.
    async def items():
        yield "ready"
        await asyncio.sleep(0)
        yield "after a bare yield"
        await asyncio.sleep(0.001)
        await asyncio.sleep(0.001)
        yield "after two timers"

    waits = []

    async def body():
        it = items()
        got = []
        for _ in range(3):
            got.append(await runtime_async.anext_noting_wait(it, lambda: waits.append(got[:])))
        with pytest.raises(StopAsyncIteration):
            await runtime_async.anext_noting_wait(it, lambda: None)
        return got

    runner = AsyncRunner()
    assert runner(body()) == ["ready", "after a bare yield", "after two timers"]
    runner.close()
    assert waits == [["ready", "after a bare yield"]] * 2  # two timers before the third item


def test_a_cancellation_reaches_the_source_through_anext_noting_wait():
    seen = []

    async def items():
        try:
            await asyncio.Event().wait()
            yield "never"
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def body():
        task = asyncio.ensure_future(runtime_async.anext_noting_wait(items(), lambda: None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    runner = AsyncRunner()
    runner(body())
    runner.close()
    assert seen == ["cancelled"]


def test_a_failing_on_wait_cancels_the_sources_wait_so_its_cleanup_runs():
    cleaned = []

    async def items():
        try:
            await asyncio.sleep(5)
            yield "never"
        finally:
            cleaned.append(True)

    def on_wait():
        raise ValueError("the flush failed")

    async def body():
        await runtime_async.anext_noting_wait(items(), on_wait)

    runner = AsyncRunner()
    with pytest.raises(ValueError, match="the flush failed"):
        runner(body())
    runner.close()
    assert cleaned == [True]


def test_closing_anext_noting_wait_runs_nothing_more_of_the_source_as_with_a_plain_await():
    # What the worker relies on when it gives up on (abandons) a source: nothing of it runs
    # again. Closing the wrapper closes the source's pending await, as closing a plain
    # ``await anext(items)`` does, without throwing into the source's code.
    events = []

    async def items():
        try:
            await asyncio.sleep(5)
            yield "never"
        except GeneratorExit:
            events.append("closed")
            raise
        finally:
            events.append("finally")

    async def body():  # drives the wrapper by hand, as a task would, inside a running loop
        step = runtime_async.anext_noting_wait(items(), lambda: None)
        assert isinstance(step.send(None), asyncio.Future)  # suspended on the sleep
        step.close()

    runner = AsyncRunner()
    runner(body())
    runner.close()
    assert events == []


def test_on_ready_follows_a_wait_however_it_ends():
    async def items():
        yield "ready"  # no wait: neither callback
        await asyncio.sleep(0.001)
        yield "after a wait"
        await asyncio.sleep(0.001)
        raise ValueError("feed lost")  # a wait that ends in an error

    calls = []

    async def body():
        it = items()

        def step():
            return runtime_async.anext_noting_wait(
                it, lambda: calls.append("wait"), lambda: calls.append("ready")
            )

        assert await step() == "ready"
        assert calls == []
        assert await step() == "after a wait"
        assert calls == ["wait", "ready"]
        with pytest.raises(ValueError, match="feed lost"):
            await step()
        assert calls == ["wait", "ready", "wait", "ready"]

    runner = AsyncRunner()
    runner(body())
    runner.close()
