"""Keyed event-time windows: ``WindowAggregate(Tumbling("1s"), OHLCV())``.

The operator groups records by key (``key``: a field name, a tuple of field names or a
picklable function) and by the windows its assigner gives their event time (``time``, int
ns), folds each (key, window) with an aggregation (see ``operators.aggregations``), and
emits the aggregation's result when the watermark passes the window's end.

Semantics, per replica (keys are spread over replicas by the edge's key-hash partitioner):

* **Watermark.** The operator's watermark is the last value passed to ``on_watermark``
  (``ctx.watermark`` until then); it never goes back.
* **Late records.** A record is late for a window whose end is ``<=`` the watermark when the
  record arrives: that window has fired. A late record is counted (``ctx.count("late")``)
  and emitted, unchanged and in arrival order, to the side output ``late_output``, so nothing
  is lost silently. Tumbling and session records are late or aggregated, never both. A
  sliding record is late when it missed *any* of its windows (its earliest one has fired);
  it is still added to those of its windows that are open, and goes to ``late_output`` once.
  A session record is late when its own window ``[t, t + gap)`` has ended and it touches no
  open session of its key (it may extend an open session backwards).
* **Firing.** ``on_watermark(wm)`` returns the result of every window with ``end <= wm`` and
  forgets its state; ``on_eof()`` returns every open window's. Results come sorted by
  ``(window_end, key)`` (by window end then arrival order of the keys when keys do not
  compare), so the output is deterministic whatever the batch cuts. ``process`` only
  aggregates and returns no records.
* **Sessions** are ``[first ts, last ts + gap)``; a record whose window ``[t, t + gap)``
  overlaps open sessions of its key merges them (``aggregation.merge``, earlier session
  first). A new session may overlap one of its key that has already fired.

Cost per record is what this operator is about. The tumbling ``process`` loop is compiled
for the key and time field names (``operators.codegen``: ``record.ts`` costs a fraction of
``attrgetter("ts")(record)``); per record it does integer arithmetic, two dict look-ups and
one call of ``aggregation.add``, and allocates nothing the aggregation does not. Sliding and
session windows do more per record (several windows; overlap checks) in plain loops.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from engine.errors import DagError
from engine.operator import Batch, Context, Operator, OperatorLogic
from engine.records import Tick
from operators.aggregations import Aggregation
from operators.assigners import Assigner, Session, Sliding, Tumbling
from operators.codegen import compile_function, identifier
from operators.keys import KeySpec, check_key, key_and_time, key_getter

__all__ = ["WindowAggregate"]


@dataclass(frozen=True)
class WindowAggregate(Operator):
    """Aggregate keyed records over event-time windows; see the module docstring.

    ``output_type`` is the aggregation's; the late side output carries ``input_type``
    records (``engine.records.Tick`` by default; None when unknown).
    """

    assigner: Assigner
    aggregation: Aggregation
    key: KeySpec = "symbol"
    time: str = "ts"
    late_output: str = "late"
    input_type: Any = Tick

    def __post_init__(self) -> None:
        if not isinstance(self.assigner, Tumbling | Sliding | Session):
            raise DagError(
                "WindowAggregate assigner must be Tumbling, Sliding or Session, got "
                f"{self.assigner!r}; for example WindowAggregate(Tumbling('1s'), OHLCV())"
            )
        missing = [
            m for m in ("initial", "add", "merge", "result") if not hasattr(self.aggregation, m)
        ]
        if missing:
            raise DagError(
                f"WindowAggregate aggregation {self.aggregation!r} lacks {', '.join(missing)}; "
                "subclass operators.Aggregation and implement initial, add, merge and result"
            )
        check_key(self.key, "WindowAggregate")
        identifier(self.time, "WindowAggregate time")
        if not isinstance(self.late_output, str) or self.late_output in ("", "main"):
            raise DagError(
                "WindowAggregate late_output must name a side output other than 'main', "
                f"got {self.late_output!r}"
            )
        object.__setattr__(self, "output_type", getattr(self.aggregation, "output_type", None))
        object.__setattr__(self, "side_outputs", (self.late_output,))
        object.__setattr__(self, "side_types", {self.late_output: self.input_type})

    def build(self, ctx: Context) -> OperatorLogic:
        if isinstance(self.assigner, Tumbling):
            return _TumblingLogic(self, ctx)
        if isinstance(self.assigner, Sliding):
            return _SlidingLogic(self, ctx)
        return _SessionLogic(self, ctx)


def _in_order(fired: list[tuple[int, Any, int, Any]]) -> list[tuple[int, Any, int, Any]]:
    """Sort (end, key, start, acc) by end then key; by end alone when keys do not compare."""
    try:
        return sorted(fired, key=itemgetter(0, 1))
    except TypeError:
        return sorted(fired, key=itemgetter(0))


class _WindowLogic(OperatorLogic):
    """What all window logics share: the watermark, late output and the result order."""

    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        self._ctx = ctx
        self._agg = config.aggregation
        self._key_time = key_and_time(config.key, config.time)
        self._late_output = config.late_output
        self._watermark = ctx.watermark

    def _late(self, records: list[Any]) -> None:
        self._ctx.count("late", len(records))
        self._ctx.emit_side(self._late_output, records)

    def _results(self, fired: list[tuple[int, Any, int, Any]]) -> Batch:
        result = self._agg.result
        return [result(acc, key, start, end) for end, key, start, acc in _in_order(fired)]

    def on_watermark(self, watermark: int) -> Batch:
        if watermark > self._watermark:
            self._watermark = watermark
        return self._fire(self._watermark)

    def on_eof(self) -> Batch:
        return self._fire(None)

    def _fire(self, watermark: int | None) -> Batch:
        raise NotImplementedError


class _FixedLogic(_WindowLogic):
    """Tumbling and sliding windows: state is ``{window start: {key: accumulator}}``."""

    def __init__(self, config: WindowAggregate, ctx: Context, size: int) -> None:
        super().__init__(config, ctx)
        self._size = size
        self._windows: dict[int, dict[Any, Any]] = {}

    def _fire(self, watermark: int | None) -> Batch:
        size = self._size
        windows = self._windows
        starts = (
            list(windows) if watermark is None else [s for s in windows if s + size <= watermark]
        )
        fired: list[tuple[int, Any, int, Any]] = []
        for start in starts:
            end = start + size
            fired.extend((end, key, start, acc) for key, acc in windows.pop(start).items())
        return self._results(fired) if fired else []


# The tumbling loop, compiled per (key, time) field names; a key that is not one field name
# is read by the function self._key_of. The watermark is fixed for the batch, so lateness is
# one comparison of the window start; the current window's bucket is cached because
# consecutive records nearly always share it.
_TUMBLING_PROCESS = """\
def process(self, batch):
    key_of = self._key_of
    size, offset, windows = self._size, self._offset, self._windows
    add, initial = self._agg.add, self._agg.initial
    late_start = self._watermark - size
    late = None
    current = None
    bucket = {{}}
    for record in batch:
        t = record.{time}
        start = {start}
        if start <= late_start:
            if late is None:
                late = []
            late.append(record)
            continue
        if start != current:
            current = start
            found = windows.get(start)
            if found is None:
                found = windows[start] = {{}}
            bucket = found
        key = {key}
        acc = bucket.get(key)
        bucket[key] = add(initial() if acc is None else acc, record)
    if late:
        self._late(late)
    return []
