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
  is lost silently: validation refuses a DAG where nothing consumes it. With
  ``late_output=None`` late records are only counted, which the user has then chosen.
  Tumbling and session records are late or aggregated, never both. A sliding record is
  late when it missed *any* of its windows (its earliest one has fired); it is still added
  to those of its windows that are open, and goes to ``late_output`` once.
  A session record is late when its own window ``[t, t + gap)`` has ended and it touches no
  open session of its key (it may extend an open session backwards).
* **Firing.** ``on_watermark(wm)`` returns the result of every window with ``end <= wm`` and
  forgets its state; ``on_eof()`` returns every open window's. Results come sorted by
  ``(window_end, key)`` (keys of different types that do not compare, say ints and strs,
  by type name and then key; keys that do not compare even so, by type name and
  ``repr``), so the output is deterministic whatever the batch cuts.
  ``process`` only aggregates and returns no records.
* **Sessions** are ``[first ts, last ts + gap)``; a record whose window ``[t, t + gap)``
  overlaps open sessions of its key merges them (``aggregation.merge``, earlier session
  first). A new session may overlap one of its key that has already fired.

Cost per record is what this operator is about. The tumbling loops are compiled for the
key and time field names (``operators.tumbling``; ``record.ts`` costs a fraction of
``attrgetter("ts")(record)``); per record they do integer arithmetic, two dict look-ups and
the aggregation's ``add`` (pasted into the loop when the aggregation offers ``inline()``,
as OHLCV does), and allocate nothing the aggregation does not. With a field key and an
inline aggregation, ``Columns`` batches are read column by column, no record built. Sliding and
session windows do more per record (several windows; overlap checks) in plain loops; a
session record finds the sessions it touches by bisection, so many open sessions per key
cost O(log) each, not a scan.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from engine.columns import Columns, field_names
from engine.errors import DagError
from engine.operator import Batch, Context, Operator, OperatorLogic, hook
from operators.aggregations import Aggregation
from operators.assigners import Assigner, Session, Sliding, Tumbling
from operators.codegen import identifier
from operators.keys import KeySpec, check_key, key_and_time, key_fields, key_getter
from operators.tumbling import (
    columns_loop,
    fields_of,
    int_bounds,
    native_int_bounds,
    rows_loop,
)

__all__ = ["WindowAggregate"]

# Records in a batch from which the tumbling window reads them as columns, where its
# aggregation has a kernel: below it the rows loop costs less than making the columns
# (OHLCV on Tick records, ns/tick, rows loop / kernel: 4 records 581-592 / 586-607, 6
# records 536-577 / 453-465, 8 records 490-503 / 349-391; benchmarks/RESULTS.md).
ROWS_AS_COLUMNS = 8


@dataclass(frozen=True)
class WindowAggregate(Operator):
    """Aggregate keyed records over event-time windows; see the module docstring.

    ``output_type`` is the aggregation's; the late side output carries the input records,
    of ``input_type`` (None, the default: the input edges' type). ``late_output=None``
    counts late records (``late``) without keeping them.
    """

    assigner: Assigner
    aggregation: Aggregation
    key: KeySpec = "symbol"
    time: str = "ts"
    late_output: str | None = "late"
    input_type: Any = None

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
        late = self.late_output
        if late is not None and (not isinstance(late, str) or late in ("", "main")):
            raise DagError(
                "WindowAggregate late_output must name a side output other than 'main', or "
                f"be None to count late records without keeping them, got {late!r}"
            )
        object.__setattr__(self, "output_type", getattr(self.aggregation, "output_type", None))
        object.__setattr__(self, "side_outputs", () if late is None else (late,))
        object.__setattr__(self, "side_types", {} if late is None else {late: self.input_type})

    def without_side(self, output: str) -> str:
        return "pass late_output=None to count late records without keeping them"

    def passes_input(self, output: str) -> bool:
        return output == self.late_output

    def fields_read(self) -> tuple[str, ...]:
        """The key's and time's fields, and those the aggregation names."""
        own = hook(self.aggregation, "fields_read") or ()
        return tuple(dict.fromkeys((*key_fields(self.key), self.time, *own)))

    def state_key(self) -> Any:
        return self.key

    def build(self, ctx: Context) -> OperatorLogic:
        if isinstance(self.assigner, Tumbling):
            return _TumblingLogic(self, ctx)
        if isinstance(self.assigner, Sliding):
            return _SlidingLogic(self, ctx)
        return _SessionLogic(self, ctx)


