"""Aggregations: what a window computes over its records.

An aggregation is a small, frozen, picklable object with no state of its own; the state of
each open window is its *accumulator*, which the window operator keeps::

    acc = agg.initial()
    acc = agg.add(acc, record)           # records of one window, in arrival order
    acc = agg.merge(a, b)                # session windows joining; a's records came first
    out = agg.result(acc, key, start, end)

``add`` and ``merge`` return the accumulator, which may be the one they were given,
mutated: mutable accumulators (a list) are the fast choice, immutable ones (an int) work too.
``output_type`` is the msgspec Struct ``result`` returns (or None), so edges carrying the
results get the typed codec. Write your own by subclassing ``Aggregation``; keep it at module
level so it pickles.

Field names are settings (``OHLCV(price="bid")``). ``add`` is the hot path (once per record
and window): OHLCV compiles it for its field names (see ``operators.codegen``) and keeps its
accumulator in a flat list.

An aggregation may also offer ``inline()``: the fields it reads and the source of ``add``'s
body, which mutates ``acc`` in place and reads field ``i`` as the local ``_i``. Any other
local the body assigns must be named ``_`` plus a letter (``_x``): the loop's own names
have no leading underscore, so they cannot clash. No ``return``, ``continue`` or ``break``.
The tumbling window pastes that body into its own loop, so a record costs no call at
all, and can then read the fields straight from the columns of a ``Columns`` batch.
``add`` is compiled from the same body, so both paths compute exactly the same thing.

With an inline body, ``window_kernel()`` may return a compiled loop that does the same over
whole columns, for a window keyed by a field whose time is the body's first field:
``kernel(bucket, initial, times, keys, *other_fields) -> rows done``, each row in order,
stopping before any row it cannot do exactly as the body would, which the window then
runs through its Python loop. OHLCV's is C (``operators/_ohlcv.c``) where the
extension is built; its results are identical to the bit (NaN where Python gives NaN).
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec

from engine.records import Bar
from operators.codegen import compile_function, identifier

__all__ = ["OHLCV", "Aggregation", "Count", "Vwap", "WindowValue"]


class WindowValue(msgspec.Struct, array_like=True, frozen=True):
    """A single value computed over the window ``[window_start, window_end)`` of ``key``.

    ``key`` is typed so that it crosses a channel as it was: msgpack has one array type,
    and a key tuple (``key=("symbol", "venue")``) must come back a hashable tuple, not a
    list. A key is a str, int, float, bool, None, or a tuple of those (a tuple nested in
    it arrives as a list).
    """

    key: str | int | float | bool | tuple[Any, ...] | None
    window_start: int
    window_end: int
    value: Any


class Aggregation:
    """Base of aggregations; subclasses implement initial, add, merge and result, and may
    name the record fields ``add`` reads (``fields_read``) for validation to check."""

    output_type: Any = None

    def fields_read(self) -> tuple[str, ...]:
        return ()

    def initial(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, record: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, acc: Any, key: Any, start: int, end: int) -> Any:
        raise NotImplementedError

    def inline(self) -> tuple[tuple[str, ...], str] | None:
        """``(fields, body)`` for window loops to paste in (module docstring), or None."""
        return None

    def window_kernel(self) -> Callable[..., int] | None:
        """A compiled loop doing what the inline body does, over the columns of a batch in
        one window (module docstring), or None."""
        return None


def _native_window() -> Callable[..., int] | None:
    try:
        from operators import _ohlcv
    except ImportError:  # built without a C compiler: the window's Python loop
        return None
    return _ohlcv.window


_ohlcv_window = _native_window()
NATIVE = _ohlcv_window is not None

# OHLCV accumulator layout: a flat list, the cheapest mutable thing CPython indexes.
OPEN_TS, OPEN, HIGH, LOW, CLOSE_TS, CLOSE, VOLUME, PV, N = range(9)
_NO_TS_HIGH = 2**63  # beyond any int64 ns: the first record is always earlier
_NO_TS_LOW = -(2**63) - 1


# The body of add: _0 is the record's time, _1 its price, _2 its size.
_OHLCV_BODY = """\
if _0 < acc[0]:
    acc[0] = _0
    acc[1] = _1
if _0 >= acc[4]:
    acc[4] = _0
    acc[5] = _1
if _1 > acc[2]:
    acc[2] = _1
if _1 < acc[3]:
    acc[3] = _1