"""


@functools.lru_cache(maxsize=64)
def _tumbling_process(key_field: str | None, time: str, offset: bool) -> Callable[..., Batch]:
    key = "key_of(record)" if key_field is None else f"record.{key_field}"
    start = "t - (t - offset) % size" if offset else "t - t % size"
    return compile_function("process", _TUMBLING_PROCESS.format(key=key, time=time, start=start))


class _TumblingLogic(_FixedLogic):
    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        assert isinstance(config.assigner, Tumbling)
        super().__init__(config, ctx, config.assigner.size)
        self._offset = config.assigner.offset
        key_field = config.key if isinstance(config.key, str) else None
        self._key_of = key_getter(config.key)
        self._process = _tumbling_process(key_field, config.time, self._offset != 0)

    def process(self, batch: Batch) -> Batch:
        return self._process(self, batch)


class _SlidingLogic(_FixedLogic):
    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        assert isinstance(config.assigner, Sliding)
        super().__init__(config, ctx, config.assigner.size)
        self._slide = config.assigner.slide
        self._offset = config.assigner.offset

    def process(self, batch: Batch) -> Batch:
        key_time = self._key_time
        size, slide, offset, windows = self._size, self._slide, self._offset, self._windows
        add, initial = self._agg.add, self._agg.initial
        late_start = self._watermark - size
        late: list[Any] = []
        for record in batch:
            key, t = key_time(record)
            last = t - (t - offset) % slide
            first = last - (last - t + size - 1) // slide * slide
            if first <= late_start:
                late.append(record)
                if last <= late_start:
                    continue
                first += ((late_start - first) // slide + 1) * slide
            for start in range(first, last + 1, slide):
                bucket = windows.get(start)
                if bucket is None:
                    bucket = windows[start] = {}
                acc = bucket.get(key)
                bucket[key] = add(initial() if acc is None else acc, record)
        if late:
            self._late(late)
        return []


# A session: [start (first ts), end (last ts + gap), accumulator], mutated in place.
_START, _END, _ACC = 0, 1, 2


class _SessionLogic(_WindowLogic):
    """Session windows: ``{key: [session, ...]}`` (rarely more than one open per key) and a
    heap of ``(end, seq, key)`` with, for every open session, an entry no later than its end;
    entries go stale as sessions grow or fire and are checked when they come up."""

    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        assert isinstance(config.assigner, Session)
        super().__init__(config, ctx)
        self._gap = config.assigner.gap
        self._sessions: dict[Any, list[list[Any]]] = {}
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()

    def process(self, batch: Batch) -> Batch:
        key_time = self._key_time
        gap, watermark, sessions, heap, seq = (
            self._gap,
            self._watermark,
            self._sessions,
            self._heap,
            self._seq,
        )
        agg = self._agg
        late: list[Any] = []
        for record in batch:
            key, t = key_time(record)
            end = t + gap
            open_ = sessions.get(key)
            hits = [] if open_ is None else [s for s in open_ if s[_START] < end and t < s[_END]]
            if not hits:
                if end <= watermark:
                    late.append(record)
                    continue
                session = [t, end, agg.add(agg.initial(), record)]
                if open_ is None:
                    sessions[key] = [session]
                else:
                    open_.append(session)
                heapq.heappush(heap, (end, next(seq), key))
                continue
            assert open_ is not None
            session = hits[0] if len(hits) == 1 else self._merge(open_, hits)
            session[_ACC] = agg.add(session[_ACC], record)
            if t < session[_START]:
                session[_START] = t
            if end > session[_END]:
                session[_END] = end
        if late:
            self._late(late)
        return []

    def _merge(self, open_: list[list[Any]], hits: list[list[Any]]) -> list[Any]:
        """Replace ``hits`` (open sessions of one key) with one session holding them all."""
        hits.sort(key=itemgetter(_START))
        acc = hits[0][_ACC]
        for other in hits[1:]:
            acc = self._agg.merge(acc, other[_ACC])
        merged = [hits[0][_START], max(s[_END] for s in hits), acc]
        open_[:] = [s for s in open_ if all(s is not h for h in hits)]
        open_.append(merged)
        return merged

    def _fire(self, watermark: int | None) -> Batch:
        fired: list[tuple[int, Any, int, Any]] = []
        if watermark is None:
            for key, open_ in self._sessions.items():
                fired.extend((s[_END], key, s[_START], s[_ACC]) for s in open_)
            self._sessions.clear()
            self._heap.clear()
        else:
            heap, sessions = self._heap, self._sessions
            while heap and heap[0][0] <= watermark:
                key = heapq.heappop(heap)[2]
                held = sessions.get(key)
                if held is None:
                    continue  # stale: the key's sessions fired through another entry
                keep = _fire_sessions(held, key, watermark, fired)
                if keep:
                    sessions[key] = keep
                    heapq.heappush(heap, (min(s[_END] for s in keep), next(self._seq), key))
                else:
                    del sessions[key]
        return self._results(fired) if fired else []


def _fire_sessions(
    open_: Iterable[list[Any]], key: Any, watermark: int, fired: list[tuple[int, Any, int, Any]]
) -> list[list[Any]]:
    """Append the sessions of ``key`` that end by ``watermark`` to ``fired``; return the rest."""
    keep = []
    for s in open_:
        if s[_END] <= watermark:
            fired.append((s[_END], key, s[_START], s[_ACC]))
        else:
            keep.append(s)
    return keep