def _in_order(fired: list[tuple[int, Any, int, Any]]) -> list[tuple[int, Any, int, Any]]:
    """Sort (end, key, start, acc) by end, and each end's results by key (``_by_key``).

    One sort by end, then one of each end's keys alone: str keys (or int ends) alone compare
    directly, where (end, key) pairs go through the tuple comparison, which made sorting most
    of the work of a 1,000-bar close.
    """
    by_end = sorted(fired, key=itemgetter(0))
    ordered: list[tuple[int, Any, int, Any]] = []
    for _, window in itertools.groupby(by_end, key=itemgetter(0)):
        ordered += _by_key(list(window), itemgetter(1))
    return ordered


def _keys_in_order(bucket: dict[Any, Any]) -> list[Any]:
    """A window's keys in order (``_by_key``)."""
    return _by_key(list(bucket), lambda key: key)


def _by_key(items: list[Any], key_of: Callable[[Any], Any]) -> list[Any]:
    """``items`` sorted by key; keys of types that do not compare with each other by type
    name, then key; keys that do not compare even so (a tuple holding None and a str, say)
    by type name and ``repr``."""
    try:
        return sorted(items, key=key_of)
    except TypeError:
        pass
    try:
        return sorted(items, key=lambda item: (type(key_of(item)).__qualname__, key_of(item)))
    except TypeError:
        return sorted(items, key=lambda item: (type(key_of(item)).__qualname__, repr(key_of(item))))


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
        if self._late_output is not None:
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
        starts = windows if watermark is None else [s for s in windows if s + size <= watermark]
        result = self._agg.result
        out: list[Any] = []
        for start in sorted(starts):  # one size: ends come in the order of the starts
            end = start + size
            bucket = windows.pop(start)
            out += [result(bucket[key], key, start, end) for key in _keys_in_order(bucket)]
        return out


