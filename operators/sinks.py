"""Sinks: files of bars and ticks, and in-memory sinks for tests and inline runs.

File sinks (``CsvBars``, ``JsonLinesBars``, ``CsvTicksSink``) write to a temporary file beside
the target and rename it into place in ``close()``; ``abort()`` (a failed job) removes the
temporary, so a target that exists is complete, and an earlier file at that path is left as
it was by a run that fails before this sink has all of its input. Each writes one file, so
each runs as one replica: the class says so (``max_parallelism = 1``, for the engine's
validation) and ``build`` refuses a context with ``parallelism > 1`` as well. ``close()``
returns ``Written(path, records)``. ``declared_files()`` names the file, so validation
refuses two sinks on one path, and the CSV sinks' ``fields_read()`` an edge of records
without the fields they write.

Formats:

* ``CsvBars``: header ``symbol,window_start,window_end,open,high,low,close,volume,vwap,count``;
  integers as integers, floats by ``repr`` (``float()`` reads back the exact value,
  ``nan``/``inf`` included).
* ``CsvTicksSink``: the ``CsvTicks`` input format, header ``symbol,ts,price,size``: late
  ticks written here can be read back by ``CsvTicks``, with the same values. A tick that
  could not (an empty symbol, a price that is not finite, a size not above 0, a ts outside
  int64) is refused with ``RecordError`` naming it and the reason.
* ``JsonLinesBars``: one JSON object per line with the field names (any msgspec Struct works);
  finite floats round-trip exactly, ``nan``/``inf`` become ``null`` (JSON has no such numbers).

CSV is written without quoting: a symbol holding a comma, a quote or a line break is refused
with ``RecordError`` rather than written as a row that reads back differently.

``Collect()`` returns the records it received (with ``Watermark`` marks in order when
``watermarks=True``); ``CountSink()`` returns ``Counts(records, batches, watermarks)`` (not
``Count``: that name is the count aggregation's). Both may run with any parallelism: each
replica returns its own part.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec

from engine.errors import DagError, RecordError
from engine.operator import Batch, Context, Files, Sink, SinkLogic, Watermark
from engine.records import Bar, Tick
from operators.csvio import BAR_HEADER, TICK_HEADER, AtomicFile
from operators.csvparse import TS_MAX, TS_MIN, diagnose, parse_lines

__all__ = [
    "Collect",
    "CountSink",
    "Counts",
    "CsvBars",
    "CsvTicksSink",
    "JsonLinesBars",
    "Written",
]


@dataclass(frozen=True)
class Written:
    """What a file sink's ``close()`` returns: the file it wrote and how many records."""

    path: str
    records: int


@dataclass(frozen=True)
class Counts:
    """What ``CountSink``'s ``close()`` returns."""

    records: int
    batches: int
    watermarks: int


class _FileSink(Sink):
    """A sink that writes one file; subclasses give ``header`` and ``format``."""

    max_parallelism = 1
    path: str
    header: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))

    def format(self, batch: Batch) -> str:
        raise NotImplementedError

    def declared_files(self, parallelism: int) -> Files:
        return Files(writes=(self.path,))

    def build(self, ctx: Context) -> FileSinkLogic:
        if ctx.parallelism > 1:
            raise DagError(
                f"sink node {ctx.node!r}: {self!r} writes one file and cannot run with "
                f"parallelism {ctx.parallelism}; give the sink parallelism=1"
            )
        return FileSinkLogic(self.path, self.header, self.format, ctx.job)


class FileSinkLogic(SinkLogic):
    """Writes formatted batches to an ``AtomicFile``; committed by ``close()``."""

    def __init__(
        self, path: str, header: str | None, fmt: Callable[[Batch], str], owner: str = ""
    ) -> None:
        self.path = path
        self.format = fmt
        self.records = 0
        self.file = AtomicFile(path, owner)
        if header is not None:
            self.file.write(header + "\n")

    def write(self, batch: Batch) -> None:
        text = self.format(batch)
        try:
            self.file.write(text)  # (encoded whole first: nothing of it is written on error)
        except UnicodeEncodeError as exc:
            line = text.count("\n", 0, exc.start)  # one line per record
            culprit = repr(batch[line]) if line < len(batch) else f"a batch of {len(batch)}"
            raise RecordError(
                f"file sink {self.path!r} cannot write {culprit}: "
                f"{text[exc.start : exc.end]!r} cannot be encoded as UTF-8 ({exc.reason})"
            ) from None
        self.records += len(batch)

    def close(self) -> Written:
        self.file.commit()
        return Written(self.path, self.records)

    def abort(self) -> None:
        self.file.abort()


