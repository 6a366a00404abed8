"""Parsing tick rows ``symbol,ts,price,size``: one grammar, two fast paths and a reference
path.

A row is valid when it has exactly four comma-separated fields (no quoting), a non-empty
symbol (taken verbatim) with no ``"`` or ``\\r`` in it, a ``ts`` that is an integer in the
int64 range (``int()``'s syntax, or a decimal with an exactly integral value such as
``17e17``), a finite ``price`` and a finite ``size > 0`` (``float()``'s syntax, so
whitespace around a number is allowed). A trailing ``\\r`` (CRLF files) is ignored.

* ``parse_columns`` (fastest path, ``operators/_csvticks.c`` where it is built): a block of
  lines straight into four columns in C, a list of symbols and the times, prices and sizes
  packed in arrays (``array.array``), without a ``Tick`` or a number object per row, for
  the strict part of the grammar that well-formed files use (plain decimals, no ``+``,
  spaces or ``_``); ``None`` for a block with any other line, and always when the
  extension is not built. Its values are ``parse_lines``'s (numbers by the conversion
  ``float()`` uses).
* ``parse_block`` (fast path): turns a block of lines into JSON with two C-level
  ``bytes.replace`` calls (every field quoted) and decodes it with msgspec straight into
  ``Tick`` structs, coercing the quoted numbers (``strict=False``); byte scans rule out JSON
  escapes, one regular expression rules out empty symbols and any ``ts`` that is not a plain
  integer (msgspec would read ``1.00000000000000001`` or ``1e-400`` through a float), a
  comma count rules out extra fields, and one pass over prices and sizes rules out
  non-finite values and sizes <= 0. It returns ``None`` when anything
  might be wrong, and accepts only rows that ``parse_lines`` accepts, with the same values
  (except that a price written ``-0`` may read as ``0.0``). Refused blocks cost a little
  extra, then go to the reference path.
* ``parse_lines`` (reference path): ``str.split(',')`` and ``int``/``float`` in one tight
  loop, reporting each bad line. Used for any batch the fast path refuses.
* ``diagnose``: why a line is bad, for messages and the dead-letter file.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable
from decimal import Decimal
from operator import attrgetter
from typing import TypeAlias

import msgspec

from engine.records import Tick
from operators.csvio import TICK_HEADER

__all__ = [
    "NATIVE",
    "diagnose",
    "parse_block",
    "parse_columns",
    "parse_float",
    "parse_int",
    "parse_lines",
]

# (a string: array.array takes no type arguments at run time before Python 3.12)
TickColumns: TypeAlias = "tuple[list[str], array[int], array[float], array[float]]"
_LAX = msgspec.json.Decoder(list[Tick], strict=False)
_PRICE = attrgetter("price")
_SIZE = attrgetter("size")
_TS = attrgetter("ts")
TS_MIN, TS_MAX = -(1 << 63), (1 << 63) - 1  # a ts is an int64 (ns since the epoch)
_BEYOND_INT64_DIGITS = 19  # 10**19 > TS_MAX
_BEYOND_INT64 = 10**_BEYOND_INT64_DIGITS
# Lines with a non-empty symbol and a ts of plain digits, as parse_block takes them (possessive
# quantifiers: a failing block costs one pass, not backtracking).
_LINE = rb"[^,\n]++,-?+[0-9]++,[^\n]*+"
_PLAIN_TS_LINES = re.compile(_LINE + rb"(?:\n" + _LINE + rb")*+")


def _native_parse() -> Callable[[bytes], TickColumns | None] | None:
    try:
        from operators import _csvticks
    except ImportError:  # not built (setup.py: the extensions are optional)
        return None
    return _csvticks.parse


_native_columns = _native_parse()
NATIVE = _native_columns is not None


def parse_columns(data: bytes) -> TickColumns | None:
    """All rows of ``data`` (whole lines, as ``parse_block`` takes them) as the columns
    ``(symbols, times, prices, sizes)``, or None: a line outside the strict grammar of
    ``operators/_csvticks.c``, or the extension not built."""
    return None if _native_columns is None else _native_columns(data)


def parse_int(text: str) -> int:
    """``int(text)``, or the value of a decimal that is exactly an integer (``17e17``,
    ``1700000000000000000.0``), read as a decimal, never through a float; else ValueError.
    A magnitude of 10**19 or more (outside int64 either way) comes back as +-10**19, so a
    huge exponent costs no huge int."""
    try:
        return int(text)
    except ValueError:
        try:
            value = Decimal(text)
        except ArithmeticError:  # decimal.InvalidOperation: not a number at all
            raise ValueError(text) from None
        if not value.is_finite() or value != value.to_integral_value():
            raise ValueError(text) from None
        if value and value.adjusted() >= _BEYOND_INT64_DIGITS:
            return -_BEYOND_INT64 if value < 0 else _BEYOND_INT64
        return int(value)


def parse_float(text: str) -> float:
    """``float(text)``, or msgspec's lax reading of it; else ValueError."""
    try:
        return float(text)
    except ValueError:
        try:
            return msgspec.convert(text, float, strict=False)
        except msgspec.ValidationError:
            raise ValueError(text) from None