class _TumblingLogic(_FixedLogic):
    """Tumbling windows through the loops of ``operators.tumbling``. With a field key and
    an aggregation that inlines (OHLCV), ``Columns`` batches are read column by column."""

    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        assert isinstance(config.assigner, Tumbling)
        super().__init__(config, ctx, config.assigner.size)
        self._offset = config.assigner.offset
        key_field = config.key if isinstance(config.key, str) else None
        self._key_of = key_getter(config.key)
        inline = self._agg.inline() if hasattr(self._agg, "inline") else None
        offset = self._offset != 0
        self._process = rows_loop(key_field, config.time, offset, inline)
        self.accepts_columns = False
        self._kernel: Callable[..., int] | None = None
        if key_field is not None and inline is not None:
            self.accepts_columns = True
            self._fields, self._process_columns, self._process_window = columns_loop(
                key_field, config.time, offset, inline
            )
            # A kernel takes (time, key, the aggregation's other fields), its first field
            # being the window's time: the loop's columns in most configurations.
            fields = inline[0]
            if self._fields == (config.time, key_field, *fields[1:]) and fields[0] == config.time:
                self._kernel = getattr(self._agg, "window_kernel", lambda: None)()
            self._getters = [attrgetter(name) for name in self._fields]
        self._positions: dict[type, tuple[int, ...] | None] = {}

    def process(self, batch: Batch | Columns) -> Batch:
        if not isinstance(batch, Columns):
            if self._kernel is not None and type(batch) is list and len(batch) >= ROWS_AS_COLUMNS:
                return self._rows_as_columns(batch)
            return self._process(self, batch)
        if not self.accepts_columns:  # the task converts; a direct caller may not
            return self._process(self, batch.rows())
        positions = self._columns_of(batch.type)
        if positions is None:  # the records lack a field: the rows loop says which
            return self._process(self, batch.rows())
        times = batch.data[positions[0]]
        if not times:
            return []
        low, high = int_bounds(times)
        open_from = self._open_from()
        if low < open_from:
            batch = self._take_late(batch, times, open_from)
            if not batch:
                return []
            low = min(batch.data[positions[0]])
        self._aggregate([batch.data[i] for i in positions], low, high)
        return []

    def _rows_as_columns(self, batch: Batch) -> Batch:
        """Records through the kernel: the loop's fields read into columns (in C for records
        of a Struct type, else by a ``map`` of an ``attrgetter`` each). The rows loop takes
        a batch with a record whose fields cannot be read (it raises at that record, having
        done those before it), with times that are not all ints within 64 bits, or with
        late records (it sends them on as they are)."""
        columns: Sequence[list[Any]] | None = fields_of(batch, self._fields)
        if columns is None:
            try:
                columns = [list(map(getter, batch)) for getter in self._getters]
            except Exception:
                return self._process(self, batch)
        bounds = native_int_bounds(columns[0])
        if bounds is None or bounds[0] < self._open_from():
            return self._process(self, batch)
        self._aggregate(columns, *bounds)
        return []

    def _open_from(self) -> int:
        """The earliest time a record may have and not be late. A record is late when its
        window has ended (start <= watermark - size), which for a window start that grows
        with t is: t before the first window still open."""
        return self._start(self._watermark - self._size) + self._size

    def _aggregate(self, columns: Sequence[Sequence[Any]], low: int, high: int) -> None:
        """Aggregate on-time columns whose times lie in ``[low, high]``."""
        if self._kernel is not None:
            self._window_by_window(columns)
            return
        first = self._start(low)
        if first == self._start(high):
            self._process_window(self, columns, first)  # one window: found once
        else:
            self._process_columns(self, columns)

    def _window_by_window(self, columns: Sequence[Sequence[Any]]) -> None:
        """Aggregate columns through the kernel (C), one call for each run of rows in one
        window: a batch in one window is one call; rows come nearly in time order, so a
        batch across a window's end is two (a few more where times are out of order around
        it). The Python loop takes over from a row the kernel cannot do."""
        kernel, initial, windows, size = self._kernel, self._agg.initial, self._windows, self._size
        assert kernel is not None
        times = columns[0]
        n, i = len(times), 0
        while i < n:
            start = self._start(times[i])
            bucket = windows.get(start)
            if bucket is None:
                bucket = windows[start] = {}
            done = kernel(bucket, initial, *columns, i, start, start + size)
            if done == i:
                self._process_columns(self, [column[i:] for column in columns])
                return
            i = done

    def _start(self, t: int) -> int:
        """The start of the window holding time ``t``."""
        start: int = t - (t - self._offset) % self._size
        return start

    def _columns_of(self, record_type: type) -> tuple[int, ...] | None:
        """Where the loop's fields are among the columns of ``record_type``; None when it
        lacks one, or when its time is not declared ``int`` (the batch-wide min/max
        shortcuts need times that order: a float NaN does not), so records are read."""
        if record_type not in self._positions:
            types = {f.name: f.type for f in msgspec.structs.fields(record_type)}
            names = field_names(record_type)
            usable = all(name in types for name in self._fields)
            usable = usable and types[self._fields[0]] is int
            positions = tuple(names.index(name) for name in self._fields) if usable else None
            self._positions[record_type] = positions
        return self._positions[record_type]

    def _take_late(self, batch: Columns, times: Any, open_from: int) -> Columns:
        """Send the records before ``open_from`` to the late output; return the rest."""
        late = [i for i, t in enumerate(times) if t < open_from]
        if self._late_output is None:
            self._ctx.count("late", len(late))  # no records to build
        else:
            self._late(batch.take(late).rows())
        return batch.take([i for i, t in enumerate(times) if not t < open_from])


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


# A session: [start (first ts), end (last ts + gap), accumulator, open], mutated in place;
# ``open`` turns False when the session fires or is merged into an earlier one.
_START, _END, _ACC, _OPEN = 0, 1, 2, 3
_start_of, _end_of = itemgetter(_START), itemgetter(_END)