def _check_csv(sink: Sink, text: str, batch: Batch, commas: int) -> str:
    """``text`` if it holds exactly ``commas`` commas and one line per record, and no
    quote; else RecordError naming the first record that would not read back."""
    if (
        text.count(",") == commas * len(batch)
        and text.count("\n") == len(batch)
        and '"' not in text
        and "\r" not in text
    ):
        return text
    culprit = next(
        (r for r in batch if any(c in str(getattr(r, "symbol", "")) for c in ',"\r\n')),
        None,
    )
    what = repr(culprit) if culprit is not None else f"a batch of {len(batch)} records"
    raise RecordError(
        f"{sink!r} cannot write {what}: a field holds a comma, quote or line break, which "
        "this CSV format (no quoting) cannot carry"
    )


@dataclass(frozen=True)
class CsvBars(_FileSink):
    """Bars to a CSV file (see the module docstring for the format)."""

    path: str
    header = BAR_HEADER

    def fields_read(self) -> tuple[str, ...]:
        return Bar.__struct_fields__

    def format(self, batch: Batch) -> str:
        text = "".join(
            [
                f"{b.symbol},{b.window_start},{b.window_end},{b.open!r},{b.high!r},{b.low!r},"
                f"{b.close!r},{b.volume!r},{b.vwap!r},{b.count}\n"
                for b in batch
            ]
        )
        return _check_csv(self, text, batch, 9)


@dataclass(frozen=True)
class CsvTicksSink(_FileSink):
    """Ticks to a CSV file in the format ``CsvTicks`` reads (e.g. a job's late output)."""

    path: str
    header = TICK_HEADER

    def fields_read(self) -> tuple[str, ...]:
        return Tick.__struct_fields__

    def format(self, batch: Batch) -> str:
        lines = [f"{t.symbol},{t.ts},{t.price!r},{t.size!r}\n" for t in batch]
        text = _check_csv(self, "".join(lines), batch, 3)
        if _plainly_readable(batch):
            return text
        good: list[Tick] = []
        bad: list[str] = []
        parse_lines([line[:-1] for line in lines], good, bad)  # what CsvTicks would read
        if bad:
            line = bad[0]
            culprit = batch[lines.index(line + "\n")]
            raise RecordError(
                f"{self!r} cannot write {culprit!r}: {diagnose(line)}, so CsvTicks could "
                "not read it back"
            )
        return text


_FIELDS = tuple(map(attrgetter, Tick.__struct_fields__))  # symbol, ts, price, size


def _plainly_readable(batch: Batch) -> bool:
    """Whether each tick's fields are of the kinds ``CsvTicks`` reads back from the text
    ``CsvTicksSink`` writes (``_check_csv`` having ruled out commas, quotes and line breaks):
    a non-empty str symbol, an int ts in the int64 range, a finite float price and a finite
    float size > 0. Column by column, at C speed; False sends the batch to the exact check."""
    if not batch:
        return True
    symbols, times, prices, sizes = (list(map(field, batch)) for field in _FIELDS)
    if not (
        set(map(type, symbols)) == {str}
        and set(map(type, times)) == {int}
        and set(map(type, prices)) == {float}
        and set(map(type, sizes)) == {float}
        and "" not in symbols
    ):
        return False
    total = sum(prices) + sum(sizes)  # total - total is 0 exactly when none is inf or nan
    return (
        total - total == 0.0 and min(sizes) > 0.0 and min(times) >= TS_MIN and max(times) <= TS_MAX
    )


_JSON = msgspec.json.Encoder()


def _as_object(record: Any) -> Any:
    return msgspec.structs.asdict(record) if isinstance(record, msgspec.Struct) else record


@dataclass(frozen=True)
class JsonLinesBars(_FileSink):
    """Bars (or any msgspec Structs) as JSON lines: one object with field names per line."""

    path: str

    def format(self, batch: Batch) -> str:
        return _JSON.encode_lines([_as_object(r) for r in batch]).decode("utf-8")


@dataclass(frozen=True)
class Collect(Sink):
    """Keeps what it receives; ``close()`` returns the list (marks included when asked)."""

    watermarks: bool = False

    def build(self, ctx: Context) -> CollectLogic:
        return CollectLogic(self.watermarks)


class CollectLogic(SinkLogic):
    def __init__(self, watermarks: bool) -> None:
        self.items: list[Any] = []
        self.watermarks = watermarks

    def write(self, batch: Batch) -> None:
        self.items += batch

    def on_watermark(self, watermark: int) -> None:
        if self.watermarks:
            self.items.append(Watermark(watermark))

    def close(self) -> list[Any]:
        return self.items

    def abort(self) -> None:
        self.items = []


@dataclass(frozen=True)
class CountSink(Sink):
    """Counts records, batches and watermarks; ``close()`` returns ``Counts``."""

    def build(self, ctx: Context) -> CountLogic:
        return CountLogic()


class CountLogic(SinkLogic):
    def __init__(self) -> None:
        self.records = self.batches = self.watermarks = 0

    def write(self, batch: Batch) -> None:
        self.records += len(batch)
        self.batches += 1

    def on_watermark(self, watermark: int) -> None:
        self.watermarks += 1

    def close(self) -> Counts:
        return Counts(self.records, self.batches, self.watermarks)