acc[6] += _2
acc[7] += _1 * _2
acc[8] += 1
"""


def add_function(fields: tuple[str, ...], body: str) -> Callable[[Any, Any], Any]:
    """``add(acc, record)`` compiled from an inline body (see the module docstring)."""
    reads = "".join(f"    _{i} = record.{name}\n" for i, name in enumerate(fields))
    source = f"def add(acc, record):\n{reads}{textwrap.indent(body, '    ')}    return acc\n"
    return compile_function("add", source)


@functools.lru_cache(maxsize=64)
def _ohlcv_add(time: str, price: str, size: str) -> Callable[[list[Any], Any], list[Any]]:
    return add_function((time, price, size), _OHLCV_BODY)


@dataclass(frozen=True)
class OHLCV(Aggregation):
    """Open/high/low/close/volume bars as ``engine.records.Bar``.

    open and close are the prices of the earliest and latest records by event time (``time``
    field); among records with equal event times the earlier-arriving one is the open and the
    later-arriving one the close. volume is the sum of ``size``; vwap is
    ``sum(price * size) / sum(size)`` (NaN when the volume is 0); count is the record count.
    Sums run in arrival order, so results are reproducible to the bit for the same input.
    The bar's ``symbol`` is the window key: keep the key a str where bars cross a typed edge.
    ``add`` is compiled for the field names (and so is not a method: pickling rebuilds it).
    """

    price: str = "price"
    size: str = "size"
    time: str = "ts"

    output_type = Bar

    def __post_init__(self) -> None:
        for what in ("price", "size", "time"):
            identifier(getattr(self, what), f"OHLCV {what}")
        # An instance attribute, so agg.add is a plain function: no bound method per call.
        object.__setattr__(self, "add", _ohlcv_add(self.time, self.price, self.size))

    def __reduce__(self) -> tuple[Any, ...]:
        return (OHLCV, (self.price, self.size, self.time))

    def fields_read(self) -> tuple[str, ...]:
        return (self.price, self.size, self.time)

    def inline(self) -> tuple[tuple[str, ...], str]:
        return (self.time, self.price, self.size), _OHLCV_BODY

    def window_kernel(self) -> Callable[..., int] | None:
        # The C loop is this body's, and it makes a batch's new accumulators ahead of the
        # rows between their keys (operators/_ohlcv.c), which gives the Python loop's result
        # for this initial(), which depends on nothing: a subclass with a body or an
        # initial() of its own gets none.
        own = self.inline()[1] is _OHLCV_BODY and type(self).initial is OHLCV.initial
        return _ohlcv_window if own else None

    def initial(self) -> list[Any]:
        inf = math.inf
        return [_NO_TS_HIGH, 0.0, -inf, inf, _NO_TS_LOW, 0.0, 0.0, 0.0, 0]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        out = list(a)
        if b[OPEN_TS] < a[OPEN_TS]:
            out[OPEN_TS], out[OPEN] = b[OPEN_TS], b[OPEN]
        if b[CLOSE_TS] >= a[CLOSE_TS]:
            out[CLOSE_TS], out[CLOSE] = b[CLOSE_TS], b[CLOSE]
        out[HIGH] = max(a[HIGH], b[HIGH])
        out[LOW] = min(a[LOW], b[LOW])
        out[VOLUME] = a[VOLUME] + b[VOLUME]
        out[PV] = a[PV] + b[PV]
        out[N] = a[N] + b[N]
        return out

    def result(self, acc: list[Any], key: Any, start: int, end: int) -> Bar:
        volume = acc[VOLUME]
        vwap = acc[PV] / volume if volume else math.nan
        return Bar(
            key, start, end, acc[OPEN], acc[HIGH], acc[LOW], acc[CLOSE], volume, vwap, acc[N]
        )


@dataclass(frozen=True)
class Count(Aggregation):
    """The number of records in the window, as ``WindowValue(value=int)``."""

    output_type = WindowValue

    def initial(self) -> int:
        return 0

    def add(self, acc: int, record: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int, key: Any, start: int, end: int) -> WindowValue:
        return WindowValue(key, start, end, acc)


@dataclass(frozen=True)
class Vwap(Aggregation):
    """Volume-weighted average price, as ``WindowValue(value=float)``; NaN for no volume."""

    price: str = "price"
    size: str = "size"
    _get: Any = field(init=False, repr=False, compare=False)

    output_type = WindowValue

    def __post_init__(self) -> None:
        for what in ("price", "size"):
            identifier(getattr(self, what), f"Vwap {what}")
        object.__setattr__(self, "_get", attrgetter(self.price, self.size))

    def fields_read(self) -> tuple[str, ...]:
        return (self.price, self.size)

    def initial(self) -> list[float]:
        return [0.0, 0.0]

    def add(self, acc: list[float], record: Any) -> list[float]:
        p, s = self._get(record)
        acc[0] += p * s
        acc[1] += s
        return acc

    def merge(self, a: list[float], b: list[float]) -> list[float]:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc: list[float], key: Any, start: int, end: int) -> WindowValue:
        return WindowValue(key, start, end, acc[0] / acc[1] if acc[1] else math.nan)