class _SessionLogic(_WindowLogic):
    """Session windows. State:

    * ``{key: [session, ...]}``: the open sessions of each key, sorted by start. They never
      overlap (a record merges every session its window touches, and the merged session is
      the union of what it bridged), so they are sorted by end too: the sessions a record
      touches are one run found by bisection (or by looking at the last one or two, for
      records in order), and the sessions a watermark fires are a prefix.
    * a heap of ``(end, seq, key, session)``: one entry per open session, no later than its
      end (sessions only grow), plus one per merged-away session until it comes up. A
      popped entry is dropped if its session has closed, fires the session if it has
      ended, and is otherwise pushed again at the session's current end, past the watermark.

    So a record costs O(log open sessions of its key) plus a list splice (a C memmove), and
    a watermark O(entries due * log heap): entries are pushed once per session and once per
    pop that finds its session grown since, and every pop takes out an entry at or before
    the watermark and pushes nothing at or before it, so ``_fire`` always ends. (An earlier
    heap of ``(end, seq, key)`` could not tell which session an entry was for: it re-pushed
    every entry of a key while the key had any session open, so the heap kept an entry for
    each session the key ever had and each watermark went through all of them.)"""

    def __init__(self, config: WindowAggregate, ctx: Context) -> None:
        assert isinstance(config.assigner, Session)
        super().__init__(config, ctx)
        self._gap = config.assigner.gap
        self._sessions: dict[Any, list[list[Any]]] = {}
        self._heap: list[tuple[int, int, Any, list[Any]]] = []
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
        add, initial, merge = agg.add, agg.initial, agg.merge
        bisect_left, bisect_right, heappush = (
            bisect.bisect_left,
            bisect.bisect_right,
            heapq.heappush,
        )
        late: list[Any] = []
        for record in batch:
            key, t = key_time(record)
            end = t + gap
            open_ = sessions.get(key)
            if open_ is None:
                if end <= watermark:
                    late.append(record)
                    continue
                session = [t, end, add(initial(), record), True]
                sessions[key] = [session]
                heappush(heap, (end, next(seq), key, session))
                continue
            # The run open_[lo:hi] of sessions touching [t, end): ends after t, starts before end.
            last = open_[-1]
            if last[_END] <= t:  # in order: after every open session
                lo = hi = len(open_)
            elif last[_START] < end and (len(open_) == 1 or open_[-2][_END] <= t):
                lo, hi = len(open_) - 1, len(open_)  # in order: extends the last session
            else:
                lo = bisect_right(open_, t, key=_end_of)
                hi = bisect_left(open_, end, lo, key=_start_of)
            if lo == hi:
                if end <= watermark:
                    late.append(record)
                    continue
                session = [t, end, add(initial(), record), True]
                open_.insert(lo, session)
                heappush(heap, (end, next(seq), key, session))
                continue
            session = open_[lo]
            if hi - lo > 1:  # the record bridges sessions: merge them into the earliest
                acc = session[_ACC]
                for other in open_[lo + 1 : hi]:
                    acc = merge(acc, other[_ACC])
                    other[_OPEN] = False  # its heap entry is dropped when it comes up
                session[_ACC] = acc
                session[_END] = open_[hi - 1][_END]
                del open_[lo + 1 : hi]
            session[_ACC] = add(session[_ACC], record)
            if t < session[_START]:
                session[_START] = t
            if end > session[_END]:
                session[_END] = end
        if late:
            self._late(late)
        return []

    def _fire(self, watermark: int | None) -> Batch:
        fired: list[tuple[int, Any, int, Any]] = []
        sessions, heap = self._sessions, self._heap
        if watermark is None:
            for key, open_ in sessions.items():
                fired.extend((s[_END], key, s[_START], s[_ACC]) for s in open_)
            sessions.clear()
            heap.clear()
            return self._results(fired) if fired else []
        touched: dict[Any, None] = {}
        heappop, heappush, seq = heapq.heappop, heapq.heappush, self._seq
        while heap and heap[0][0] <= watermark:
            _, _, key, session = heappop(heap)
            if not session[_OPEN]:
                continue
            end = session[_END]
            if end > watermark:  # it grew since this entry: come back at its end
                heappush(heap, (end, next(seq), key, session))
                continue
            session[_OPEN] = False
            fired.append((end, key, session[_START], session[_ACC]))
            touched[key] = None
        for key in touched:  # what fired is a prefix of each key's open sessions
            open_ = sessions[key]
            n = 0
            while n < len(open_) and not open_[n][_OPEN]:
                n += 1
            if n == len(open_):
                del sessions[key]
            else:
                del open_[:n]
        return self._results(fired) if fired else []