def parse_block(data: bytes) -> list[Tick] | None:
    """All rows of ``data`` (whole lines of UTF-8, ``\n``-separated, final ``\n``
    optional) as ticks, or None when a row may be bad or quoting could change a field."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data.endswith(b"\n"):
        data = data[:-1]
    elif not data:
        return []
    if (
        b"\\" in data  # a JSON escape
        or b'"' in data
        # an empty line or symbol (every other comma would open a number), or a ts that
        # msgspec would read through a float (a fraction or an exponent)
        or _PLAIN_TS_LINES.fullmatch(data) is None
    ):
        return None
    try:
        ticks = _LAX.decode(b'[["' + data.replace(b",", b'","').replace(b"\n", b'"],["') + b'"]]')
    except (msgspec.DecodeError, UnicodeDecodeError):  # few fields, a bad number or byte
        return None
    if data.count(b",") != 3 * len(ticks):  # msgspec ignores extra trailing array items
        return None
    sizes = list(map(_SIZE, ticks))
    total = sum(map(_PRICE, ticks)) + sum(sizes)
    # total - total == 0 exactly when no price or size is nan or inf (an overflowing sum
    # only sends the block to the reference path); min() > 0 as nan is ruled out already.
    if total - total != 0.0 or not min(sizes) > 0.0:
        return None
    times = list(map(_TS, ticks))  # msgspec reads a quoted integer of any size
    if min(times) < TS_MIN or max(times) > TS_MAX:
        return None
    return ticks


def parse_lines(lines: list[str], out: list[Tick], bad: list[str]) -> None:
    """Append a Tick to ``out`` for each valid line and each invalid line to ``bad``."""
    append, reject = out.append, bad.append
    for line in lines:
        parts = line.split(",")
        if len(parts) == 4:
            symbol, ts, price, size = parts
            try:
                t = int(ts)
                p = float(price)
                s = float(size)
            except ValueError:
                try:
                    t = parse_int(ts)
                    p = parse_float(price)
                    s = parse_float(size)
                except ValueError:
                    reject(line)
                    continue
            # p - p == 0 holds exactly for finite p; s - s == 0 rules out s = inf
            if (
                p - p == 0.0
                and s > 0.0
                and s - s == 0.0
                and TS_MIN <= t <= TS_MAX
                and symbol
                and '"' not in symbol
                and "\r" not in symbol
            ):
                append(Tick(symbol, t, p, s))
                continue
        reject(line)


def diagnose(line: str) -> str:
    """Why ``line`` is not a valid tick row."""
    line = line.removesuffix("\r")
    if not line:
        return "empty line"
    parts = line.split(",")
    if len(parts) != 4:
        return f"expected 4 fields ({TICK_HEADER}), got {len(parts)}"
    symbol, ts, price, size = parts
    if not symbol:
        return "empty symbol"
    if '"' in symbol or "\r" in symbol:
        return f"symbol {symbol!r} holds a quote or carriage return (this format has no quoting)"
    try:
        t = parse_int(ts)
    except ValueError:
        return f"ts {ts!r} is not an integer (ns since the epoch)"
    if not TS_MIN <= t <= TS_MAX:
        return f"ts {ts!r} is outside the int64 range of ns since the epoch"
    for name, text in (("price", price), ("size", size)):
        try:
            value = parse_float(text)
        except ValueError:
            return f"{name} {text!r} is not a number"
        if value - value != 0.0:
            return f"{name} {text!r} is not finite"
    if not parse_float(size) > 0.0:
        return f"size {size!r} is not positive"
    return "unparsable row"
