"""What one replica of a node does with batches, watermarks and end-of-input.

The semantics live here once, shared by the worker processes (``engine.worker``) and the
inline runner (``engine.testing``), so a DAG run inline and the same DAG run across processes
give the same output. A task talks to its downstream through ``Sender``\\ s: a
``BatchBuilder`` over a channel in a worker, a direct call in the inline runner.

Watermarks: a task's watermark is the minimum over its inputs (an input that has ended
counts as +infinity); it only moves forward. When it moves, the logic's ``on_watermark`` runs
and the new watermark is forwarded on every output, after the records it covers.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from time import thread_time_ns as perf_counter_ns  # CPU time: fair on a busy machine
from typing import Any, Protocol

from engine.batch import MIN_WATERMARK
from engine.columns import Columns
from engine.dag import MAIN, SINK
from engine.operator import Batch, Context, OperatorLogic, SinkLogic, SourceLogic, Watermark
from engine.runtime_async import Abandoned, StopAwaiting, anext_noting_wait

MAX_WATERMARK = 2**63 - 1
ABANDONED = "abandoned"  # the counter of a source's awaits a stop gave up on (Abandoned)
log = logging.getLogger(__name__)


class Sender(Protocol):
    def extend(self, records: list[Any] | Columns) -> None: ...
    def send_watermark(self, ts: int) -> None: ...
    def send_eof(self) -> None: ...


class Output:
    """One outgoing edge of a replica: its splitter and a sender per downstream replica."""

    def __init__(self, splitter: Any, senders: dict[int, Sender]) -> None:
        self.split = splitter.split
        self.senders = senders
        self._columnar = bool(getattr(splitter, "accepts_columns", False))

    def emit(self, records: list[Any] | Columns) -> None:
        if type(records) is Columns and not self._columnar:
            records = records.rows()  # a user's splitter that knows only records
        senders = self.senders
        for replica, group in self.split(records):
            senders[replica].extend(group)


class Emitter:
    """Routes a replica's results to the edges of each of its outputs."""

    def __init__(self, ctx: Context, outputs: dict[str, list[Output]]) -> None:
        self.ctx = ctx
        self.outputs = outputs
        self._main = outputs.get(MAIN, [])
        # Every sender of every output: watermarks and end-of-stream go to all of them.
        self._senders: list[Sender] = [
            s for outs in outputs.values() for out in outs for s in out.senders.values()
        ]
        self.records_out = 0

    def emit(self, records: list[Any] | Columns) -> None:
        if records:
            self.records_out += len(records)
            for out in self._main:
                out.emit(records)
        if self.ctx.side:
            for name, side in self.ctx.take_side().items():
                outs = self.outputs[name]  # declared (Context.emit_side), so consumed
                self.records_out += len(side)
                for out in outs:
                    out.emit(side)

    def watermark(self, ts: int) -> None:
        for sender in self._senders:
            sender.send_watermark(ts)

    def eof(self) -> None:
        for sender in self._senders:
            sender.send_eof()


class Task:
    """One replica of an operator or a sink, fed by ``inputs`` upstream channels."""

    def __init__(
        self,
        kind: str,
        logic: OperatorLogic | SinkLogic,
        ctx: Context,
        inputs: int,
        emitter: Emitter,
        run_async: Any = None,
    ) -> None:
        self.is_sink = kind == SINK
        self.logic: Any = logic  # OperatorLogic or SinkLogic, by is_sink
        self.ctx = ctx
        self.emitter = emitter
        self.watermarks = [MIN_WATERMARK] * inputs
        self.watermark = MIN_WATERMARK
        self.open_inputs = inputs
        self.records_in = 0
        self.logic_ns = 0  # CPU time inside the node's logic; the rest is the engine's
        self.result: Any = None
        self.finished = False
        self.closed = False  # a sink's close() returned: its output is committed
        self._run_async = run_async
        # A logic that reads Columns batches says so; every other logic gets records.
        self._columnar = bool(getattr(logic, "accepts_columns", False))

    def on_batch(self, records: list[Any] | Columns) -> None:
        self.records_in += len(records)
        if type(records) is Columns and not self._columnar:
            records = records.rows()
        started = perf_counter_ns()
        if self.is_sink:
            done = self.logic.write(records)
            if done is not None:
                self._await(done)
            self.logic_ns += perf_counter_ns() - started
        else:
            out = self.logic.process(records)
            self.logic_ns += perf_counter_ns() - started
            self.emitter.emit(out)

    def on_watermark(self, index: int, ts: int) -> None:
        if ts > self.watermarks[index]:
            self.watermarks[index] = ts
            self._advance()

    def on_eof(self, index: int) -> None:
        self.watermarks[index] = MAX_WATERMARK
        self.open_inputs -= 1
        if self.open_inputs:
            self._advance()
        else:
            self.finish()

    def _advance(self) -> None:
        wm = min(self.watermarks)
        if wm <= self.watermark or wm == MAX_WATERMARK:
            return
        self.watermark = self.ctx.watermark = wm
        started = perf_counter_ns()
        if self.is_sink:
            self.logic.on_watermark(wm)
            self.logic_ns += perf_counter_ns() - started
            return
        out = self.logic.on_watermark(wm)
        self.logic_ns += perf_counter_ns() - started
        self.emitter.emit(out)
        self.emitter.watermark(wm)

    def finish(self) -> None:
        """All inputs ended: final results, end-of-stream downstream, the sink's result."""
        if self.finished:
            return
        self.finished = True
        if self.is_sink:
            result = self.logic.close()
            if inspect.isawaitable(result):
                result = self._await(result)
            self.result = result
            self.closed = True
        else:
            self.emitter.emit(self.logic.on_eof())
        self.emitter.eof()

    def abort(self) -> None:
        """After a failure: a sink that has not committed (``close`` did not return)
        discards its partial output."""
        if self.is_sink and not self.closed:
            self.closed = True
            self.logic.abort()

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        if self._run_async is None:
            raise TypeError(f"node {self.ctx.node!r}: async sink used without an event loop")
        return self._run_async(awaitable)


