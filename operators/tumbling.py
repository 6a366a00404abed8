"""The tumbling window's per-record loops, compiled for the field names of a config.

Three loops, each compiled once per (key, time, offset, aggregation body):

* ``rows_loop``, any aggregation: per record the window start, a lateness check, the
  window's bucket (cached, since consecutive records nearly always share it), the key's
  accumulator and one call of ``aggregation.add``.
* ``rows_loop`` with an inline aggregation (``Aggregation.inline``): the same, with the
  body of ``add`` pasted into the loop instead of a call.
* ``columns_loop``: for a ``Columns`` batch, keyed by a field, with an inline aggregation.
  It zips the columns it needs (time, key, the aggregation's fields), so no record object
  exists at all. Late records are rare: the time column's lowest value shows whether the
  batch has any, and only then does a slower pass pick them out. A batch spans
  milliseconds and a window usually seconds, so its lowest and highest time nearly always
  put the whole batch in one window: then a second loop runs without any per-record
  window arithmetic (the window is found once, for the batch). ``int_bounds`` finds both
  in one pass in C (``operators/_columns.c``) where the extension is built: ``min`` and
  ``max`` compare ns times, ints of three digits, at about a tenth of the loop's cost.

The watermark is fixed for a batch, so lateness is one comparison of the window start.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from operators.codegen import compile_function

__all__ = [
    "columns_loop",
    "fields_of",
    "int_bounds",
    "native_int_bounds",
    "rows_loop",
    "window_start",
]

_ROWS = """\
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
{switch}        key = {key}
        acc = bucket.get(key)
{update}
    if late:
        self._late(late)
    return []
"""

# Shared by the loops: the window's bucket when the window changes (cached, since
# consecutive records nearly always share it), and a new key's accumulator.
_SWITCH = """\
        if start != current:
            current = start
            found = windows.get(start)
            if found is None:
                found = windows[start] = {}
            bucket = found
"""

_CALL = "        bucket[key] = add(initial() if acc is None else acc, record)\n"

_INLINE = """\
        if acc is None:
            acc = bucket[key] = initial()
"""

_COLUMNS = """\
def process(self, columns):
    size, offset, windows = self._size, self._offset, self._windows
    initial = self._agg.initial
    current = None
    bucket = {{}}
    for {names} in zip(*columns):
        start = {start}
{switch}        acc = bucket.get(key)
{inline}{body}"""


_ONE_WINDOW = """\
def process(self, columns, start):
    windows = self._windows
    initial = self._agg.initial
    bucket = windows.get(start)
    if bucket is None:
        bucket = windows[start] = {{}}
    for {names} in zip(*columns):
        acc = bucket.get(key)
{inline}{body}"""


def _native() -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    try:
        from operators import _columns
    except ImportError:  # built without a C compiler: min(), max() and attrgetter
        return None, None
    return _columns.int_bounds, _columns.fields


_int_bounds, _fields = _native()
NATIVE = _int_bounds is not None


def fields_of(records: list[Any], names: tuple[str, ...]) -> tuple[list[Any], ...] | None:
    """The fields ``names`` of ``records`` as columns, read in C when every record is of one
    slotted type with the default attribute access (a msgspec Struct): None otherwise, or
    without the extension (see operators/_columns.c)."""
    if _fields is None:
        return None
    found: tuple[list[Any], ...] | None = _fields(records, names)
    return found


def native_int_bounds(times: Sequence[int]) -> tuple[int, int] | None:
    """``(min, max)`` of an exact list of ints within 64 bits or an array of 8-byte ints, in
    C; None for anything else or without the extension."""
    return _int_bounds(times) if _int_bounds is not None else None


def int_bounds(times: Sequence[int]) -> tuple[int, int]:
    """``(min(times), max(times))`` of a non-empty time column, in one pass in C where it
    can (an exact list of ints within 64 bits, an array of 8-byte ints), else by ``min``
    and ``max``."""
    found = native_int_bounds(times)
    return found if found is not None else (min(times), max(times))


def window_start(offset: bool) -> str:
    """The expression for the start of the window holding time ``t``."""
    return "t - (t - offset) % size" if offset else "t - t % size"


@functools.lru_cache(maxsize=64)
def rows_loop(
    key: str | None, time: str, offset: bool, inline: tuple[tuple[str, ...], str] | None
) -> Callable[..., list[Any]]:
    """``process(logic, batch)`` over records; ``key`` None means ``logic._key_of``."""
    key_expr = "key_of(record)" if key is None else f"record.{key}"
    if inline is None:
        update = _CALL
    else:
        fields, body = inline
        reads = "".join(
            f"        _{i} = {'t' if name == time else f'record.{name}'}\n"
            for i, name in enumerate(fields)
        )
        update = _INLINE + reads + textwrap.indent(body, " " * 8)
    source = _ROWS.format(
        time=time, start=window_start(offset), key=key_expr, switch=_SWITCH, update=update
    )
    return compile_function("process", source)


@functools.lru_cache(maxsize=64)
def columns_loop(
    key: str, time: str, offset: bool, inline: tuple[tuple[str, ...], str]
) -> tuple[tuple[str, ...], Callable[..., None], Callable[..., None]]:
    """The fields to zip, in order, ``process(logic, columns)`` over their columns and
    ``process(logic, columns, start)`` for columns that all fall in the window at
    ``start``. The caller has taken the late records out."""
    fields, body = inline
    zipped = [time, key]
    names = ["t", "key"]
    rename = []
    for i, name in enumerate(fields):
        if name in zipped:
            rename.append(f"_{i} = {names[zipped.index(name)]}\n")
        else:
            zipped.append(name)
            names.append(f"_{i}")
    inner = textwrap.indent("".join(rename) + body, " " * 8)
    loop = {"names": ", ".join(names), "inline": _INLINE, "body": inner}
    source = _COLUMNS.format(start=window_start(offset), switch=_SWITCH, **loop)
    one = _ONE_WINDOW.format(**loop)
    return tuple(zipped), compile_function("process", source), compile_function("process", one)
