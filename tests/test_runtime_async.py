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


def after_ticks(n: int):
    """An ``abandon_when`` that says True from its ``n``-th question on."""
    asked = [0]

    def ask() -> bool:
        asked[0] += 1
        return asked[0] >= n

    return ask


async def stubborn(cancelled: list[int]) -> None:
    """Awaits for ever, catching every cancellation (a source that should not)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)


def test_an_await_that_ignores_its_cancellation_is_abandoned():
    cancelled: list[int] = []
    runner = AsyncRunner(
        on_tick=lambda: None, cancel_when=lambda: True, abandon_when=after_ticks(5)
    )
    with pytest.raises(Abandoned):
        runner(stubborn(cancelled))
    assert cancelled == [1]  # cancelled once, a tick after the stop; then given up on
    assert runner(asyncio.sleep(0, "next")) == "next"  # the runner goes on working
    runner.close()


def test_cleanup_that_never_ends_is_abandoned_not_cancelled():
    cancelled: list[int] = []
    runner = AsyncRunner(
        on_tick=lambda: None, cancel_when=lambda: True, abandon_when=after_ticks(3)
    )
    with pytest.raises(Abandoned):
        runner(stubborn(cancelled), cancellable=False)
    assert cancelled == []
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