class SourceTask:
    """One replica of a source, stepped one item (a batch or a watermark) at a time."""

    def __init__(self, logic: SourceLogic, ctx: Context, emitter: Emitter, run_async: Any = None):
        self.ctx = ctx
        self.emitter = emitter
        self.watermark = MIN_WATERMARK
        self.records_in = 0
        self.logic_ns = 0
        self.finished = False
        self.logic = logic
        self._ended = False  # logic.close() or logic.abort() has run
        self._items: Any = logic.batches()
        self._is_async = hasattr(self._items, "__anext__")
        if self._is_async and run_async is None:
            raise TypeError(f"node {ctx.node!r}: async source used without an event loop")
        self._run_async = run_async

    def step(self) -> bool:
        """Handle the source's next item; False (and end-of-stream sent) when it has no more.
        (The inline runner interleaves its sources by this; a worker calls ``run``.)"""
        started = perf_counter_ns()
        try:
            item = self._run_async(anext(self._items)) if self._is_async else next(self._items)
        except Abandoned:
            self._abandoned()
            return False
        except (StopIteration, StopAsyncIteration, StopAwaiting):
            # StopAwaiting: the job is stopping and the worker cancelled the source's
            # pending await (engine.runtime_async); the stream ends here, gracefully.
            self.finish()
            return False
        finally:
            self.logic_ns += perf_counter_ns() - started
        self._handle(item)
        return True

    def run(
        self,
        after_item: Callable[[], bool],
        on_wait: Callable[[], None] = lambda: None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Handle every item until the stream ends, or until ``after_item()`` (called after
        each) says False; then end the stream. ``on_wait()`` is called when an async source
        starts waiting for its next item, ``on_ready()`` when that wait is over
        (``engine.runtime_async.anext_noting_wait``).

        An async source runs on the loop in one call for its whole stream, its items
        handled between its awaits. A call per item, starting and stopping the loop every
        time, cost 106-139 us of CPU an item, against 4-6 for a sync source's
        (``python -m benchmarks.sources``, 10-tick batches)."""
        if not self._is_async:
            while self.step():
                if not after_item():
                    break
            self.finish()
            return
        try:
            self._run_async(self._pump(after_item, on_wait, on_ready))
        except Abandoned:
            self._abandoned()
        except StopAwaiting:
            pass  # as in step: the stop cancelled the source's await
        self.finish()

    async def _pump(
        self,
        after_item: Callable[[], bool],
        on_wait: Callable[[], None],
        on_ready: Callable[[], None] | None,
    ) -> None:
        items = self._items
        while True:
            started = perf_counter_ns()
            try:
                item = await anext_noting_wait(items, on_wait, on_ready)
            except StopAsyncIteration:
                return
            finally:
                self.logic_ns += perf_counter_ns() - started
            self._handle(item)
            if not after_item():
                return

    def _handle(self, item: Batch | Columns | Watermark) -> None:
        if isinstance(item, Watermark):
            if item.ts > self.watermark:
                self.watermark = self.ctx.watermark = item.ts
                self.emitter.emit([])
                self.emitter.watermark(item.ts)
        else:
            self.records_in += len(item)
            self.emitter.emit(item)

    def _abandoned(self) -> None:
        # It went on awaiting after its cancellation: it is still running, so it cannot be
        # closed either. The stream ends here all the same; what it sent is kept.
        self._abandon(
            "went on awaiting after the stop cancelled its await (does it catch "
            "asyncio.CancelledError? let it propagate)"
        )
        self._items = None
        self.finish()

    def finish(self) -> None:
        """End the stream now (normally, or on a graceful stop): close it, then the logic's
        ``close()``, then EOF on every output. The logic commits before anything downstream
        can, so a commit that fails fails the job with nothing committed after it (and the
        failure's ``abort`` runs the logic's ``abort()``)."""
        if self.finished:
            return
        self.finished = True
        self.emitter.emit([])
        self.close()
        close = getattr(self.logic, "close", None)
        if not self._ended and close is not None:
            close()
        self._ended = True
        self.emitter.eof()

    def abort(self) -> None:
        """After a failure: close the stream, then the logic's ``abort()`` (unless its
        ``close()`` has run to its end)."""
        try:
            self.close()
        finally:
            if not self._ended:
                self._ended = True
                abort = getattr(self.logic, "abort", None)
                if abort is not None:
                    abort()

    def close(self) -> None:
        items, self._items = self._items, None
        if items is None:
            return
        if self._is_async:
            try:
                self._run_async(items.aclose(), cancellable=False)  # cleanup runs to its end
            except Abandoned:  # ... or to the stop's deadline
                self._abandon("did not finish its cleanup (aclose) before the stop's deadline")
        elif hasattr(items, "close"):
            items.close()

    def _abandon(self, what: str) -> None:
        self.ctx.count(ABANDONED)
        log.warning(
            "source %r replica %d %s; its stream ends without waiting for it (stop_timeout)",
            self.ctx.node,
            self.ctx.replica,
            what,
        )
